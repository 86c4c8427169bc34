package store

import (
	"path/filepath"
	"testing"

	"github.com/hsctl/headscale/internal/pgtest"
)

// engine opens stores on one test database of one engine.
type engine struct {
	// name is "sqlite" or "postgres" (also for postgres-tenant: the
	// engine's dialect).
	name string
	// open opens a store on the test's database (the same database each
	// time, so a test can reopen it), closed when the test ends; mod
	// changes the options first.
	open func(t *testing.T, mod ...func(*Options)) *Store
	// opts are the options open starts from.
	opts Options
}

// forEachEngine runs fn as a subtest per engine: SQLite in a temporary
// directory, PostgreSQL in a fresh database of the test binary's private
// cluster (skipped, saying why, where PostgreSQL is not installed), and
// postgres-tenant: PostgreSQL in a tenant's schema of its own
// (headscale_t1_<hash of the test's name>), in one database where other
// tenants' schemas hold rows that collide with the tests' own
// (seedOtherTenants) and must be unchanged when the test ends, beside the
// schemas of the other tests running at the same time. Most tests assert
// exact lists and counts, so a query that reads another tenant's rows
// fails them as they stand.
func forEachEngine(t *testing.T, fn func(t *testing.T, e engine)) {
	t.Helper()
	// They run side by side: PostgreSQL's time is mostly spent waiting
	// for its server.
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		fn(t, newEngine(Options{Path: filepath.Join(t.TempDir(), "db.sqlite"), WAL: true}))
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		db := pg.Database(t)
		fn(t, newEngine(Options{Postgres: &PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User}}))
	})
	t.Run("postgres-tenant", func(t *testing.T) {
		t.Parallel()
		// One database for every test of this engine (a database per
		// test would double the cost of the PostgreSQL tests): the
		// seeded tenants, and each test's own tenant beside the others
		// running at the same time.
		db := pg.Shared(t, "other-tenants", func(_ testing.TB, db pgtest.Database) {
			seedOtherTenants(t, PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User})
		})
		o := PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User}
		o.Schema = watchOtherTenants(t, o)
		fn(t, newEngine(Options{Postgres: &o}))
	})
}

func newEngine(base Options) engine {
	e := engine{name: "sqlite", opts: base}
	if base.Postgres != nil {
		e.name = "postgres"
	}
	e.open = func(t *testing.T, mod ...func(*Options)) *Store {
		t.Helper()
		opts := base
		if base.Postgres != nil {
			pgo := *base.Postgres
			opts.Postgres = &pgo
		}
		for _, m := range mod {
			m(&opts)
		}
		s, err := Open(t.Context(), opts)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	}
	return e
}
