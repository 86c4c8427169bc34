package store

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// testNode returns a minimal valid node whose unique columns derive from
// name.
func testNode(name string, userID *ids.UserID) Node {
	return Node{
		MachineKey:     "mkey:" + name,
		NodeKey:        "nodekey:" + name,
		GivenName:      name,
		Hostname:       name,
		UserID:         userID,
		RegisterMethod: "cli",
	}
}

func TestNodeRoundTrip(t *testing.T) { forEachEngine(t, testNodeRoundTrip) }

func testNodeRoundTrip(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "p", Hash: []byte{1}, UserID: &u.ID, Reusable: true})
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name string
		in   Node
	}{
		{"full", Node{
			MachineKey: "mkey:01", NodeKey: "nodekey:01", DiscoKey: "discokey:01",
			Endpoints: []string{"192.0.2.1:41641", "[2001:db8::1]:41641"},
			Hostinfo:  []byte(`{"Hostname":"laptop","OS":"linux"}`),
			IPv4:      "100.64.0.1", IPv6: "fd7a:115c:a1e0::1",
			Hostname: "laptop", GivenName: "laptop", UserID: &u.ID, RegisterMethod: "authkey",
			Tags: []string{"tag:a"}, AuthKeyID: &key.ID, Ephemeral: true,
			LastSeen: ts(1_700_000_000_500), Expiry: ts(1_900_000_000_000),
			ApprovedRoutes:  []string{"10.0.0.0/8", "0.0.0.0/0"},
			PendingApproval: true,
			CreatedAt:       ts(1_700_000_000_000),
		}},
		// Tagged node with nothing optional: NULL user/key/hostinfo/IPs,
		// zero times, nil lists.
		{"minimal", Node{MachineKey: "mkey:02", NodeKey: "nodekey:02", GivenName: "bare", Tags: []string{"tag:server"}, CreatedAt: ts(1_700_000_000_001)}},
		// A second node without addresses must not collide with the first.
		{"minimal again", Node{MachineKey: "mkey:03", NodeKey: "nodekey:03", GivenName: "bare2", CreatedAt: ts(1_700_000_000_002)}},
	}
	var stored []Node
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := time.Now().Add(-time.Second)
			got, err := s.RegisterNode(ctx, tc.in, 0)
			if err != nil {
				t.Fatal(err)
			}
			if got.ID == 0 || got.UpdatedAt.Before(before) {
				t.Errorf("RegisterNode: ID=%d UpdatedAt=%v", got.ID, got.UpdatedAt)
			}
			want := tc.in
			want.ID, want.UpdatedAt, want.Version = got.ID, got.UpdatedAt, 1
			if !reflect.DeepEqual(got, want) {
				t.Errorf("RegisterNode =\n%+v\nwant\n%+v", got, want)
			}
			if again, err := s.GetNode(ctx, got.ID); err != nil || !reflect.DeepEqual(again, want) {
				t.Errorf("GetNode =\n%+v, %v\nwant\n%+v", again, err, want)
			}
			stored = append(stored, got)
		})
	}
	if len(stored) != len(tests) {
		t.Fatalf("stored %d nodes, want %d", len(stored), len(tests))
	}
	if got, err := s.ListNodes(ctx); err != nil || !reflect.DeepEqual(got, stored) {
		t.Errorf("ListNodes = %+v, %v; want %+v", got, err, stored)
	}

	// Optional NULL columns are really NULL, so UNIQUE ignores them.
	var nullIPs int
	if err := s.read.QueryRowContext(ctx, `SELECT COUNT(*) FROM nodes WHERE ipv4 IS NULL AND ipv6 IS NULL AND hostinfo IS NULL AND user_id IS NULL AND last_seen IS NULL AND expiry IS NULL`).Scan(&nullIPs); err != nil {
		t.Fatal(err)
	}
	if nullIPs != 2 {
		t.Errorf("%d nodes with NULL optional columns, want 2", nullIPs)
	}

	// UpdateNode rewrites everything but CreatedAt, including clearing
	// optional fields.
	upd := stored[0]
	upd.NodeKey = "nodekey:01-rotated"
	upd.DiscoKey = ""
	upd.Endpoints = nil
	upd.Hostinfo = nil
	upd.IPv6 = ""
	upd.UserID = nil
	upd.Tags = []string{"tag:b", "tag:c"}
	upd.AuthKeyID = nil
	upd.Ephemeral = false
	upd.LastSeen = time.Time{}
	upd.Expiry = time.Time{}
	upd.ApprovedRoutes = []string{"192.168.0.0/24"}
	upd.CreatedAt = ts(1) // ignored
	if err := errOf(s.UpdateNode(ctx, upd, 0)); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetNode(ctx, upd.ID)
	if err != nil {
		t.Fatal(err)
	}
	upd.CreatedAt = stored[0].CreatedAt
	if got.UpdatedAt.Before(stored[0].UpdatedAt) {
		t.Errorf("UpdatedAt went backwards: %v < %v", got.UpdatedAt, stored[0].UpdatedAt)
	}
	upd.UpdatedAt = got.UpdatedAt
	upd.Version = 2 // an edit is a new version
	if !reflect.DeepEqual(got, upd) {
		t.Errorf("after UpdateNode =\n%+v\nwant\n%+v", got, upd)
	}

	if err := s.DeleteNode(ctx, upd.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetNode(ctx, upd.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetNode after delete = %v, want ErrNotFound", err)
	}
}

func TestNodeErrors(t *testing.T) { forEachEngine(t, testNodeErrors) }

func testNodeErrors(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	existing := Node{MachineKey: "mkey:1", NodeKey: "nodekey:1", GivenName: "one", IPv4: "100.64.0.1", IPv6: "fd7a::1"}
	first, err := s.RegisterNode(ctx, existing, 0)
	if err != nil {
		t.Fatal(err)
	}
	second, err := s.RegisterNode(ctx, testNode("two", nil), 0)
	if err != nil {
		t.Fatal(err)
	}

	clash := func(mod func(*Node)) Node {
		n := testNode("fresh", nil)
		mod(&n)
		return n
	}
	tests := []struct {
		name    string
		call    func() error
		want    error
		wantMsg string
	}{
		{"node key", func() error {
			_, err := s.RegisterNode(ctx, clash(func(n *Node) { n.NodeKey = "nodekey:1" }), 0)
			return err
		}, ErrConflict, "nodes.node_key"},
		{"given name", func() error {
			_, err := s.RegisterNode(ctx, clash(func(n *Node) { n.GivenName = "one" }), 0)
			return err
		}, ErrConflict, "nodes.given_name"},
		{"ipv4", func() error {
			_, err := s.RegisterNode(ctx, clash(func(n *Node) { n.IPv4 = "100.64.0.1" }), 0)
			return err
		}, ErrConflict, "nodes.ipv4"},
		{"ipv6", func() error {
			_, err := s.RegisterNode(ctx, clash(func(n *Node) { n.IPv6 = "fd7a::1" }), 0)
			return err
		}, ErrConflict, "nodes.ipv6"},
		{"unknown user", func() error {
			_, err := s.RegisterNode(ctx, clash(func(n *Node) { n.UserID = ptr[ids.UserID](77) }), 0)
			return err
		}, ErrNotFound, "does not exist"},
		{"unknown key", func() error {
			_, err := s.RegisterNode(ctx, testNode("fresh", nil), 77)
			return err
		}, ErrNotFound, "pre-auth key 77"},
		{"update to taken ip", func() error {
			n := second
			n.IPv4 = "100.64.0.1"
			return errOf(s.UpdateNode(ctx, n, 0))
		}, ErrConflict, "nodes.ipv4"},
		{"update missing", func() error {
			n := second
			n.ID = 999
			n.MachineKey, n.NodeKey, n.GivenName = "mkey:x", "nodekey:x", "x"
			return errOf(s.UpdateNode(ctx, n, 0))
		}, ErrNotFound, "update node 999"},
		{"get missing", func() error { _, err := s.GetNode(ctx, 999); return err }, ErrNotFound, "999"},
		{"delete missing", func() error { return s.DeleteNode(ctx, 999) }, ErrNotFound, "999"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("err = %v, want %v mentioning %q", err, tc.want, tc.wantMsg)
			}
		})
	}
	// Failed writes left nothing behind.
	nodes, err := s.ListNodes(ctx)
	if err != nil || len(nodes) != 2 || nodes[0].ID != first.ID {
		t.Fatalf("ListNodes after failures = %+v, %v", nodes, err)
	}
}

func TestSingleUseKeyRace(t *testing.T) { forEachEngine(t, testSingleUseKeyRace) }

func testSingleUseKeyRace(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	key, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "once", Hash: []byte{1}, UserID: &u.ID})
	if err != nil {
		t.Fatal(err)
	}

	const racers = 20
	var (
		wg        sync.WaitGroup
		start     = make(chan struct{})
		errs      = make([]error, racers)
		succeeded = make([]Node, racers)
	)
	for i := range racers {
		wg.Go(func() {
			<-start
			n := testNode(fmt.Sprintf("racer-%d", i), &u.ID)
			n.AuthKeyID = &key.ID
			succeeded[i], errs[i] = s.RegisterNode(ctx, n, key.ID)
		})
	}
	close(start)
	wg.Wait()

	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
		case errors.Is(err, ErrKeyUsed):
		default:
			t.Errorf("racer %d: %v, want nil or ErrKeyUsed", i, err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d registrations succeeded with a single-use key, want exactly 1", wins)
	}
	nodes, err := s.ListNodes(ctx)
	if err != nil || len(nodes) != 1 {
		t.Fatalf("ListNodes = %d nodes, %v; want 1 (losers must roll back)", len(nodes), err)
	}
	k, err := s.GetPreAuthKey(ctx, key.ID)
	if err != nil || !k.Used {
		t.Fatalf("key after race = %+v, %v; want Used", k, err)
	}

	// Re-registering an existing node with the spent key fails too and
	// leaves the node untouched.
	n := nodes[0]
	n.Hostname = "changed"
	if err := errOf(s.UpdateNode(ctx, n, key.ID)); !errors.Is(err, ErrKeyUsed) {
		t.Fatalf("UpdateNode with used key = %v, want ErrKeyUsed", err)
	}
	if got, err := s.GetNode(ctx, n.ID); err != nil || got.Hostname == "changed" {
		t.Fatalf("node after failed UpdateNode = %+v, %v", got, err)
	}
	// With a fresh key the update goes through and consumes it.
	key2, err := s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: "once-2", Hash: []byte{2}, UserID: &u.ID})
	if err != nil {
		t.Fatal(err)
	}
	if err := errOf(s.UpdateNode(ctx, n, key2.ID)); err != nil {
		t.Fatalf("UpdateNode with fresh key: %v", err)
	}
	if k, err := s.GetPreAuthKey(ctx, key2.ID); err != nil || !k.Used {
		t.Fatalf("fresh key after UpdateNode = %+v, %v; want Used", k, err)
	}
}

func TestSetLastSeen(t *testing.T) { forEachEngine(t, testSetLastSeen) }

func testSetLastSeen(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	var nodeIDs []ids.NodeID
	for i := range 50 {
		n, err := s.RegisterNode(ctx, testNode(fmt.Sprintf("n%d", i), nil), 0)
		if err != nil {
			t.Fatal(err)
		}
		nodeIDs = append(nodeIDs, n.ID)
	}

	tests := []struct {
		name  string
		batch map[ids.NodeID]time.Time
	}{
		{"empty", nil},
		{"all", func() map[ids.NodeID]time.Time {
			m := map[ids.NodeID]time.Time{}
			for i, id := range nodeIDs {
				m[id] = ts(1_700_000_000_000 + int64(i))
			}
			return m
		}()},
		{"some plus deleted id", map[ids.NodeID]time.Time{nodeIDs[0]: ts(1_800_000_000_000), nodeIDs[1]: ts(1_800_000_000_001), 99999: ts(5)}},
		{"clear one", map[ids.NodeID]time.Time{nodeIDs[2]: {}}},
	}
	want := map[ids.NodeID]time.Time{}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.SetLastSeen(ctx, tc.batch); err != nil {
				t.Fatal(err)
			}
			for id, at := range tc.batch {
				if id != 99999 {
					want[id] = at
				}
			}
			nodes, err := s.ListNodes(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range nodes {
				if !n.LastSeen.Equal(want[n.ID]) {
					t.Errorf("node %d LastSeen = %v, want %v", n.ID, n.LastSeen, want[n.ID])
				}
			}
		})
	}
}

// TestUpdateNodes: a batch update (more than one transaction's worth)
// writes every node still there, skips one deleted meanwhile, and leaves
// the rest of each row as it was.
func TestUpdateNodes(t *testing.T) { forEachEngine(t, testUpdateNodes) }

func testUpdateNodes(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	const n = 1005
	var nodes []Node
	for i := range n {
		got, err := s.RegisterNode(ctx, Node{
			MachineKey: fmt.Sprintf("mkey:%d", i), NodeKey: fmt.Sprintf("nodekey:%d", i),
			GivenName: fmt.Sprintf("n%d", i), Tags: []string{"tag:x"}, CreatedAt: ts(1_700_000_000_000),
		}, 0)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, got)
	}
	if err := s.DeleteNode(ctx, nodes[7].ID); err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		nodes[i].Endpoints = []string{fmt.Sprintf("192.0.2.1:%d", 1000+i)}
		nodes[i].LastSeen = ts(1_800_000_000_000 + int64(i))
	}
	if err := s.UpdateNodes(ctx, nodes); err != nil {
		t.Fatalf("UpdateNodes: %v", err)
	}
	for _, i := range []int{0, 6, 8, 999, 1000, n - 1} {
		got, err := s.GetNode(ctx, nodes[i].ID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Endpoints, nodes[i].Endpoints) || !got.LastSeen.Equal(nodes[i].LastSeen) || got.GivenName != nodes[i].GivenName {
			t.Errorf("node %d after UpdateNodes: endpoints %v, last seen %v, name %q", i, got.Endpoints, got.LastSeen, got.GivenName)
		}
	}
	if _, err := s.GetNode(ctx, nodes[7].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("the deleted node came back: %v", err)
	}
}

func TestRegisterNodes(t *testing.T) { forEachEngine(t, testRegisterNodes) }

func testRegisterNodes(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	batch := func(prefix string, n int) []Node {
		var out []Node
		for i := range n {
			nd := testNode(fmt.Sprintf("%s-%03d", prefix, i), &u.ID)
			nd.IPv4 = fmt.Sprintf("100.%d.%d.%d", 64+len(prefix), i/256, i%256)
			nd.Tags = []string{"tag:" + prefix}
			out = append(out, nd)
		}
		return out
	}
	count := func() int {
		nodes, err := s.ListNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(nodes)
	}

	tests := []struct {
		name    string
		nodes   []Node
		want    error // nil: all stored
		wantMsg string
	}{
		{"one", batch("a", 1), nil, ""},
		{"a few", batch("bb", 7), nil, ""},
		// More than one statement's worth: one transaction.
		{"more than a chunk", batch("ccc", registerChunk*2+3), nil, ""},
		{"a duplicate stores none", append(batch("dddd", 3), testNode("a-000", &u.ID)), ErrConflict, "already exists"},
		{"an unknown user stores none", func() []Node {
			b := batch("eeeee", registerChunk+1)
			b[registerChunk].UserID = ptr[ids.UserID](77)
			return b
		}(), ErrNotFound, "does not exist"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := count()
			got, err := s.RegisterNodes(ctx, tc.nodes)
			if tc.want != nil {
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("err = %v; want %v mentioning %q", err, tc.want, tc.wantMsg)
				}
				if after := count(); after != before {
					t.Errorf("a failed batch stored %d nodes", after-before)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.nodes) {
				t.Fatalf("got %d nodes; want %d", len(got), len(tc.nodes))
			}
			for i, n := range got {
				in := tc.nodes[i]
				if n.ID == 0 || n.MachineKey != in.MachineKey || n.IPv4 != in.IPv4 || !reflect.DeepEqual(n.Tags, in.Tags) || n.CreatedAt.IsZero() {
					t.Errorf("node %d = %+v; want %+v with an ID and a creation time", i, n, in)
				}
				stored, err := s.GetNode(ctx, n.ID)
				if err != nil || stored.MachineKey != in.MachineKey {
					t.Errorf("node %d read back: %+v, %v", n.ID, stored, err)
				}
			}
			if after := count(); after != before+len(tc.nodes) {
				t.Errorf("stored %d nodes; want %d", after-before, len(tc.nodes))
			}
		})
	}
}

func TestNodeApproval(t *testing.T) { forEachEngine(t, testNodeApproval) }

// testNodeApproval: the pending-approval flag is written by every insert
// and update path, and a row written without it (a node that existed
// before migration 0005, or one imported from Headscale) is approved.
func testNodeApproval(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	pending := testNode("pending", nil)
	pending.Tags = []string{"tag:x"}
	pending.PendingApproval = true
	one, err := s.RegisterNode(ctx, pending, 0)
	if err != nil {
		t.Fatal(err)
	}
	batch := []Node{testNode("b1", nil), testNode("b2", nil)}
	batch[0].Tags, batch[1].Tags = []string{"tag:x"}, []string{"tag:x"}
	batch[1].PendingApproval = true
	got, err := s.RegisterNodes(ctx, batch)
	if err != nil {
		t.Fatal(err)
	}
	if !one.PendingApproval || got[0].PendingApproval || !got[1].PendingApproval {
		t.Errorf("after insert: pending %v, %v, %v; want true, false, true", one.PendingApproval, got[0].PendingApproval, got[1].PendingApproval)
	}
	one.PendingApproval = false
	if err := errOf(s.UpdateNode(ctx, one, 0)); err != nil {
		t.Fatal(err)
	}
	got[0].PendingApproval = true
	if err := s.UpdateNodes(ctx, got[:1]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.write.ExecContext(ctx, `INSERT INTO nodes (machine_key, node_key, given_name, created_at, updated_at) VALUES ('mkey:old', 'nodekey:old', 'old', 1, 1)`); err != nil {
		t.Fatal(err)
	}
	all, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"pending": false, "b1": true, "b2": true, "old": false}
	for _, n := range all {
		if w, ok := want[n.GivenName]; !ok || n.PendingApproval != w {
			t.Errorf("node %s: pending approval %v, want %v", n.GivenName, n.PendingApproval, w)
		}
		delete(want, n.GivenName)
	}
	if len(want) > 0 {
		t.Errorf("nodes missing: %v", want)
	}
}
