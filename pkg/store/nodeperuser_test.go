package store

import (
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/hsctl/headscale/pkg/ids"
)

// TestSharedMachineKey: a machine may have a node per user (as Headscale
// keeps them after a login as another user): two nodes with one machine
// key are stored, listed and registered in one batch, while node keys
// stay unique.
func TestSharedMachineKey(t *testing.T) { forEachEngine(t, testSharedMachineKey) }

func testSharedMachineKey(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	alice, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	bob, err := s.CreateUser(ctx, User{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	node := func(name string, uid ids.UserID) Node {
		n := testNode(name, &uid)
		n.MachineKey = "mkey:laptop"
		return n
	}
	a, err := s.RegisterNode(ctx, node("laptop-alice", alice.ID), 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.RegisterNode(ctx, node("laptop-bob", bob.ID), 0)
	if err != nil {
		t.Fatalf("second node of the machine, another user: %v", err)
	}
	batch, err := s.RegisterNodes(ctx, []Node{node("batch-1", alice.ID), node("batch-2", bob.ID)})
	if err != nil {
		t.Fatalf("RegisterNodes with one machine key twice: %v", err)
	}
	for i, want := range []string{"nodekey:batch-1", "nodekey:batch-2"} {
		if batch[i].NodeKey != want || batch[i].ID == 0 {
			t.Errorf("RegisterNodes[%d] = %+v, want node key %s", i, batch[i], want)
		}
	}
	nodes, err := s.ListNodes(ctx)
	if err != nil || len(nodes) != 4 {
		t.Fatalf("ListNodes = %d nodes, %v; want 4", len(nodes), err)
	}
	for _, n := range nodes {
		if n.MachineKey != "mkey:laptop" {
			t.Errorf("node %d machine key %q", n.ID, n.MachineKey)
		}
	}
	if *nodes[0].UserID != alice.ID || nodes[0].ID != a.ID || *nodes[1].UserID != bob.ID || nodes[1].ID != b.ID {
		t.Errorf("ListNodes = %+v %+v, want alice's then bob's", nodes[0], nodes[1])
	}
	clash := node("fresh", bob.ID)
	clash.NodeKey = b.NodeKey
	if _, err := s.RegisterNode(ctx, clash, 0); !errors.Is(err, ErrConflict) {
		t.Errorf("node key taken = %v, want ErrConflict", err)
	}
	if err := s.DeleteNode(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetNode(ctx, b.ID); err != nil || got.MachineKey != "mkey:laptop" {
		t.Errorf("bob's node after alice's was deleted = %+v, %v", got, err)
	}
}

// migrationsUpTo is the embedded schema history up to version last, as
// a release of that time had it.
func migrationsUpTo(t *testing.T, last int) fs.FS {
	t.Helper()
	ms, err := loadMigrations(migrationFS)
	if err != nil {
		t.Fatal(err)
	}
	out := fstest.MapFS{}
	entries, err := fs.ReadDir(migrationFS, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range entries {
		if ms[i].version > last {
			break
		}
		b, err := fs.ReadFile(migrationFS, "migrations/"+e.Name())
		if err != nil {
			t.Fatal(err)
		}
		out["migrations/"+e.Name()] = &fstest.MapFile{Data: b}
	}
	return out
}

// TestMigrateNodePerUser applies 0006 (machine keys no longer unique) to a
// database a release before it filled: every row and the ID sequences are
// kept, route IDs still belong to their node and still go with it, the
// foreign keys and unique node keys still hold, and a second node of the
// same machine can then be stored.
func TestMigrateNodePerUser(t *testing.T) { forEachEngine(t, testMigrateNodePerUser) }

func testMigrateNodePerUser(t *testing.T, e engine) {
	ctx := t.Context()
	old := e.open(t, func(o *Options) { o.migrations = migrationsUpTo(t, 5) })
	if v, err := old.SchemaVersion(ctx); err != nil || v != 5 {
		t.Fatalf("SchemaVersion before = %d, %v; want 5", v, err)
	}
	fill(t, old)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	// What the migrated database must hold, read through this binary's
	// API (which reads columns later migrations add): the same rows
	// written into a database at the newest schema.
	ref := sqliteEngine(t)
	if e.name == "postgres" {
		ref = pgEngine(t)
	}
	rs := ref.open(t)
	fill(t, rs)
	before := readContents(t, rs)
	if len(before.Nodes) != 1 || len(before.RouteIDs) != 1 {
		t.Fatalf("filled %d nodes, %d route IDs", len(before.Nodes), len(before.RouteIDs))
	}

	s := e.open(t)
	if v, err := s.SchemaVersion(ctx); err != nil || v != knownMigrations(t) {
		t.Fatalf("SchemaVersion after = %d, %v; want %d", v, err, knownMigrations(t))
	}
	if after := readContents(t, s); !reflect.DeepEqual(after, before) {
		t.Fatalf("contents changed by the migration:\nbefore %+v\nafter  %+v", before, after)
	}
	idx := `SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = $1`
	if e.name == "postgres" {
		idx = `SELECT COUNT(*) FROM pg_indexes WHERE indexname = $1`
	}
	for _, name := range []string{"nodes_machine_key_idx", "nodes_user_id_idx", "nodes_auth_key_id_idx"} {
		var n int
		if err := s.read.QueryRowContext(ctx, idx, name).Scan(&n); err != nil || n != 1 {
			t.Errorf("index %s: %d, %v", name, n, err)
		}
	}
	if e.name == "sqlite" {
		rows, err := s.read.QueryContext(ctx, `PRAGMA foreign_key_check`)
		if err != nil {
			t.Fatal(err)
		}
		if rows.Next() {
			t.Error("foreign_key_check reports violations after the migration")
		}
		rows.Close()
		var ok string
		if err := s.read.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
			t.Errorf("integrity_check = %q, %v", ok, err)
		}
	}

	old12 := before.Nodes[0]
	second := testNode("second", old12.UserID)
	second.MachineKey = old12.MachineKey
	n, err := s.RegisterNode(ctx, second, 0)
	if err != nil {
		t.Fatalf("second node of the machine: %v", err)
	}
	if n.ID <= 40 {
		t.Errorf("new node ID %d, want above the sequence's 40 (IDs are never handed out again)", n.ID)
	}
	dup := testNode("third", old12.UserID)
	dup.NodeKey = old12.NodeKey
	if _, err := s.RegisterNode(ctx, dup, 0); !errors.Is(err, ErrConflict) {
		t.Errorf("node key taken = %v, want ErrConflict", err)
	}
	ghost := testNode("ghost", ptr[ids.UserID](999))
	if _, err := s.RegisterNode(ctx, ghost, 0); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown user = %v, want ErrNotFound (foreign key)", err)
	}
	if err := s.DeleteNode(ctx, old12.ID); err != nil {
		t.Fatal(err)
	}
	if r, err := s.ListRouteIDs(ctx); err != nil || len(r) != 0 {
		t.Errorf("route IDs after their node was deleted = %+v, %v; want none", r, err)
	}
}

// TestEngineBlocks: a migration's "-- {{IF engine}}" blocks run on that
// engine only, and malformed blocks are refused when migrations load.
func TestEngineBlocks(t *testing.T) {
	const body = "A;\n-- {{IF sqlite}}\nS;\n-- {{END}}\n-- {{IF postgres}}\nP;\n-- {{END}}\nB {{ID_PK}};\n"
	tests := []struct {
		name    string
		d       *dialect
		body    string
		want    string
		wantErr string
	}{
		{"sqlite", sqliteDialect, body, "A;\nS;\nB " + sqliteDialect.idPK + ";\n", ""},
		{"postgres", postgresDialect, body, "A;\nP;\nB " + postgresDialect.idPK + ";\n", ""},
		{"no blocks", sqliteDialect, "A;\n", "A;\n", ""},
		{"unknown engine", nil, "-- {{IF mysql}}\nX;\n-- {{END}}\n", "", `names "mysql"`},
		{"nested", nil, "-- {{IF sqlite}}\n-- {{IF postgres}}\n-- {{END}}\n-- {{END}}\n", "", "do not nest"},
		{"unclosed", nil, "-- {{IF sqlite}}\nX;\n", "", "without {{END}}"},
		{"stray end", nil, "X;\n-- {{END}}\n", "", "without {{IF"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := checkEngineBlocks(tc.body)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("checkEngineBlocks = %v, want %q", err, tc.wantErr)
				}
				if _, err := loadMigrations(fstest.MapFS{"migrations/0001_x.sql": {Data: []byte(tc.body)}}); err == nil {
					t.Fatal("loadMigrations accepted it")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := tc.d.migration(tc.body); got != tc.want {
				t.Errorf("migration = %q, want %q", got, tc.want)
			}
		})
	}
}
