package mapper

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
	"tailscale.com/util/zstdframe"
)

func TestMergePatch(t *testing.T) {
	on, off := true, false
	tests := []struct {
		name string
		a, b tailcfg.PeerChange
		want tailcfg.PeerChange
	}{
		{"newer wins", tailcfg.PeerChange{DERPRegion: 1, Online: &on}, tailcfg.PeerChange{DERPRegion: 2, Online: &off}, tailcfg.PeerChange{DERPRegion: 2, Online: &off}},
		{"older kept", tailcfg.PeerChange{DERPRegion: 1, Cap: 5}, tailcfg.PeerChange{Online: &on}, tailcfg.PeerChange{DERPRegion: 1, Cap: 5, Online: &on}},
	}
	for _, tt := range tests {
		got := mergePatch(&tt.a, &tt.b)
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(tt.want)
		if !bytes.Equal(gj, wj) {
			t.Errorf("%s: got %s, want %s", tt.name, gj, wj)
		}
	}
}

// TestRoundCoalesces: changes recorded while the hub is between rounds
// reach each session as one frame carrying only the outcome per node, and
// a node's own session never sees itself as a peer.
func TestRoundCoalesces(t *testing.T) {
	users := map[ids.UserID]*state.User{1: {ID: 1, Name: "u"}}
	n1, n2, n3, n4 := testNode(1), testNode(2), testNode(3), testNode(4)
	hub := NewHub(New(Options{}), HubOptions{MinRoundGap: time.Hour})
	defer hub.Close()
	s1 := hub.NewSession(1, false, false)
	s1.Attach(state.Snapshot{Self: n1, Peers: []*state.Node{n2, n3}, Users: users})
	syncHub(hub) // the first round runs at once; the next waits an hour

	ep := func(port uint16) []netipAddrPort { return []netipAddrPort{addrPort(port)} }
	// Node 2 patched twice, node 3 updated then patched, node 4 added,
	// node 1 (self) updated, and a session for node 4 attaching halfway.
	hub.Apply(state.Change{Kind: state.NodePatched, Node: n2, At: time.Now(), Patch: &tailcfg.PeerChange{NodeID: 2, Endpoints: ep(1)}})
	n3b := *n3
	n3b.Hostname = "three"
	hub.Apply(state.Change{Kind: state.NodeUpdated, Node: &n3b, At: time.Now()})
	hub.Apply(state.Change{Kind: state.NodeAdded, Node: n4, User: users[1], At: time.Now()})
	s4 := hub.NewSession(4, false, false)
	s4.Attach(state.Snapshot{Self: n4, Peers: []*state.Node{n1, n2, &n3b}, Users: users})
	n3c := n3b
	n3c.HomeDERP = 7
	hub.Apply(state.Change{Kind: state.NodePatched, Node: &n3c, At: time.Now(), Patch: &tailcfg.PeerChange{NodeID: 3, DERPRegion: 7}})
	hub.Apply(state.Change{Kind: state.NodePatched, Node: n2, At: time.Now(), Patch: &tailcfg.PeerChange{NodeID: 2, Endpoints: ep(2)}})
	n1b := *n1
	n1b.Hostname = "me"
	hub.Apply(state.Change{Kind: state.NodeUpdated, Node: &n1b, Self: true, At: time.Now()})
	// Nothing moves until the next round.
	if len(s1.queue) != 0 {
		t.Fatalf("a frame went out before the round")
	}
	syncHub(hub)

	if len(s1.queue) != 1 {
		t.Fatalf("session 1 got %d frames, want 1", len(s1.queue))
	}
	var r1 tailcfg.MapResponse
	json.Unmarshal((<-s1.queue).json, &r1)
	if r1.Node == nil || r1.Node.Name == "" {
		t.Errorf("session 1 lacks its new self node")
	}
	var changed []tailcfg.NodeID
	for _, p := range r1.PeersChanged {
		changed = append(changed, p.ID)
		if p.ID == 3 && p.HomeDERP != 7 {
			t.Errorf("node 3 sent without its later patch: HomeDERP %d", p.HomeDERP)
		}
	}
	if len(changed) != 2 || changed[0] != 3 || changed[1] != 4 {
		t.Errorf("PeersChanged = %v, want [3 4]", changed)
	}
	if len(r1.PeersChangedPatch) != 1 || r1.PeersChangedPatch[0].NodeID != 2 || r1.PeersChangedPatch[0].Endpoints[0].Port() != 2 {
		t.Errorf("patches = %+v, want one merged patch for node 2 with the newer endpoint", r1.PeersChangedPatch)
	}
	// Session 4 attached after node 3's update and node 4's addition:
	// it gets the later changes only, never itself as a peer.
	if len(s4.queue) != 1 {
		t.Fatalf("session 4 got %d frames, want 1", len(s4.queue))
	}
	var r4 tailcfg.MapResponse
	json.Unmarshal((<-s4.queue).json, &r4)
	for _, p := range r4.PeersChanged {
		if p.ID != 1 {
			t.Errorf("session 4 got peer %d in PeersChanged; only node 1 changed after its snapshot", p.ID)
		}
	}
	if len(r4.PeersChangedPatch) != 2 {
		t.Errorf("session 4 patches = %+v, want nodes 3 and 2", r4.PeersChangedPatch)
	}
}

// TestFullMapZstd: the full map built from shared compressed runs decodes
// to exactly the uncompressed full map, and runs are reused across
// sessions except the one holding the session's own node.
func TestFullMapZstd(t *testing.T) {
	users := map[ids.UserID]*state.User{1: {ID: 1, Name: "u"}}
	var nodes []*state.Node
	for id := ids.NodeID(1); id <= 300; id++ {
		nodes = append(nodes, testNode(id))
	}
	hub := NewHub(New(Options{BaseDomain: "ts.test"}), HubOptions{})
	defer hub.Close()
	fixed := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	hub.opts.Now = func() time.Time { return fixed }
	for _, selfID := range []int{0, 150, 299} {
		var peers []*state.Node
		for i, n := range nodes {
			if i != selfID {
				peers = append(peers, n)
			}
		}
		snap := state.Snapshot{Self: nodes[selfID], Peers: peers, Users: users}
		z := hub.FullMapZstd(snap)
		got, err := zstdframe.AppendDecode(nil, z)
		if err != nil {
			t.Fatal(err)
		}
		want := hub.FullMapJSON(snap)
		if !bytes.Equal(got, want) {
			t.Fatalf("self %d: decoded zstd map differs from the JSON map", selfID)
		}
		var m tailcfg.MapResponse
		if err := json.Unmarshal(got, &m); err != nil || len(m.Peers) != 299 {
			t.Fatalf("self %d: %v, %d peers", selfID, err, len(m.Peers))
		}
	}
	hub.chunks.mu.Lock()
	runs := len(hub.chunks.runs)
	hub.chunks.mu.Unlock()
	if runs != 3 {
		t.Errorf("%d runs cached, want 3", runs)
	}
}

type netipAddrPort = netip.AddrPort

func addrPort(port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), port)
}
