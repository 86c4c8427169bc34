package hsimport

import (
	"bytes"
	"context"
	"database/sql"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // the database/sql driver "pgx"
	"golang.org/x/crypto/bcrypt"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/authkey"
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
	if err := raw.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'headscale_importing')`).Scan(&leftover); err != nil || leftover {
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
	nodes, err := s.ListNodes(ctx)
	if err != nil || len(nodes) != 4 {
		t.Fatalf("nodes %d, %v; want 4", len(nodes), err)
	}
	type nodeWant struct {
		given, host, v4, v6 string
		user                ids.UserID
		tags, routes        []string
		mkey                string
	}
	want := map[ids.NodeID]nodeWant{
		1: {"alice-laptop", "alice-laptop", "100.64.0.1", "fd7a:115c:a1e0::1", 1, nil, nil, "mkey:be9ddf1f07089300f3403bb73ff61ae70c70c26b7efea05490655b3729519a7a"},
		2: {"alice-pixel", "alice-phone", "100.64.0.2", "fd7a:115c:a1e0::2", 1, nil, nil, "mkey:5559d80bd2e0ba438447ff4e53004381b0cc7cf2575cdaaa0c3a3fff00802021"},
		3: {"bob-server", "bob-server", "100.64.0.3", "fd7a:115c:a1e0::3", 0, []string{"tag:server"}, []string{"0.0.0.0/0", "10.33.0.0/24", "::/0"}, "mkey:43677f840b6173d09fd7bf66616c62028f0db6481215251c83fcf4734207894e"},
		4: {"bob-laptop", "bob-laptop", "100.64.0.4", "fd7a:115c:a1e0::4", 2, nil, nil, "mkey:18b64d3cfc7f82376276be3e5f780e5393cfd05de2b3c43e6eef02d969bfd93e"},
	}
	for _, n := range nodes {
		w := want[n.ID]
		var user ids.UserID
		if n.UserID != nil {
			user = *n.UserID
		}
		if n.GivenName != w.given || n.Hostname != w.host || n.IPv4 != w.v4 || n.IPv6 != w.v6 || user != w.user ||
			!slices.Equal(n.Tags, w.tags) || !slices.Equal(n.ApprovedRoutes, w.routes) || n.MachineKey != w.mkey {
			t.Errorf("node %d: %+v, want %+v", n.ID, n, w)
		}
		if !n.Expiry.IsZero() || n.LastSeen.IsZero() || n.DiscoKey == "" || len(n.Hostinfo) == 0 || n.RegisterMethod != "authkey" {
			t.Errorf("node %d: expiry %v last seen %v disco %q method %q", n.ID, n.Expiry, n.LastSeen, n.DiscoKey, n.RegisterMethod)
		}
	}
	if got := nodes[0].LastSeen.UTC().Format("2006-01-02T15:04:05.000Z"); got != "2026-12-06T18:13:22.714Z" {
		t.Errorf("alice-laptop last seen %s, want 2026-12-06T18:13:22.714Z (the store keeps milliseconds)", got)
	}
	users, err := s.ListUsers(ctx)
	if err != nil || len(users) != 3 || users[0].Name != "alice" || users[0].DisplayName != "Alice Anders" || users[1].Email != "bob@example.test" {
		t.Errorf("users %+v, %v", users, err)
	}
	keys, err := s.ListPreAuthKeys(ctx)
	if err != nil || len(keys) != 5 {
		t.Fatalf("keys %+v, %v", keys, err)
	}
	plain := map[ids.PreAuthKeyID]string{
		1: "c4e92c176825380e9ec6b91426fc7e48391c8ca8ef88ff20",
		2: "7fa67c94b8957a0ea2e8e39deeb577c1324453ff51ff29b1",
		3: "c5462e9ad6a345c7f91c13acbc43c28251679cb8b60710ab",
		4: "8bdeac42c916a36963b51d674e14a5c628c952250227efd7",
		5: "f83c8a9134bc08de1e20efd1beefc1b4bf95b7d242b09b20",
	}
	for _, k := range keys {
		p := plain[k.ID]
		if k.Prefix != p[:12] || !authkey.Verify(k.Hash, p[12:]) || !k.Legacy {
			t.Errorf("pre-auth key %d: prefix %q does not match its plaintext", k.ID, k.Prefix)
		}
	}
	if k := keys[1]; k.Reusable || !k.Used {
		t.Errorf("single-use key %+v", k)
	}
	if k := keys[4]; !slices.Equal(k.Tags, []string{"tag:server"}) || !k.Reusable {
		t.Errorf("tagged key %+v", k)
	}
	ak, err := s.GetAPIKeyByPrefix(ctx, "Q9AGSFF")
	if err != nil {
		t.Fatal(err)
	}
	if err := bcrypt.CompareHashAndPassword(ak.Hash, []byte("ENGMho0BVUrGQQefqvKwaaTCSSrWx8zv")); err != nil {
		t.Errorf("API key: %v", err)
	}
	text, _, err := s.GetPolicy(ctx)
	wantPolicy, _ := os.ReadFile(filepath.Join(dir, "policy.hujson"))
	if err != nil || strings.TrimSpace(text) != strings.TrimSpace(string(wantPolicy)) {
		t.Errorf("policy %q, %v", text, err)
	}
	// A new node and user get IDs Headscale never gave out.
	if n, err := s.RegisterNode(ctx, store.Node{MachineKey: "mkey:01", NodeKey: "nodekey:01", GivenName: "new"}, 0); err != nil || n.ID != 5 {
		t.Errorf("new node %d, %v; want id 5", n.ID, err)
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
	sock := filepath.Join(t.TempDir(), "hs.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, err = TakeOverPostgres(context.Background(), TakeOverPostgresOptions{DB: storeOpts(db), Convert: fixtureOpts, Socket: sock})
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
