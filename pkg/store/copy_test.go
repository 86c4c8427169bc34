package store

import (
	"context"
	"database/sql"
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
)

// TestCopyCoversSchema fails when a migration adds a table that Copy does
// not copy (add it to importTables/copyTables, in reference order, or to
// runtimeTables if it describes the running servers), and when either
// list names a table the schema lacks.
func TestCopyCoversSchema(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		s := e.open(t)
		tables, err := s.schemaTables(t.Context(), s.read)
		if err != nil {
			t.Fatal(err)
		}
		for _, tb := range tables {
			if tb != "schema_migrations" && !slices.Contains(copyTables, tb) && !slices.Contains(runtimeTables, tb) {
				t.Errorf("table %s is in the schema but not in copyTables: db migrate and backups would refuse every database", tb)
			}
		}
		for _, tb := range append(slices.Clone(copyTables), runtimeTables...) {
			if !slices.Contains(tables, tb) {
				t.Errorf("copyTables or runtimeTables names %s, which the schema lacks", tb)
			}
		}
	})
}

// fill writes importData's rows (with IDs and sequences above them) into s.
func fill(t *testing.T, s *Store) {
	t.Helper()
	err := s.writeTx(t.Context(), func(tx *sql.Tx) error { return importRows(t.Context(), tx, importData(), s.d.raiseSequence) })
	if err != nil {
		t.Fatal(err)
	}
}

// contents is everything a store holds, read through its API.
type contents struct {
	Users    []User
	Keys     []PreAuthKey
	Nodes    []Node
	APIKeys  []APIKey
	RouteIDs []RouteID
	Policy   string
}

func readContents(t *testing.T, s *Store) contents {
	t.Helper()
	ctx := t.Context()
	var c contents
	var err error
	must := func(e error) {
		t.Helper()
		if e != nil && !errors.Is(e, ErrNotFound) {
			t.Fatal(e)
		}
	}
	c.Users, err = s.ListUsers(ctx)
	must(err)
	c.Keys, err = s.ListPreAuthKeys(ctx)
	must(err)
	c.Nodes, err = s.ListNodes(ctx)
	must(err)
	c.APIKeys, err = s.ListAPIKeys(ctx)
	must(err)
	c.RouteIDs, err = s.ListRouteIDs(ctx)
	must(err)
	c.Policy, _, err = s.GetPolicy(ctx)
	must(err)
	return c
}

// pgEngine is an engine on a fresh database of the test cluster.
func pgEngine(t *testing.T) engine {
	db := pg.Database(t)
	return newEngine(Options{Postgres: &PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User}})
}

func sqliteEngine(t *testing.T) engine {
	return newEngine(Options{Path: filepath.Join(t.TempDir(), "db.sqlite"), WAL: true})
}

// TestCopyBetweenEngines copies a database with a row of every kind from
// SQLite to PostgreSQL and back: the result names every table with its
// rows, the target holds the same rows read through the store's API, its
// sequences continue above the source's (a new user, node and route get
// IDs never used), a second copy into the now non-empty target is refused
// and changes nothing, Force replaces its rows, and a target that differs
// from the source at verification is rolled back with ErrCopyMismatch.
func TestCopyBetweenEngines(t *testing.T) {
	for _, dir := range []struct {
		name     string
		src, dst func(*testing.T) engine
	}{
		{"sqlite-to-postgres", sqliteEngine, pgEngine},
		{"postgres-to-sqlite", pgEngine, sqliteEngine},
	} {
		t.Run(dir.name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			src := dir.src(t).open(t)
			dst := dir.dst(t).open(t)
			fill(t, src)
			want := readContents(t, src)

			res, err := Copy(ctx, src, dst, CopyOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, tc := range res.Tables {
				names = append(names, tc.Table)
				if len(tc.Checksum) != 64 {
					t.Errorf("%s: checksum %q", tc.Table, tc.Checksum)
				}
			}
			if !slices.Equal(names, copyTables) || res.Rows != 7 {
				t.Errorf("copied %v, %d rows; want %v, 7 rows", names, res.Rows, copyTables)
			}
			if got := readContents(t, dst); !reflect.DeepEqual(got, want) {
				t.Errorf("target holds\n%+v\nwant\n%+v", got, want)
			}

			// A second copy into the non-empty target is refused.
			if _, err := Copy(ctx, src, dst, CopyOptions{}); !errors.Is(err, ErrTargetNotEmpty) || !strings.Contains(err.Error(), "users: 1 rows") {
				t.Errorf("copy into a non-empty target: %v, want ErrTargetNotEmpty naming what it holds", err)
			}

			// A mismatch found at verification rolls everything back,
			// including Force's deletes.
			_, err = Copy(ctx, src, dst, CopyOptions{Force: true, tamper: func(ctx context.Context, tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, `UPDATE users SET display_name = 'tampered'`)
				return err
			}})
			if !errors.Is(err, ErrCopyMismatch) || !strings.Contains(err.Error(), "users: 1 rows") {
				t.Errorf("tampered copy: %v, want ErrCopyMismatch naming users", err)
			}
			if got := readContents(t, dst); !reflect.DeepEqual(got, want) {
				t.Errorf("after a failed copy the target holds\n%+v\nwant it unchanged", got)
			}

			// Force replaces the target's rows with the source's.
			if _, err := dst.CreateUser(ctx, User{Name: "extra"}); err != nil {
				t.Fatal(err)
			}
			if _, err := Copy(ctx, src, dst, CopyOptions{Force: true}); err != nil {
				t.Fatalf("forced copy: %v", err)
			}
			if got := readContents(t, dst); !reflect.DeepEqual(got, want) {
				t.Errorf("after a forced copy the target holds\n%+v\nwant\n%+v", got, want)
			}

			// Sequences continue above the source's (users 7 plus the
			// deleted "extra", nodes 40, route_ids 30).
			u, err := dst.CreateUser(ctx, User{Name: "bob"})
			if err != nil {
				t.Fatal(err)
			}
			if u.ID <= 8 {
				t.Errorf("new user got ID %d, want above 8", u.ID)
			}
			uid := u.ID
			n, err := dst.RegisterNode(ctx, Node{MachineKey: "mkey:new", NodeKey: "nodekey:new", GivenName: "new", UserID: &uid}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if n.ID != 41 {
				t.Errorf("new node got ID %d, want 41", n.ID)
			}
			if err := dst.AddRouteIDs(ctx, []RouteKey{{NodeID: n.ID, Prefix: netip.MustParsePrefix("10.9.0.0/24")}}); err != nil {
				t.Fatal(err)
			}
			routes, err := dst.ListRouteIDs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if last := routes[len(routes)-1]; last.ID != ids.RouteID(31) {
				t.Errorf("new route got ID %d, want 31", last.ID)
			}
		})
	}
}

// TestOpenIdle refuses a database a store has open, on both engines, and
// opens it once that store is closed.
func TestOpenIdle(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := t.Context()
		s, err := Open(ctx, e.opts)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Ping(ctx); err != nil { // holds a connection on PostgreSQL
			t.Fatal(err)
		}
		if idle, err := OpenIdle(ctx, e.opts); !errors.Is(err, ErrInUse) {
			if idle != nil {
				idle.Close()
			}
			t.Fatalf("OpenIdle beside an open store: %v, want ErrInUse", err)
		}
		s.Close()
		idle, err := OpenIdle(ctx, e.opts)
		if err != nil {
			t.Fatalf("OpenIdle after the store closed: %v", err)
		}
		idle.Close()
	})
}

// TestBackupAndRestorePostgres backs a PostgreSQL database up into a
// SQLite file (integrity checked), restores that file into another
// PostgreSQL database that held other rows (replaced in one transaction)
// and into a SQLite database with Restore, and checks both hold the
// source's rows.
func TestBackupAndRestorePostgres(t *testing.T) {
	ctx := t.Context()
	src := pgEngine(t).open(t)
	fill(t, src)
	want := readContents(t, src)
	file := filepath.Join(t.TempDir(), "backup.sqlite")
	res, err := BackupStore(ctx, src, file)
	if err != nil {
		t.Fatal(err)
	}
	if res.Path != file || res.Bytes == 0 || res.SchemaVersion == 0 {
		t.Errorf("BackupStore = %+v", res)
	}
	if _, err := CheckIntegrity(ctx, file); err != nil {
		t.Fatal(err)
	}
	if _, err := BackupStore(ctx, src, file); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("backup over an existing file: %v", err)
	}

	e := pgEngine(t)
	dst, err := OpenIdle(ctx, e.opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dst.CreateUser(ctx, User{Name: "other"}); err != nil {
		t.Fatal(err)
	}
	if _, err := RestoreStore(ctx, file, dst); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	if got := readContents(t, e.open(t)); !reflect.DeepEqual(got, want) {
		t.Errorf("restored PostgreSQL holds\n%+v\nwant\n%+v", got, want)
	}

	path := filepath.Join(t.TempDir(), "db.sqlite")
	if _, err := Restore(ctx, file, path); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, Options{Path: path, WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := readContents(t, s); !reflect.DeepEqual(got, want) {
		t.Errorf("restored SQLite holds\n%+v\nwant\n%+v", got, want)
	}
}

// TestParsePostgresURL fills the options from a URL and never quotes it in
// an error.
func TestParsePostgresURL(t *testing.T) {
	o, err := ParsePostgresURL("postgres://alice:s3cret-pw@db.example:6543/hs?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	if o.Host != "db.example" || o.Port != 6543 || o.Name != "hs" || o.User != "alice" || o.Pass != "s3cret-pw" {
		t.Errorf("parsed %+v", o)
	}
	if d := o.Display(); d != "postgres://alice@db.example:6543/hs" {
		t.Errorf("Display = %q", d)
	}
	sock := PostgresOptions{Host: "/run/postgresql", Name: "hs", User: "headscale"}
	if d := sock.Display(); d != "postgres:///hs?host=/run/postgresql&port=5432&user=headscale" {
		t.Errorf("Display = %q", d)
	}
	// What Display prints opens the same database.
	for _, o := range []PostgresOptions{o, sock} {
		back, err := ParsePostgresURL(o.Display())
		if err != nil || back.Host != o.Host || back.port() != o.port() || back.Name != o.Name || back.User != o.User {
			t.Errorf("ParsePostgresURL(%q) = %+v, %v; want %+v", o.Display(), back, err, o)
		}
	}
	for _, bad := range []string{"mysql://x", "postgres://alice:s3cret-pw@db.example:notaport/hs", "postgres://alice:s3cret-pw@db.example/"} {
		_, err := ParsePostgresURL(bad)
		if err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("ParsePostgresURL(%q) = %v", bad, err)
		}
	}
}

// TestCopyRefusesUnknownTable: a table Copy does not know (a newer schema,
// or one added by hand) is refused rather than left behind.
func TestCopyRefusesUnknownTable(t *testing.T) {
	ctx := t.Context()
	src := sqliteEngine(t).open(t)
	dst := sqliteEngine(t).open(t)
	if _, err := src.write.ExecContext(ctx, `CREATE TABLE extra (id INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	if _, err := Copy(ctx, src, dst, CopyOptions{}); err == nil || !strings.Contains(err.Error(), "table extra is not one this headscale copies") {
		t.Errorf("Copy with an unknown table: %v", err)
	}
}

// TestOpenNoMigrate: NoMigrate opens a database at the newest schema and
// refuses, without changing it, one that lacks a migration.
func TestOpenNoMigrate(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		ctx := t.Context()
		s := e.open(t)
		var version int
		var name string
		var applied int64
		if err := s.write.QueryRowContext(ctx, `SELECT version, name, applied_at FROM schema_migrations ORDER BY version DESC LIMIT 1`).Scan(&version, &name, &applied); err != nil {
			t.Fatal(err)
		}
		if _, err := s.write.ExecContext(ctx, `DELETE FROM schema_migrations WHERE version = $1`, version); err != nil {
			t.Fatal(err)
		}
		before, err := s.SchemaVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		opts := e.opts
		opts.NoMigrate = true
		if ro, err := Open(ctx, opts); err == nil || !strings.Contains(err.Error(), "schema version") {
			if ro != nil {
				ro.Close()
			}
			t.Fatalf("NoMigrate on an older schema: %v", err)
		}
		if after, err := s.SchemaVersion(ctx); err != nil || after != before {
			t.Errorf("schema version %d after a NoMigrate open, want %d unchanged (%v)", after, before, err)
		}
		if _, err := s.write.ExecContext(ctx, qInsertMigration, version, name, applied); err != nil {
			t.Fatal(err)
		}
		ro, err := Open(ctx, opts)
		if err != nil {
			t.Fatalf("NoMigrate on the newest schema: %v", err)
		}
		ro.Close()
	})
}
