package hsimport

import (
	"bytes"
	"context"
	"database/sql"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the database/sql driver "pgx"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
)

// pgFixture loads the real Headscale 0.27.1 PostgreSQL deployment (its
// pg_dump) into a new database of the test cluster.
func pgFixture(t *testing.T) (pgtest.Database, string) {
	t.Helper()
	dir := tstest.Shared(t, "fixtures/headscale-db/0.27.1-postgres")
	db := pg.Database(t)
	pg.LoadSQL(t, db, filepath.Join(dir, "headscale-0.27.1-postgres.sql"))
	return db, dir
}

func storeOpts(db pgtest.Database) store.PostgresOptions {
	return store.PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User, SSLMode: "disable"}
}

// TestTakeOverPostgresFixture takes over the PostgreSQL database a real
// Headscale 0.27.1 wrote and checks the facts its MANIFEST lists, that
// Headscale's tables are kept unchanged in schema headscale_v0_27_1, and
// that a second run (a restart) changes nothing.
func TestTakeOverPostgresFixture(t *testing.T) {
	db, dir := pgFixture(t)
	ctx := context.Background()
	var logs bytes.Buffer
	reports := t.TempDir()
	opts := TakeOverPostgresOptions{DB: storeOpts(db), Convert: fixtureOpts, Logger: slog.New(slog.NewTextHandler(&logs, nil)), ReportDir: reports}
	rep, err := TakeOverPostgres(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if rep == nil {
		t.Fatal("the Headscale database was not recognised")
	}
	if !strings.Contains(rep.Copy, "schema headscale_v0_27_1") {
		t.Errorf("copy %q, want the schema headscale_v0_27_1", rep.Copy)
	}
	if txt, err := os.ReadFile(filepath.Join(reports, "headscale-import-v0.27.1.report.txt")); err != nil || !strings.Contains(string(txt), "nodes") {
		t.Errorf("report file: %q, %v", txt, err)
	}
	if !strings.Contains(logs.String(), "kind=nodes read=4 converted=4 changed=0 skipped=0") {
		t.Errorf("no count line for nodes in\n%s", logs.String())
	}
	for kind, want := range map[string]int{KindUsers: 3, KindNodes: 4, KindPreAuthKeys: 5, KindAPIKeys: 1, KindPolicies: 1, KindRoutes: 0} {
		if c := rep.Count(kind); c.Read != want || c.Converted != want || c.Changed != 0 || c.Skipped != 0 {
			t.Errorf("%s: %+v, want %d read and converted", kind, c, want)
		}
	}

	// Headscale's tables, whole, in the kept schema.
	raw, err := sql.Open("pgx", db.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for table, want := range map[string]int{"users": 3, "nodes": 4, "pre_auth_keys": 5, "api_keys": 1, "policies": 1, "migrations": 18} {
		var n int
		if err := raw.QueryRowContext(ctx, `SELECT COUNT(*) FROM headscale_v0_27_1.`+table).Scan(&n); err != nil || n != want {
			t.Errorf("headscale_v0_27_1.%s: %d rows, %v; want %d", table, n, err, want)
		}
	}
	var leftover bool
	if err := raw.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname LIKE '%$importing')`).Scan(&leftover); err != nil || leftover {
		t.Errorf("the importing schema is still there (%v)", err)
	}

	// A restart: the database is now this server's; nothing to do.
	if rep, err := TakeOverPostgres(ctx, opts); rep != nil || err != nil {
		t.Fatalf("second takeover: %v, %v; want nothing done", rep, err)
	}

	o := storeOpts(db)
	s, err := store.Open(ctx, store.Options{Postgres: &o})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	nodes, _ := checkFixtureStore(t, s, fixtureFacts{
		dir: dir,
		keys: map[ids.PreAuthKeyID]string{
			1: "c4e92c176825380e9ec6b91426fc7e48391c8ca8ef88ff20",
			2: "7fa67c94b8957a0ea2e8e39deeb577c1324453ff51ff29b1",
			3: "c5462e9ad6a345c7f91c13acbc43c28251679cb8b60710ab",
			4: "8bdeac42c916a36963b51d674e14a5c628c952250227efd7",
			5: "f83c8a9134bc08de1e20efd1beefc1b4bf95b7d242b09b20",
		},
		apiPrefix: "Q9AGSFF", apiSecret: "ENGMho0BVUrGQQefqvKwaaTCSSrWx8zv",
	})

	// What only the PostgreSQL deployment's MANIFEST lists.
	machines := map[ids.NodeID]string{
		1: "mkey:be9ddf1f07089300f3403bb73ff61ae70c70c26b7efea05490655b3729519a7a",
		2: "mkey:5559d80bd2e0ba438447ff4e53004381b0cc7cf2575cdaaa0c3a3fff00802021",
		3: "mkey:43677f840b6173d09fd7bf66616c62028f0db6481215251c83fcf4734207894e",
		4: "mkey:18b64d3cfc7f82376276be3e5f780e5393cfd05de2b3c43e6eef02d969bfd93e",
	}
	for _, n := range nodes {
		if n.MachineKey != machines[n.ID] {
			t.Errorf("node %d: machine key %s, want %s", n.ID, n.MachineKey, machines[n.ID])
		}
	}
	if got := nodes[0].LastSeen.UTC().Format("2006-01-02T15:04:05.000Z"); got != "2026-12-06T18:13:22.714Z" {
		t.Errorf("alice-laptop last seen %s, want 2026-12-06T18:13:22.714Z (the store keeps milliseconds)", got)
	}
	if users, err := s.ListUsers(ctx); err != nil || len(users) < 2 || users[1].Email != "bob@example.test" {
		t.Errorf("users %+v, %v", users, err)
	}
	s.Close()

	// The way back (docs/runbook.md, "Going back to Headscale") puts
	// Headscale's tables back, untouched.
	if _, err := raw.ExecContext(ctx, rollbackSQL); err != nil {
		t.Fatalf("the runbook's way back: %v", err)
	}
	var n int
	if err := raw.QueryRowContext(ctx, `SELECT COUNT(*) FROM public.nodes WHERE forced_tags LIKE '%tag:server%'`).Scan(&n); err != nil || n != 1 {
		t.Errorf("after the way back, Headscale's nodes table: %d tagged rows, %v", n, err)
	}
	if err := raw.QueryRowContext(ctx, `SELECT COUNT(*) FROM public.migrations`).Scan(&n); err != nil || n != 18 {
		t.Errorf("after the way back, Headscale's migrations table: %d rows, %v", n, err)
	}
}

// rollbackSQL is the runbook's way back to Headscale on PostgreSQL.
const rollbackSQL = `BEGIN;
CREATE SCHEMA converted;
DO $$ DECLARE t text; BEGIN
  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
    EXECUTE format('ALTER TABLE public.%I SET SCHEMA converted', t); END LOOP;
  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'headscale_v0_27_1' LOOP
    EXECUTE format('ALTER TABLE headscale_v0_27_1.%I SET SCHEMA public', t); END LOOP;
END $$;
COMMIT;`

// TestTakeOverPostgresRefusesRunningHeadscale: while something answers on
// the configured socket (Headscale serving), the database is left alone.
func TestTakeOverPostgresRefusesRunningHeadscale(t *testing.T) {
	db, _ := pgFixture(t)
	sock, _ := headscaleAnswering(t)
	_, err := TakeOverPostgres(context.Background(), TakeOverPostgresOptions{DB: storeOpts(db), Convert: fixtureOpts, Socket: sock})
	if err == nil || !strings.Contains(err.Error(), "stop Headscale first") {
		t.Fatalf("err %v, want a refusal naming the running server", err)
	}
	raw, err := sql.Open("pgx", db.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var n int
	if err := raw.QueryRow(`SELECT COUNT(*) FROM public.nodes`).Scan(&n); err != nil || n != 4 {
		t.Errorf("Headscale's nodes table: %d rows, %v", n, err)
	}
}

// TestTakeOverPostgresTenant: a Headscale database restored into a
// tenant's schema (headscale_a) is taken over there: the converted tables
// take its place, Headscale's are kept in headscale_a$v0_27_1, and the
// Headscale tables in public (another deployment on the same database)
// are left as they were.
func TestTakeOverPostgresTenant(t *testing.T) {
	db, _ := pgFixture(t)
	ctx := context.Background()
	// The fixture's tables into headscale_a, then the fixture again in
	// public.
	if err := pg.Exec(ctx, db.Name, `CREATE SCHEMA headscale_a;
DO $$ DECLARE t text; BEGIN
  FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
    EXECUTE format('ALTER TABLE public.%I SET SCHEMA headscale_a', t); END LOOP;
END $$;`); err != nil {
		t.Fatal(err)
	}
	pg.LoadSQL(t, db, filepath.Join(tstest.Shared(t, "fixtures/headscale-db/0.27.1-postgres"), "headscale-0.27.1-postgres.sql"))
	o := storeOpts(db)
	o.Schema = "headscale_a"
	rep, err := TakeOverPostgres(ctx, TakeOverPostgresOptions{DB: o, Convert: fixtureOpts})
	if err != nil || rep == nil {
		t.Fatalf("takeover of the tenant: %v, %v", rep, err)
	}
	if !strings.Contains(rep.Copy, "schema headscale_a$v0_27_1") {
		t.Errorf("copy %q, want the schema headscale_a$v0_27_1", rep.Copy)
	}
	s, err := store.Open(ctx, store.Options{Postgres: &o})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if nodes, err := s.ListNodes(ctx); err != nil || len(nodes) != 4 {
		t.Errorf("the tenant's nodes: %d, %v; want the fixture's 4", len(nodes), err)
	}
	raw, err := sql.Open("pgx", db.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	for q, want := range map[string]int{
		`SELECT COUNT(*) FROM public.migrations`:                                                         18, // Headscale's, untouched
		`SELECT COUNT(*) FROM "headscale_a$v0_27_1".migrations`:                                          18,
		`SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'schema_migrations'`: 0,
		`SELECT COUNT(*) FROM pg_namespace WHERE nspname LIKE '%$importing'`:                             0,
	} {
		var n int
		if err := raw.QueryRowContext(ctx, q).Scan(&n); err != nil || n != want {
			t.Errorf("%s: %d, %v; want %d", q, n, err, want)
		}
	}
}
