package store

import (
	"path/filepath"
	"testing"
)

// engine opens stores on one test database of one engine.
type engine struct {
	// name is "sqlite" or "postgres".
	name string
	// open opens a store on the test's database (the same database each
	// time, so a test can reopen it), closed when the test ends; mod
	// changes the options first.
	open func(t *testing.T, mod ...func(*Options)) *Store
	// opts are the options open starts from.
	opts Options
}

// forEachEngine runs fn as a subtest per engine: SQLite in a temporary
// directory and PostgreSQL in a fresh database of the test binary's
// private cluster (skipped, saying why, where PostgreSQL is not
// installed).
func forEachEngine(t *testing.T, fn func(t *testing.T, e engine)) {
	t.Helper()
	// The two run side by side: PostgreSQL's time is mostly spent waiting
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
