package cli

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestDBMigrateTenant moves a SQLite server's tailnet into a shared
// PostgreSQL database as two tenants with `db migrate --to config`, the
// tenant given by CLUSTER_ID and the database by PG_DSN: each lands in its
// own schema, shown in the output; the second copy into one tenant is
// refused as not empty; and `--from config` with a tenant reads that
// tenant's schema alone.
func TestDBMigrateTenant(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, "")
	for _, args := range [][]string{{"users", "create", "alice"}, {"users", "create", "bob"}} {
		if code, _, stderr := run(t, append([]string{"-c", ts.ConfigPath}, args...)...); code != 0 {
			t.Fatal(stderr)
		}
	}
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "db.sqlite")
	db := pg.Database(t)
	// A config that leaves the database to the environment.
	cfg := writeConfig(t, "server_url: http://127.0.0.1:8080\nstate_dir: "+t.TempDir()+"\n")
	tenant := func(id string) []string { return []string{"CLUSTER_ID=" + id, "PG_DSN=" + pgURL(db)} }

	for _, id := range []string{"a", "B"} {
		code, out, stderr := runEnv(t, tenant(id), "-c", cfg, "db", "migrate", "--from", src, "--to", "config")
		if code != 0 || !strings.Contains(out, "migrated 2 rows in 6 tables from "+src+" to postgres:///") ||
			!strings.HasSuffix(out, " (schema headscale_"+id+") (verified)\n") {
			t.Fatalf("migrate into tenant %s: %d\n%s\n%s", id, code, out, stderr)
		}
	}
	if code, _, stderr := runEnv(t, tenant("a"), "-c", cfg, "db", "migrate", "--from", src, "--to", "config"); code != 1 || !strings.Contains(stderr, "not empty") {
		t.Fatalf("a second copy into tenant a: %d %q", code, stderr)
	}
	// Tenant B's copy gets a user of its own; reading tenant a back
	// gives a's rows alone.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, db.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `INSERT INTO "headscale_B".users (id, name, created_at) VALUES (9, 'only-b', 0)`); err != nil {
		t.Fatal(err)
	}
	back := filepath.Join(t.TempDir(), "a.sqlite")
	if code, out, stderr := runEnv(t, tenant("a"), "-c", cfg, "db", "migrate", "--from", "config", "--to", back); code != 0 || !strings.Contains(out, "migrated 2 rows") {
		t.Fatalf("migrate tenant a back to SQLite: %d\n%s\n%s", code, out, stderr)
	}
	var schemas []string
	rows, err := conn.Query(ctx, `SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname LIKE 'headscale%' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	if schemas, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(schemas, []string{"headscale_B", "headscale_a"}) {
		t.Errorf("schemas %v, want [headscale_B headscale_a]", schemas)
	}
	var public int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'`).Scan(&public); err != nil || public != 0 {
		t.Errorf("tables in public: %d (%v), want none", public, err)
	}
}
