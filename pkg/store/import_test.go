package store

// Import and CheckEmpty write and read SQLite files (SQLite-only); the
// sequences test at the end runs on both engines.

import (
	"database/sql"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// importData is one fully set row of each kind, with IDs that are not 1.
func importData() ImportData {
	at := ts(1_700_000_000_123)
	uid, kid := ids.UserID(7), ids.PreAuthKeyID(9)
	return ImportData{
		Users: []User{{ID: 7, Name: "alice", DisplayName: "Alice", Email: "alice@example.com", ProfilePicURL: "https://example.com/a.png",
			Provider: "oidc", ProviderID: "sub-1", Groups: []string{"eng", "/vpn"}, CreatedAt: at}},
		PreAuthKeys: []PreAuthKey{{ID: 9, Prefix: "p1", Hash: []byte("$2a$10$bcrypt"), UserID: &uid, Reusable: true, Ephemeral: true, Used: true,
			Tags: []string{"tag:a"}, Expiration: at.Add(time.Second), CreatedAt: at, Legacy: true}},
		Nodes: []Node{{ID: 12, MachineKey: "mkey:1", NodeKey: "nodekey:1", DiscoKey: "discokey:1", Endpoints: []string{"192.0.2.1:41641"},
			Hostinfo: []byte(`{"Hostname":"h"}`), IPv4: "100.64.0.1", IPv6: "fd7a:115c:a1e0::1", Hostname: "h", GivenName: "g",
			UserID: &uid, RegisterMethod: "authkey", Tags: []string{"tag:a"}, AuthKeyID: &kid, Ephemeral: true,
			LastSeen: at.Add(4 * time.Second), Expiry: at.Add(5 * time.Second), ApprovedRoutes: []string{"10.0.0.0/24"}, PendingApproval: true, CreatedAt: at, UpdatedAt: at.Add(time.Second)}},
		APIKeys:   []APIKey{{ID: 3, Prefix: "a1", Hash: []byte{3}, Expiration: at.Add(2 * time.Second), LastSeen: at.Add(3 * time.Second), CreatedAt: at}},
		Policies:  []PolicyRecord{{ID: 4, Data: "{}", UpdatedAt: at}, {ID: 5, Data: `{"acls": []}`, UpdatedAt: at.Add(time.Second)}},
		RouteIDs:  []RouteID{{ID: 21, NodeID: 12, Prefix: netip.MustParsePrefix("10.0.0.0/24"), CreatedAt: at}},
		Sequences: map[string]int64{"nodes": 40, "users": 2, "route_ids": 30},
	}
}

// TestImport: every field of every row survives with its ID, the current
// policy is the last one, and the ID sequences continue after the given
// values (or after the highest ID).
func TestImport(t *testing.T) {
	ctx := t.Context()
	d := importData()
	// Rows are imported at version 1 (Headscale has no versions).
	versioned := map[string]bool{"Version": true}
	for _, v := range []any{d.Users[0], d.PreAuthKeys[0], d.Nodes[0], d.APIKeys[0]} {
		allSet(t, v, versioned)
	}
	path := filepath.Join(t.TempDir(), "db.sqlite")
	counts, err := Import(ctx, path, d)
	if err != nil {
		t.Fatal(err)
	}
	if counts["nodes"] != 1 || counts["policies"] != 2 || counts["route_ids"] != 1 {
		t.Errorf("counts %v", counts)
	}
	s, err := Open(ctx, Options{Path: path, WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, err := s.GetUser(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	sameFields(t, u, d.Users[0], versioned)
	k, err := s.GetPreAuthKey(ctx, 9)
	if err != nil {
		t.Fatal(err)
	}
	sameFields(t, k, d.PreAuthKeys[0], nil)
	n, err := s.GetNode(ctx, 12)
	if err != nil {
		t.Fatal(err)
	}
	sameFields(t, n, d.Nodes[0], versioned)
	a, err := s.GetAPIKey(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	sameFields(t, a, d.APIKeys[0], nil)
	if text, at, err := s.GetPolicy(ctx); err != nil || text != `{"acls": []}` || !at.Equal(d.Policies[1].UpdatedAt) {
		t.Errorf("policy %q %v %v", text, at, err)
	}
	if r, err := s.GetRouteID(ctx, 21); err != nil || r.NodeID != 12 || r.Prefix.String() != "10.0.0.0/24" {
		t.Errorf("route %+v %v", r, err)
	}
	// Sequences: nodes after 40, users after 7 (its highest ID beats 2).
	nn, err := s.RegisterNode(ctx, Node{MachineKey: "mkey:2", NodeKey: "nodekey:2", GivenName: "g2"}, 0)
	if err != nil || nn.ID != 41 {
		t.Errorf("new node %d %v, want 41", nn.ID, err)
	}
	nu, err := s.CreateUser(ctx, User{Name: "bob"})
	if err != nil || nu.ID != 8 {
		t.Errorf("new user %d %v, want 8", nu.ID, err)
	}
	if err := CheckEmpty(ctx, path); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("CheckEmpty on an imported database: %v", err)
	}
}

// TestImportFailsWhole: a row that breaks a constraint fails the import
// and leaves no file; an existing file is never written.
func TestImportFailsWhole(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	d := importData()
	d.Nodes = append(d.Nodes, d.Nodes[0])
	d.Nodes[1].ID = 13 // same node key, name and addresses
	path := filepath.Join(dir, "db.sqlite")
	if _, err := Import(ctx, path, d); !errors.Is(err, ErrConflict) {
		t.Errorf("Import = %v, want ErrConflict", err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left %v", entries)
	}
	os.WriteFile(path, []byte("x"), 0o600)
	if _, err := Import(ctx, path, importData()); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("Import over a file = %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "x" {
		t.Error("the existing file was written")
	}
}

// TestCheckEmpty: missing, empty and row-less databases may be imported
// into; one with rows or another program's may not.
func TestCheckEmpty(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	if err := CheckEmpty(ctx, filepath.Join(dir, "missing")); err != nil {
		t.Error(err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	if err := CheckEmpty(ctx, empty); err != nil {
		t.Error(err)
	}
	s := openTest(t)
	if err := CheckEmpty(ctx, s.path); err != nil {
		t.Errorf("a new store: %v", err)
	}
	if _, err := s.CreateUser(ctx, User{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := CheckEmpty(ctx, s.path); err == nil {
		t.Error("a store with a user passed")
	}
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("not a database at all, really"), 0o600)
	if err := CheckEmpty(ctx, junk); err == nil {
		t.Error("a file that is not a database passed")
	}
}

// TestImportRowsSequences: rows written with their own IDs (as a copy
// between engines writes them) move each table's sequence past them and
// past the source's high-water marks, on both engines.
func TestImportRowsSequences(t *testing.T) { forEachEngine(t, testImportRowsSequences) }

func testImportRowsSequences(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	uid := ids.UserID(7)
	data := ImportData{
		Users:       []User{{ID: uid, Name: "alice", CreatedAt: ts(1)}},
		PreAuthKeys: []PreAuthKey{{ID: 40, Prefix: "p", Hash: []byte{1}, UserID: &uid, CreatedAt: ts(1)}},
		Nodes:       []Node{{ID: 12, MachineKey: "mkey:1", NodeKey: "nodekey:1", GivenName: "a", UserID: &uid, CreatedAt: ts(1), UpdatedAt: ts(1)}},
		APIKeys:     []APIKey{{ID: 3, Prefix: "a", Hash: []byte{1}, CreatedAt: ts(1)}},
		Policies:    []PolicyRecord{{ID: 5, Data: "{}", UpdatedAt: ts(1)}},
		Sequences:   map[string]int64{"users": 20, "nodes": 10},
	}
	if err := s.writeTx(ctx, func(tx *sql.Tx) error { return importRows(ctx, tx, data, s.d.raiseSequence) }); err != nil {
		t.Fatal(err)
	}
	u, err := s.CreateUser(ctx, User{Name: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.RegisterNode(ctx, testNode("b", nil), 0)
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "q", Hash: []byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.CreateAPIKey(ctx, APIKey{Prefix: "b", Hash: []byte{1}})
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := s.InsertPolicy(ctx, "{}")
	if err != nil {
		t.Fatal(err)
	}
	if u.ID <= 20 || n.ID <= 12 || k.ID <= 40 || a.ID <= 3 || id <= 5 {
		t.Errorf("new IDs user %d (want > 20), node %d (> 12), key %d (> 40), api key %d (> 3), policy %d (> 5)", u.ID, n.ID, k.ID, a.ID, id)
	}
	// Raising never lowers.
	if err := s.writeTx(ctx, func(tx *sql.Tx) error { return s.d.raiseSequence(ctx, tx, "users", 1) }); err != nil {
		t.Fatal(err)
	}
	if u2, err := s.CreateUser(ctx, User{Name: "carol"}); err != nil || u2.ID <= u.ID {
		t.Errorf("after raising to 1: user %d, %v; want > %d", u2.ID, err, u.ID)
	}
}
