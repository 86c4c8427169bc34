package mapper

import (
	"maps"
	"slices"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
)

// TestDeviceApprovalLive: with node.require_approval, a node waiting for
// approval gets a self node with MachineAuthorized false and no peers,
// and no session has it as a peer; approving it brings both sides, over
// live sessions that match fresh maps throughout. It holds without a
// policy, with ACLs and without.
func TestDeviceApprovalLive(t *testing.T) {
	for _, tc := range []struct{ name, policy string }{
		{"no policy", ""},
		{"acls", `{"tagOwners": {"tag:server": ["alice@"]}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`},
		{"no acls", `{"tagOwners": {"tag:server": ["alice@"]}}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newLiveWorld(t, liveOptions{requireApproval: true})
			if tc.policy != "" {
				if err := w.setPolicy(mustPolicy(t, tc.policy)); err != nil {
					t.Fatal(err)
				}
			}
			srv, err := w.register("srv", "", []string{"tag:server"})
			if err != nil {
				t.Fatal(err)
			}
			laptop, err := w.register("laptop", "alice", nil)
			if err != nil {
				t.Fatal(err)
			}
			phone, err := w.register("phone", "bob", nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range []ids.NodeID{srv.ID, laptop.ID, phone.ID} {
				if err := w.connect(id, false); err != nil {
					t.Fatal(err)
				}
			}
			w.check("registered")
			view := func(id ids.NodeID) (authorized bool, peers []tailcfg.NodeID) {
				t.Helper()
				for _, s := range w.sess {
					if s.id == id {
						s.w.mu.Lock()
						defer s.w.mu.Unlock()
						return s.w.view.self != nil && s.w.view.self.MachineAuthorized, slices.Sorted(maps.Keys(s.w.view.peers))
					}
				}
				t.Fatalf("no session of node %d", id)
				return false, nil
			}
			want := func(id ids.NodeID, authorized bool, peers ...ids.NodeID) {
				t.Helper()
				var wantPeers []tailcfg.NodeID
				for _, p := range peers {
					wantPeers = append(wantPeers, tailcfg.NodeID(p))
				}
				if a, p := view(id); a != authorized || !slices.Equal(p, wantPeers) {
					t.Errorf("node %d: authorized %v, peers %v; want %v, %v", id, a, p, authorized, wantPeers)
				}
			}
			want(srv.ID, true)
			want(laptop.ID, false)
			want(phone.ID, false)

			if _, err := w.st.ApproveNode(w.ctx, laptop.ID); err != nil {
				t.Fatal(err)
			}
			w.check("laptop approved")
			want(srv.ID, true, laptop.ID)
			want(laptop.ID, true, srv.ID)
			want(phone.ID, false)

			// The waiting node's own changes reach no one.
			if err := w.st.ApplyMapUpdate(phone.ID, state.MapUpdate{Hostinfo: &tailcfg.Hostinfo{Hostname: "phone2"}}); err != nil {
				t.Fatal(err)
			}
			w.check("waiting node changed")
			want(srv.ID, true, laptop.ID)

			if _, err := w.st.ApproveNode(w.ctx, phone.ID); err != nil {
				t.Fatal(err)
			}
			w.check("phone approved")
			want(srv.ID, true, laptop.ID, phone.ID)
			want(laptop.ID, true, srv.ID, phone.ID)
			want(phone.ID, true, srv.ID, laptop.ID)
		})
	}
}
