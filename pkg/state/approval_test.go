package state

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// openState opens a State on st, as a server start with
// node.require_approval set to require does.
func openState(t *testing.T, st *store.Store, require bool) *State {
	t.Helper()
	alloc := ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), ipalloc.Sequential)
	s, err := New(context.Background(), Options{Store: st, Alloc: alloc, RequireApproval: require})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// peersOf returns the IDs of node id's peers in a new session's snapshot.
func peersOf(s *State, id ids.NodeID) []ids.NodeID {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ids.NodeID
	for _, p := range s.snapshotLocked(id).Peers {
		out = append(out, p.ID)
	}
	return out
}

// TestDeviceApproval: with node.require_approval, a node registered with
// a plain pre-auth key or interactively has no peers and is nobody's peer
// until ApproveNode; a tagged key skips approval; nodes that existed before
// the setting was turned on are approved; approval survives a restart and
// re-registration. It holds without a policy, with ACLs and without.
func TestDeviceApproval(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy string
	}{
		{"no policy", ""},
		{"acls", `{"tagOwners": {"tag:server": ["alice@"]}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`},
		{"no acls", `{"tagOwners": {"tag:server": ["alice@"]}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			st, err := store.Open(ctx, testStoreOptions(t))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			usePolicy := func(s *State) {
				if tc.policy == "" {
					return
				}
				p, err := policy.Parse([]byte(tc.policy))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s.SetPolicy(p, true); err != nil {
					t.Fatal(err)
				}
			}

			// Before the setting: an ordinary node.
			s := openState(t, st, false)
			usePolicy(s)
			alice, err := s.CreateUser(ctx, store.User{Name: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			userKey := store.PreAuthKey{UserID: &alice.ID, Reusable: true}
			oldMachine := key.NewMachine().Public()
			register := func(s *State, m key.MachinePublic, name string, k store.PreAuthKey) *Node {
				t.Helper()
				n, err := s.RegisterWithKey(ctx, RegisterParams{Machine: m, NodeKey: key.NewNode().Public(), Hostinfo: &tailcfg.Hostinfo{Hostname: name}, Key: k})
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
			old := register(s, oldMachine, "old", userKey)
			if old.PendingApproval {
				t.Fatal("a node registered without node.require_approval waits for approval")
			}

			// The setting turned on (a restart).
			s = openState(t, st, true)
			usePolicy(s)
			log := &changeLog{}
			s.SetSink(log)
			newMachine := key.NewMachine().Public()
			fresh := register(s, newMachine, "fresh", userKey)
			srv := register(s, key.NewMachine().Public(), "srv", store.PreAuthKey{Reusable: true, Tags: []string{"tag:server"}})
			web, err := s.RegisterInteractive(ctx, InteractiveParams{Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(), Hostinfo: &tailcfg.Hostinfo{Hostname: "web"}, User: alice.ID})
			if err != nil {
				t.Fatal(err)
			}
			if !fresh.PendingApproval || !web.PendingApproval || srv.PendingApproval {
				t.Fatalf("pending approval: key %v, interactive %v, tagged key %v; want true, true, false", fresh.PendingApproval, web.PendingApproval, srv.PendingApproval)
			}
			if n, _ := s.Node(old.ID); n.PendingApproval {
				t.Fatal("a node that existed before the setting was turned on waits for approval")
			}
			wantPeers := func(id ids.NodeID, want ...ids.NodeID) {
				t.Helper()
				if got := peersOf(s, id); !slices.Equal(got, want) {
					t.Errorf("node %d's peers: %v, want %v", id, got, want)
				}
			}
			wantPeers(fresh.ID)
			wantPeers(web.ID)
			wantPeers(old.ID, srv.ID)
			wantPeers(srv.ID, old.ID)
			for _, c := range log.take() {
				if c.Kind == NodeAdded && c.Node.ID != srv.ID && (c.CanSee(old.ID, c.Node.ID) || c.CanSee(srv.ID, c.Node.ID)) {
					t.Errorf("node %d, waiting for approval, is announced to its would-be peers", c.Node.ID)
				}
			}

			// Re-registration keeps the node as it was.
			if n := register(s, newMachine, "fresh", userKey); !n.PendingApproval {
				t.Error("re-registration approved a node waiting for approval")
			}
			if n := register(s, oldMachine, "old", userKey); n.PendingApproval {
				t.Error("re-registration of an approved node made it wait for approval")
			}
			// A waiting machine registered again with a tagged key is
			// approved, as at a first registration with one.
			lateMachine := key.NewMachine().Public()
			if n := register(s, lateMachine, "late", userKey); !n.PendingApproval {
				t.Fatal("late does not wait")
			}
			late := register(s, lateMachine, "late", store.PreAuthKey{Reusable: true, Tags: []string{"tag:server"}})
			if late.PendingApproval {
				t.Error("re-registration with a tagged key left the node waiting")
			}
			wantPeers(late.ID, old.ID, srv.ID)
			wantPeers(old.ID, srv.ID, late.ID)
			if err := s.DeleteNode(ctx, late.ID); err != nil {
				t.Fatal(err)
			}
			log.take()

			got, err := s.ApproveNode(ctx, fresh.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.PendingApproval {
				t.Fatal("ApproveNode returned a node still waiting")
			}
			wantPeers(fresh.ID, old.ID, srv.ID)
			wantPeers(old.ID, fresh.ID, srv.ID)
			wantPeers(web.ID)
			var selfUpdate, policyChange bool
			for _, c := range log.take() {
				switch {
				case c.Kind == NodeUpdated && c.Node.ID == fresh.ID && c.Self:
					selfUpdate = !c.Node.PendingApproval && c.CanSee(old.ID, fresh.ID)
				case c.Kind == PolicyChanged:
					// One node's change: sinks compare peer sets for it only.
					policyChange = slices.Equal(c.ChangedNodes, []ids.NodeID{fresh.ID})
				}
			}
			if !selfUpdate || !policyChange {
				t.Errorf("approval emitted: node update with self and visible %v, policy change for that node only %v", selfUpdate, policyChange)
			}
			if _, err := s.ApproveNode(ctx, fresh.ID); err != nil {
				t.Errorf("approving an approved node: %v", err)
			}
			if _, err := s.ApproveNode(ctx, 999); err == nil {
				t.Error("approving an unknown node succeeded")
			}

			// Both survive a restart, with the setting on or off.
			for _, require := range []bool{true, false} {
				s = openState(t, st, require)
				usePolicy(s)
				if n, _ := s.Node(fresh.ID); n.PendingApproval {
					t.Errorf("require %v: the approved node waits again after a restart", require)
				}
				if n, _ := s.Node(web.ID); !n.PendingApproval {
					t.Errorf("require %v: the waiting node is approved by a restart", require)
				}
				wantPeers(web.ID)
				wantPeers(old.ID, fresh.ID, srv.ID)
			}
		})
	}
}
