package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/pgtest"
)

// postgresYAML points a test server's config at db.
func postgresYAML(db pgtest.Database) string {
	return fmt.Sprintf("database:\n  type: postgres\n  postgres:\n    host: %s\n    port: %d\n    name: %s\n    user: %s\n",
		db.Host, db.Port, db.Name, db.User)
}

// pgURL is db as a libpq URL (over its unix socket).
func pgURL(db pgtest.Database) string {
	return fmt.Sprintf("postgres:///%s?host=%s&port=%d&user=%s&sslmode=disable", db.Name, db.Host, db.Port, db.User)
}

// migratedLine matches db migrate's last line.
var migratedLine = regexp.MustCompile(`(?m)^migrated (\d+) rows in 6 tables from (\S+) to (\S+) \(verified\)\n\z`)

// TestDBMigrate moves a server's database from SQLite to PostgreSQL and
// back with `db migrate`: refused while a server uses the source (its
// socket, its SQLite file, its PostgreSQL connections) and into a
// non-empty target without --force, one line per table and a last line
// naming both databases without a password, and the server started on
// each target finds the users and keys.
func TestDBMigrate(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, "")
	cfg := ts.ConfigPath
	for _, args := range [][]string{{"users", "create", "alice"}, {"users", "create", "bob"},
		{"users", "create", "gone"}, {"users", "destroy", "--name", "gone", "--force"}, {"preauthkeys", "create", "--user", "1", "--reusable"}} {
		if code, _, stderr := run(t, append([]string{"-c", cfg}, args...)...); code != 0 {
			t.Fatal(stderr)
		}
	}
	db := pg.Database(t)
	url := pgURL(db)

	// Refused while the server runs: by its socket (config), and by
	// the lock on its file (a path).
	if code, _, stderr := run(t, "-c", cfg, "db", "migrate", "--from", "config", "--to", url); code != 1 || !strings.Contains(stderr, "running") {
		t.Fatalf("migrate while the server runs: %d %q", code, stderr)
	}
	if code, _, stderr := run(t, "db", "migrate", "--from", filepath.Join(dir, "db.sqlite"), "--to", url); code != 1 || !strings.Contains(stderr, "in use by a running headscale") {
		t.Fatalf("migrate of an open SQLite file: %d %q", code, stderr)
	}
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}

	code, out, stderr := run(t, "-c", cfg, "db", "migrate", "--from", "config", "--to", url)
	m := migratedLine.FindStringSubmatch(out)
	if code != 0 || m == nil || m[1] != "3" || m[2] != filepath.Join(dir, "db.sqlite") || !strings.HasPrefix(m[3], "postgres:///"+db.Name+"?") {
		t.Fatalf("migrate to PostgreSQL: %d\n%s\n%s", code, out, stderr)
	}
	for _, table := range []string{"users", "pre_auth_keys", "nodes", "api_keys", "policies", "route_ids"} {
		if !regexp.MustCompile(`(?m)^` + table + ` +\d+ rows +checksum [0-9a-f]{16} +match$`).MatchString(out) {
			t.Errorf("no line for %s in\n%s", table, out)
		}
	}
	code, _, stderr = run(t, "-c", cfg, "db", "migrate", "--from", "config", "--to", url)
	if code != 1 || !strings.Contains(stderr, "not empty") || !strings.Contains(stderr, "--force") {
		t.Fatalf("migrate into a non-empty database: %d %q", code, stderr)
	}
	if code, out, stderr := run(t, "-c", cfg, "db", "migrate", "--from", "config", "--to", url, "--force"); code != 0 || !migratedLine.MatchString(out) {
		t.Fatalf("migrate --force: %d %q %q", code, out, stderr)
	}

	// The server on PostgreSQL has the users; a migration from its
	// database is refused while it runs, even given by URL.
	pgDir := t.TempDir()
	pts := startServer(t, pgDir, postgresYAML(db))
	_, out, _ = run(t, "-c", pts.ConfigPath, "users", "list", "-o", "json")
	if !strings.Contains(out, `"alice"`) || !strings.Contains(out, `"bob"`) {
		t.Fatalf("users on PostgreSQL: %s", out)
	}
	back := filepath.Join(t.TempDir(), "back.sqlite")
	if code, _, stderr := run(t, "db", "migrate", "--from", url, "--to", back); code != 1 || !strings.Contains(stderr, "connection(s) of a running headscale") {
		t.Fatalf("migrate from PostgreSQL in use: %d %q", code, stderr)
	}
	if _, err := os.Stat(back); err != nil {
		// Not created: the source was refused before the target opened.
	} else {
		t.Errorf("a refused migration left %s behind", back)
	}
	if code, _, stderr := run(t, "-c", pts.ConfigPath, "users", "create", "carol"); code != 0 {
		t.Fatal(stderr)
	}
	if err := pts.Stop(); err != nil {
		t.Fatal(err)
	}

	// PostgreSQL back to SQLite, into a new server's database file.
	sqDir := t.TempDir()
	code, out, stderr = run(t, "-c", pts.ConfigPath, "db", "migrate", "--from", "config", "--to", filepath.Join(sqDir, "db.sqlite"))
	if m := migratedLine.FindStringSubmatch(out); code != 0 || m == nil || m[1] != "4" {
		t.Fatalf("migrate to SQLite: %d\n%s\n%s", code, out, stderr)
	}
	sts := startServer(t, sqDir, "")
	_, out, _ = run(t, "-c", sts.ConfigPath, "users", "list", "-o", "json")
	if !strings.Contains(out, `"carol"`) {
		t.Fatalf("users on SQLite after the round trip: %s", out)
	}
	// IDs continue after every one used on either engine: alice 1, bob
	// 2, gone 3 (deleted on SQLite), carol 4 (on PostgreSQL).
	_, out, _ = run(t, "-c", sts.ConfigPath, "users", "list", "-o", "json")
	if !regexp.MustCompile(`"id": 4,\s+"name": "carol"`).MatchString(out) {
		t.Errorf("users after the round trip: %s, want carol with ID 4 (3 was used and deleted before the migration)", out)
	}
	_, out, _ = run(t, "-c", sts.ConfigPath, "users", "create", "dave", "-o", "json")
	if !strings.Contains(out, `"id": 5,`) {
		t.Errorf("new user after migration: %s, want ID 5", out)
	}

	for _, tc := range []struct{ from, to, want string }{
		{"", url, "must not be empty"},
		{"mysql://x/y", url, "only postgres://"},
		{filepath.Join(dir, "missing.sqlite"), url, "no database at"},
		{"postgres://u:hunter2-secret@/x?host=/nonexistent", back, ""},
		{url, url, "the same database"},
	} {
		code, _, stderr := run(t, "db", "migrate", "--from", tc.from, "--to", tc.to)
		if code != 1 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, "hunter2") {
			t.Errorf("migrate --from %q --to %q: %d %q", tc.from, tc.to, code, stderr)
		}
	}
}

// TestBackupRestorePostgres: backup on PostgreSQL writes a checked SQLite
// file while the server runs; restore refuses while it runs, then puts the
// backup's rows back, keeping the replaced rows as a backup too.
func TestBackupRestorePostgres(t *testing.T) {
	db := pg.Database(t)
	dir := t.TempDir()
	ts := startServer(t, dir, postgresYAML(db))
	cfg := ts.ConfigPath
	if code, _, stderr := run(t, "-c", cfg, "users", "create", "alice"); code != 0 {
		t.Fatal(stderr)
	}
	code, out, stderr := run(t, "-c", cfg, "backup")
	m := regexp.MustCompile(`^backup written: (\S+/backups/headscale-test-\d{8}T\d{6}Z\.sqlite) \((\d+) bytes, integrity ok\)\n$`).FindStringSubmatch(out)
	if code != 0 || m == nil || !strings.HasPrefix(m[1], filepath.Join(dir, "backups")) {
		t.Fatalf("backup: %d %q %q", code, out, stderr)
	}
	snap := m[1]
	if fi, err := os.Stat(snap); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	if code, _, stderr := run(t, "-c", cfg, "users", "create", "bob"); code != 0 {
		t.Fatal(stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "restore", snap); code != 1 || !strings.Contains(stderr, "running") {
		t.Fatalf("restore while running: %d %q", code, stderr)
	}
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = run(t, "-c", cfg, "restore", snap)
	if code != 0 || !strings.Contains(out, "restored "+snap) || !strings.Contains(out, "previous database is kept at "+filepath.Join(dir, "backups", "pre-restore-")) {
		t.Fatalf("restore: %d %q %q", code, out, stderr)
	}
	startServer(t, dir, postgresYAML(db))
	_, out, _ = run(t, "-c", cfg, "users", "list", "-o", "json")
	if !strings.Contains(out, `"alice"`) || strings.Contains(out, `"bob"`) {
		t.Fatalf("users after restore: %s", out)
	}
}
