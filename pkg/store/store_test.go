package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/ids"
)

// openTest opens a SQLite store in a fresh temporary directory and closes
// it when the test ends (for SQLite-only tests; the others use
// forEachEngine).
func openTest(t *testing.T, mod ...func(*Options)) *Store {
	t.Helper()
	opts := Options{Path: filepath.Join(t.TempDir(), "db.sqlite"), WAL: true}
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

// ts builds a time the way the store decodes one, so reflect.DeepEqual can
// compare structs holding it.
func ts(ms int64) time.Time { return time.UnixMilli(ms).UTC() }

func ptr[T any](v T) *T { return &v }

func knownMigrations(t *testing.T) int {
	t.Helper()
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatalf("loadMigrations: %v", err)
	}
	return len(ms)
}

// TestReopen: opening a database three times applies the migrations once
// and records each, on both engines.
func TestReopen(t *testing.T) { forEachEngine(t, testReopen) }

func testReopen(t *testing.T, e engine) {
	ctx := t.Context()
	want := knownMigrations(t)
	for round := range 3 {
		s := e.open(t)
		if v, err := s.SchemaVersion(ctx); err != nil || v != want {
			t.Errorf("round %d: SchemaVersion = %d, %v; want %d", round, v, err, want)
		}
		var n, distinct int
		if err := s.read.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migrations WHERE name <> '' AND applied_at > 0`).Scan(&n, &distinct); err != nil {
			t.Fatal(err)
		}
		if n != want || distinct != want {
			t.Errorf("round %d: %d schema_migrations rows (%d versions), want %d", round, n, distinct, want)
		}
		if err := s.Ping(ctx); err != nil {
			t.Errorf("round %d: Ping: %v", round, err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", round, err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("round %d: second Close: %v", round, err)
		}
	}
}

// TestOpenFreshAndReopen is SQLite-only: the file, its directory and their
// modes.
func TestOpenFreshAndReopen(t *testing.T) {
	ctx := t.Context()
	dir := filepath.Join(t.TempDir(), "nested", "state")
	path := filepath.Join(dir, "db.sqlite")
	want := knownMigrations(t)

	for round := range 3 {
		s, err := Open(ctx, Options{Path: path, WAL: true})
		if err != nil {
			t.Fatalf("round %d: Open: %v", round, err)
		}
		v, err := s.SchemaVersion(ctx)
		if err != nil {
			t.Fatalf("round %d: SchemaVersion: %v", round, err)
		}
		if v != want {
			t.Errorf("round %d: SchemaVersion = %d, want %d", round, v, want)
		}
		rows, err := s.read.QueryContext(ctx, `SELECT version, name, applied_at FROM schema_migrations ORDER BY version`)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		for rows.Next() {
			var (
				version int
				name    string
				applied int64
			)
			if err := rows.Scan(&version, &name, &applied); err != nil {
				t.Fatal(err)
			}
			n++
			if version != n || name == "" || applied <= 0 {
				t.Errorf("round %d: migration row %d = (%d, %q, %d)", round, n, version, name, applied)
			}
		}
		rows.Close()
		if n != want {
			t.Errorf("round %d: %d schema_migrations rows, want %d", round, n, want)
		}
		if err := s.Ping(ctx); err != nil {
			t.Errorf("round %d: Ping: %v", round, err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("round %d: Close: %v", round, err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("round %d: second Close: %v", round, err)
		}
	}

	for _, c := range []struct {
		path string
		mode os.FileMode
	}{{dir, 0o700}, {path, 0o600}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.mode {
			t.Errorf("%s mode = %o, want %o", c.path, got, c.mode)
		}
	}
}

// TestOpenJournalMode is SQLite-only: journal modes and pragmas.
func TestOpenJournalMode(t *testing.T) {
	for _, tc := range []struct {
		wal  bool
		want string
	}{{true, "wal"}, {false, "delete"}} {
		t.Run(tc.want, func(t *testing.T) {
			s := openTest(t, func(o *Options) { o.WAL = tc.wal; o.WALAutocheckpoint = 100 })
			var mode string
			if err := s.write.QueryRowContext(t.Context(), `PRAGMA journal_mode`).Scan(&mode); err != nil {
				t.Fatal(err)
			}
			if mode != tc.want {
				t.Errorf("journal_mode = %q, want %q", mode, tc.want)
			}
			var fk, sync, auto int
			if err := s.write.QueryRowContext(t.Context(), `PRAGMA foreign_keys`).Scan(&fk); err != nil {
				t.Fatal(err)
			}
			if err := s.write.QueryRowContext(t.Context(), `PRAGMA synchronous`).Scan(&sync); err != nil {
				t.Fatal(err)
			}
			if err := s.write.QueryRowContext(t.Context(), `PRAGMA wal_autocheckpoint`).Scan(&auto); err != nil {
				t.Fatal(err)
			}
			// In WAL mode the store checkpoints in the background
			// (walLoop), never at commit.
			wantAuto := 100
			if tc.wal {
				wantAuto = 0
			}
			if fk != 1 || sync != 1 || auto != wantAuto {
				t.Errorf("foreign_keys=%d synchronous=%d wal_autocheckpoint=%d, want 1 1 %d", fk, sync, auto, wantAuto)
			}
			var qo int
			if err := s.read.QueryRowContext(t.Context(), `PRAGMA query_only`).Scan(&qo); err != nil {
				t.Fatal(err)
			}
			if qo != 1 {
				t.Errorf("read pool query_only = %d, want 1", qo)
			}
		})
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) { forEachEngine(t, testOpenRefusesNewerSchema) }

func testOpenRefusesNewerSchema(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	if _, err := s.write.ExecContext(ctx, qInsertMigration, 999, "from_the_future", time.Now().UnixMilli()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	_, err := Open(ctx, e.opts)
	want := fmt.Sprintf("database schema version 999 is newer than this headscale supports (%d): upgrade headscale or restore a backup", knownMigrations(t))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Open = %v, want error containing %q", err, want)
	}
}

// TestOpenRefusesNonDatabase is SQLite-only: files that are not SQLite
// databases (TestOpenRefusesForeignPostgres is PostgreSQL's).
func TestOpenRefusesNonDatabase(t *testing.T) {
	makeForeign := func(path string) error {
		db, err := sql.Open("sqlite", path)
		if err != nil {
			return err
		}
		defer db.Close()
		_, err = db.Exec(`CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)`)
		return err
	}
	writeFile := func(b []byte) func(string) error {
		return func(path string) error { return os.WriteFile(path, b, 0o600) }
	}
	tests := []struct {
		name    string
		prepare func(path string) error
		want    string
	}{
		{"text", writeFile([]byte("server_url: https://example.com\nlisten_addr: 0.0.0.0:8080\n")), "not a SQLite database"},
		{"short", writeFile([]byte("SQLite")), "not a SQLite database"},
		{"binary", writeFile(append([]byte{0x7f, 'E', 'L', 'F'}, make([]byte, 8192)...)), "not a SQLite database"},
		{"corrupt after header", writeFile(append([]byte("SQLite format 3\x00"), make([]byte, 84)...)), "not a SQLite database"},
		{"foreign sqlite", makeForeign, "no schema_migrations table"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "db.sqlite")
			if err := tc.prepare(path); err != nil {
				t.Fatal(err)
			}
			s, err := Open(t.Context(), Options{Path: path, WAL: true})
			if err == nil {
				s.Close()
				t.Fatalf("Open succeeded, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Open = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

// TestOpenEmptyPath is SQLite-only: the path.
func TestOpenEmptyPath(t *testing.T) {
	if _, err := Open(t.Context(), Options{}); err == nil {
		t.Fatal("Open with empty path succeeded")
	}
}

// TestPositionalPlaceholders is SQLite-only: the driver binds $n by
// ordinal, as PostgreSQL does.
func TestPositionalPlaceholders(t *testing.T) {
	s := openTest(t)
	var a, b, c string
	if err := s.read.QueryRowContext(t.Context(), `SELECT $2, $1, $1`, "one", "two").Scan(&a, &b, &c); err != nil {
		t.Fatal(err)
	}
	if a != "two" || b != "one" || c != "one" {
		t.Fatalf("SELECT $2, $1, $1 = %q %q %q, want two one one", a, b, c)
	}
}

func TestLoadMigrations(t *testing.T) {
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	tests := []struct {
		name    string
		fs      fstest.MapFS
		want    []int
		wantErr string
	}{
		{"ordered", fstest.MapFS{"migrations/0002_b.sql": file("x"), "migrations/0001_a.sql": file("y")}, []int{1, 2}, ""},
		{"gap", fstest.MapFS{"migrations/0001_a.sql": file("x"), "migrations/0003_c.sql": file("y")}, nil, "contiguous"},
		{"bad name", fstest.MapFS{"migrations/init.sql": file("x")}, nil, "NNNN_name.sql"},
		{"embedded", nil, nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ms []migration
			var err error
			if tc.fs == nil {
				ms, err = loadMigrations(migrationFS)
			} else {
				ms, err = loadMigrations(tc.fs)
			}
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want != nil {
				for i, m := range ms {
					if m.version != tc.want[i] {
						t.Errorf("ms[%d].version = %d, want %d", i, m.version, tc.want[i])
					}
				}
			}
			if len(ms) == 0 {
				t.Fatal("no migrations")
			}
		})
	}
}

// TestMigrateUpgrade applies a later migration to an existing database, as a
// newer binary would.
func TestMigrateUpgrade(t *testing.T) { forEachEngine(t, testMigrateUpgrade) }

func testMigrateUpgrade(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	// The embedded migrations plus one more.
	next := fstest.MapFS{}
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := migrationFS.ReadFile("migrations/" + e.Name())
		if err != nil {
			t.Fatal(err)
		}
		next["migrations/"+e.Name()] = &fstest.MapFile{Data: b}
	}
	extra := len(entries) + 1
	next[fmt.Sprintf("migrations/%04d_extra.sql", extra)] = &fstest.MapFile{Data: []byte("CREATE TABLE extra (id {{ID_PK}}, v TEXT NOT NULL);\nCREATE INDEX extra_v_idx ON extra (v);")}
	for range 2 { // idempotent
		if err := s.migrate(ctx, next); err != nil {
			t.Fatalf("migrate: %v", err)
		}
	}
	if v, err := s.SchemaVersion(ctx); err != nil || v != extra {
		t.Fatalf("SchemaVersion = %d, %v; want %d", v, err, extra)
	}
	if _, err := s.write.ExecContext(ctx, `INSERT INTO extra (v) VALUES ($1)`, "x"); err != nil {
		t.Fatalf("new table unusable: %v", err)
	}
	if got, err := s.GetUser(ctx, u.ID); err != nil || got.Name != "alice" {
		t.Fatalf("GetUser after upgrade = %+v, %v", got, err)
	}
	// The embedded (older) migration set now refuses this database.
	err = s.migrate(ctx, migrationFS)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("database schema version %d is newer", extra)) {
		t.Fatalf("migrate with older set = %v, want refusal", err)
	}
}

func walSize(t *testing.T, s *Store) int64 {
	t.Helper()
	fi, err := os.Stat(s.path + "-wal")
	if errors.Is(err, os.ErrNotExist) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// writeLoad makes a few thousand WAL frames.
func writeLoad(t *testing.T, s *Store, users int) {
	t.Helper()
	ctx := t.Context()
	for i := range users {
		u, err := s.CreateUser(ctx, User{Name: fmt.Sprintf("user-%d", i), DisplayName: strings.Repeat("x", 500)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.RenameUser(ctx, u.ID, fmt.Sprintf("renamed-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCheckpointTruncatesWAL is SQLite-only: its -wal file.
func TestCheckpointTruncatesWAL(t *testing.T) {
	// Auto-checkpointing off, so only Checkpoint can shrink the WAL.
	s := openTest(t, func(o *Options) { o.CheckpointInterval = -1; o.WALAutocheckpoint = 0 })
	if _, err := s.write.ExecContext(t.Context(), `PRAGMA wal_autocheckpoint(0)`); err != nil {
		t.Fatal(err)
	}
	writeLoad(t, s, 500)
	// Readers that have finished must not hold the checkpoint back.
	if _, err := s.ListUsers(t.Context()); err != nil {
		t.Fatal(err)
	}
	before := walSize(t, s)
	if before < 1<<20 {
		t.Fatalf("-wal is only %d bytes after the load; test is not exercising growth", before)
	}
	if err := s.Checkpoint(t.Context()); err != nil {
		t.Fatalf("Checkpoint: %v", err)
	}
	if after := walSize(t, s); after != 0 {
		t.Fatalf("-wal is %d bytes after Checkpoint (was %d), want 0", after, before)
	}
	users, err := s.ListUsers(t.Context())
	if err != nil || len(users) != 500 {
		t.Fatalf("ListUsers after checkpoint = %d users, %v", len(users), err)
	}
}

// TestPeriodicCheckpoint is SQLite-only: its -wal file.
func TestPeriodicCheckpoint(t *testing.T) {
	s := openTest(t, func(o *Options) { o.CheckpointInterval = 20 * time.Millisecond })
	if _, err := s.write.ExecContext(t.Context(), `PRAGMA wal_autocheckpoint(0)`); err != nil {
		t.Fatal(err)
	}
	writeLoad(t, s, 100)
	tstest.WaitFor(t, 10*time.Second, "the periodic checkpoint to empty the -wal", func() error {
		if n := walSize(t, s); n != 0 {
			return fmt.Errorf("-wal still %d bytes", n)
		}
		return nil
	})
}

// TestConcurrentWriters hammers the store from many goroutines; with the
// single-connection BEGIN IMMEDIATE write pool no call may fail with
// SQLITE_BUSY, in either journal mode, and on PostgreSQL's pool none may
// fail either.
func TestConcurrentWriters(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e engine) {
		modes := []bool{true, false}
		if e.name == "postgres" {
			modes = modes[:1] // no journal modes
		}
		for _, wal := range modes {
			t.Run(fmt.Sprintf("wal=%v", wal), func(t *testing.T) {
				testConcurrentWriters(t, e.open(t, func(o *Options) {
					o.WAL, o.Path = wal, filepath.Join(t.TempDir(), "db.sqlite") // a file per mode
				}))
			})
		}
	})
}

func testConcurrentWriters(t *testing.T, s *Store) {
	ctx := t.Context()
	const workers, perWorker = 8, 40
	var wg sync.WaitGroup
	errs := make(chan error, workers*perWorker*4)
	for w := range workers {
		wg.Go(func() {
			u, err := s.CreateUser(ctx, User{Name: fmt.Sprintf("w%d", w)})
			if err != nil {
				errs <- err
				return
			}
			for i := range perWorker {
				n, err := s.RegisterNode(ctx, testNode(fmt.Sprintf("w%d-%d", w, i), &u.ID), 0)
				if err != nil {
					errs <- err
					continue
				}
				n.Hostname = "updated"
				if err := errOf(s.UpdateNode(ctx, n, 0)); err != nil {
					errs <- err
				}
				if err := s.SetLastSeen(ctx, map[ids.NodeID]time.Time{n.ID: time.Now()}); err != nil {
					errs <- err
				}
				if _, err := s.ListNodes(ctx); err != nil {
					errs <- err
				}
				if err := s.SetPolicy(ctx, fmt.Sprintf(`{"w":%d}`, w)); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	nodes, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != workers*perWorker {
		t.Fatalf("%d nodes, want %d", len(nodes), workers*perWorker)
	}
}

func TestContextCancelled(t *testing.T) { forEachEngine(t, testContextCancelled) }

func testContextCancelled(t *testing.T, e engine) {
	s := e.open(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.CreateUser(ctx, User{Name: "x"}); err == nil {
		t.Fatal("CreateUser with cancelled context succeeded")
	}
	if _, err := s.ListUsers(ctx); err == nil {
		t.Fatal("ListUsers with cancelled context succeeded")
	}
	// The pools still work afterwards.
	if _, err := s.CreateUser(t.Context(), User{Name: "x"}); err != nil {
		t.Fatalf("CreateUser after cancellation: %v", err)
	}
}

// TestTwoStoresSameFile is the server and an offline admin command writing
// the same database at once: on SQLite busy_timeout must absorb the
// cross-process lock waits; on PostgreSQL two pools write side by side.
func TestTwoStoresSameFile(t *testing.T) { forEachEngine(t, testTwoStoresSameFile) }

func testTwoStoresSameFile(t *testing.T, e engine) {
	ctx := t.Context()
	var stores [2]*Store
	for i := range stores {
		stores[i] = e.open(t, func(o *Options) { o.CheckpointInterval = 5 * time.Millisecond })
	}
	var wg sync.WaitGroup
	errs := make(chan error, 400)
	for i, s := range stores {
		wg.Go(func() {
			for j := range 100 {
				n, err := s.RegisterNode(ctx, testNode(fmt.Sprintf("s%d-%d", i, j), nil), 0)
				if err != nil {
					errs <- err
					continue
				}
				if err := s.SetLastSeen(ctx, map[ids.NodeID]time.Time{n.ID: time.Now()}); err != nil {
					errs <- err
				}
				if _, err := s.GetNode(ctx, n.ID); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	nodes, err := stores[0].ListNodes(ctx)
	if err != nil || len(nodes) != 200 {
		t.Fatalf("ListNodes = %d, %v; want 200", len(nodes), err)
	}
}

// TestOpenUnusualPaths is SQLite-only: file names.
func TestOpenUnusualPaths(t *testing.T) {
	for _, name := range []string{
		"with space/db.sqlite",
		"query?chars#and%25/db file?.sqlite",
		"ünïcode/データ.db",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), name)
			s, err := Open(t.Context(), Options{Path: path, WAL: true})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.CreateUser(t.Context(), User{Name: "a"}); err != nil {
				t.Fatal(err)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatalf("database not at the requested path: %v", err)
			}
			if fi.Size() == 0 {
				t.Fatal("database file is empty")
			}
		})
	}
}

// TestOpenRefusesHeadscaleDatabase (SQLite-only): a database a real
// Headscale 0.27.1 wrote is refused with the release named, and its file
// is left exactly as it was.
func TestOpenRefusesHeadscaleDatabase(t *testing.T) {
	src := tstest.Shared(t, "fixtures/headscale-db/0.27.1-sqlite/db.sqlite")
	orig, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, wal := range []bool{true, false} {
		path := filepath.Join(t.TempDir(), "db.sqlite")
		if err := os.WriteFile(path, orig, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := Open(t.Context(), Options{Path: path, WAL: wal})
		if err == nil {
			s.Close()
			t.Fatal("Open succeeded on a Headscale database")
		}
		if !errors.Is(err, ErrHeadscaleDatabase) || !strings.Contains(err.Error(), "Headscale 0.27.1") {
			t.Errorf("Open = %v, want ErrHeadscaleDatabase naming 0.27.1", err)
		}
		after, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(after, orig) {
			t.Errorf("WAL %v: the Headscale database file changed", wal)
		}
		entries, _ := os.ReadDir(filepath.Dir(path))
		if len(entries) != 1 {
			var names []string
			for _, e := range entries {
				names = append(names, e.Name())
			}
			t.Errorf("WAL %v: files left beside the database: %v", wal, names)
		}
	}
}

// TestWALCheckpointedInBackground: commits do not checkpoint (see
// backgroundCheckpoints), so only walLoop can move what was written into
// the database file.
func TestWALCheckpointedInBackground(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "db.sqlite")
	s, err := Open(ctx, Options{Path: path, WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	size := func() int64 {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	before := size()
	for i := range 300 {
		if _, err := s.CreateUser(ctx, User{Name: fmt.Sprintf("user-%03d-%s", i, strings.Repeat("x", 200))}); err != nil {
			t.Fatal(err)
		}
	}
	tstest.WaitFor(t, 30*time.Second, "the WAL to be checkpointed into the database file", func() error {
		if after := size(); after <= before {
			return fmt.Errorf("database file still %d bytes", after)
		}
		return nil
	})
}
