package hsdb

import (
	"context"
	"database/sql"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/tstest"
	_ "modernc.org/sqlite"
)

// idsUpTo returns the migration ids a database last opened by release
// holds: every id up to the last one of that release, from fromID on (a
// database created by 0.28 or later starts at 202501221827).
func idsUpTo(release, fromID string) []string {
	last := -1
	for i, m := range migrations {
		if m.release == release {
			last = i
		}
	}
	var out []string
	started := fromID == ""
	for _, m := range migrations[:last+1] {
		started = started || m.id == fromID
		if started {
			out = append(out, m.id)
		}
	}
	return out
}

// makeDB writes a SQLite database with the given tables (empty, one
// column) and, when ids is not nil, a migrations table holding them.
func makeDB(t *testing.T, tables []string, ids []string, version string) (*sql.DB, []string) {
	t.Helper()
	db, err := sql.Open("sqlite", filepath.Join(t.TempDir(), "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	exec := func(q string, args ...any) {
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	for _, name := range tables {
		exec(`CREATE TABLE ` + name + ` (id INTEGER PRIMARY KEY)`)
	}
	if ids != nil {
		exec(`CREATE TABLE migrations (id TEXT PRIMARY KEY)`)
		tables = append(tables, "migrations")
		for _, id := range ids {
			exec(`INSERT INTO migrations (id) VALUES (?)`, id)
		}
	}
	if version != "" {
		exec(`CREATE TABLE database_versions (id INTEGER PRIMARY KEY, version TEXT, updated_at DATETIME)`)
		exec(`INSERT INTO database_versions (id, version) VALUES (1, ?)`, version)
		tables = append(tables, "database_versions")
	}
	return db, tables
}

func TestRecognise(t *testing.T) {
	headscaleTables := []string{"users", "pre_auth_keys", "api_keys", "nodes", "policies"}
	tests := []struct {
		name        string
		tables      []string
		ids         []string
		version     string
		want        string // Database.Release; "-" for not Headscale
		supported   bool
		describeHas string
	}{
		{"0.23.0", headscaleTables, idsUpTo("0.23.0", ""), "", "0.23.0", true, "Headscale 0.23.0"},
		{"0.24.0 (ids applied out of numeric order)", headscaleTables, idsUpTo("0.24.0", ""), "", "0.24.0", true, "202408181235"},
		{"0.24.2", headscaleTables, idsUpTo("0.24.1–0.24.2", ""), "", "0.24.1–0.24.2", true, ""},
		{"0.25.1", headscaleTables, idsUpTo("0.24.3–0.25.1", ""), "", "0.24.3–0.25.1", true, ""},
		{"0.26.1", headscaleTables, idsUpTo("0.26.0–0.26.1", ""), "", "0.26.0–0.26.1", true, ""},
		{"0.27.0", headscaleTables, idsUpTo("0.27.0", ""), "", "0.27.0", true, ""},
		{"0.27.1", headscaleTables, idsUpTo("0.27.1", ""), "", "0.27.1", true, ""},
		{"0.28.0 created fresh", headscaleTables, idsUpTo("0.28.0", "202501221827"), "", "0.28.0", true, ""},
		{"0.28.0 upgraded from 0.23", headscaleTables, idsUpTo("0.28.0", ""), "", "0.28.0", true, ""},
		{"0.29.0", headscaleTables, idsUpTo("0.29.0", "202501221827"), "v0.29.0", "0.29.0", true, "database_versions says v0.29.0"},
		{"0.29.2", headscaleTables, idsUpTo("0.29.1–0.29.2", "202501221827"), "v0.29.2", "0.29.1–0.29.2", true, "v0.29.2"},
		{"newer than 0.29", headscaleTables, append(idsUpTo("0.29.1–0.29.2", ""), "202612010000-something-new"), "", "0.29.1–0.29.2", false, "newer than 0.29.2"},
		{"older than 0.23", []string{"machines", "namespaces", "pre_auth_keys"}, nil, "", "", false, "older than 0.23"},
		{"0.22 after the rename", headscaleTables, nil, "", "", false, "older than 0.23"},
		{"another program's migrations table", []string{"things"}, []string{"v1"}, "", "-", false, ""},
		{"another program", []string{"things"}, nil, "", "-", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db, tables := makeDB(t, tt.tables, tt.ids, tt.version)
			got, err := Recognise(context.Background(), db, tables)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == "-" {
				if got != nil {
					t.Fatalf("recognised %v, want not Headscale", got)
				}
				return
			}
			if got == nil {
				t.Fatal("not recognised as Headscale")
			}
			if got.Release != tt.want || got.Supported() != tt.supported {
				t.Errorf("release %q supported %v, want %q %v (%v)", got.Release, got.Supported(), tt.want, tt.supported, got)
			}
			if !strings.Contains(got.String(), tt.describeHas) {
				t.Errorf("String() = %q, want it to contain %q", got, tt.describeHas)
			}
		})
	}
}

// TestRecogniseFixture: the database a real Headscale 0.27.1 wrote is
// recognised as 0.27.1.
func TestRecogniseFixture(t *testing.T) {
	path := tstest.Shared(t, "fixtures/headscale-db/0.27.1-sqlite/db.sqlite")
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var tables []string
	rows, err := db.Query(`SELECT name FROM sqlite_master WHERE type = 'table'`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	rows.Close()
	got, err := Recognise(context.Background(), db, tables)
	if err != nil || got == nil {
		t.Fatalf("Recognise = %v, %v", got, err)
	}
	if got.Release != "0.27.1" || !got.Supported() || got.Newest != "202511101554-drop-old-idx" {
		t.Errorf("got %+v, want Headscale 0.27.1", got)
	}
}
