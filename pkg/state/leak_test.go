package state

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/pkg/store"
)

// pg is the test binary's private PostgreSQL, made by TestMain before any
// test runs and only read after; it starts when a test first needs it.
var pg *pgtest.Cluster

// TestMain runs the tests, stops the PostgreSQL cluster if they started
// one, and then fails the run if any goroutine they started is still
// running.
func TestMain(m *testing.M) {
	pg = pgtest.New()
	os.Exit(pg.Main(m))
}

// forEachStore runs fn as a subtest on a new SQLite store and on a new
// PostgreSQL store (skipped where PostgreSQL is not installed, and under
// -short), each closed when the subtest ends.
func forEachStore(t *testing.T, fn func(t *testing.T, st *store.Store)) {
	t.Helper()
	for _, engine := range []string{"sqlite", "postgres"} {
		t.Run(engine, func(t *testing.T) {
			opts := store.Options{Path: filepath.Join(t.TempDir(), "db.sqlite"), WAL: true}
			if engine == "postgres" {
				db := pg.Database(t)
				opts = store.Options{Postgres: &store.PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User}}
			}
			st, err := store.Open(t.Context(), opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			fn(t, st)
		})
	}
}

// testStoreOptions are the options of a new, empty store for t: SQLite in
// t's temporary directory, or a new PostgreSQL database in the re-run of
// TestSuiteOnPostgres.
func testStoreOptions(t *testing.T) store.Options {
	if pgtest.Requested() {
		db := pg.Database(t)
		return store.Options{Postgres: &store.PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User}}
	}
	return store.Options{Path: filepath.Join(t.TempDir(), "db.sqlite"), WAL: true}
}

// TestSuiteOnPostgres runs this package's tests again with every store on
// PostgreSQL (pgtest.Cluster.RerunOnPostgres).
func TestSuiteOnPostgres(t *testing.T) {
	pg.RerunOnPostgres(t, "TestSuiteOnPostgres")
}
