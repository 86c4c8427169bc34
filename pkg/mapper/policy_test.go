package mapper

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// policyWorld is n nodes, node i owned by user "u<i%users>".
func policyWorld(n, users int) ([]*state.Node, map[ids.UserID]*state.User, []policy.Node, []policy.User) {
	var nodes []*state.Node
	var pnodes []policy.Node
	um := map[ids.UserID]*state.User{}
	var pusers []policy.User
	for u := 1; u <= users; u++ {
		um[ids.UserID(u)] = &state.User{ID: ids.UserID(u), Name: fmt.Sprintf("u%d", u)}
		pusers = append(pusers, policy.User{ID: ids.UserID(u), Name: fmt.Sprintf("u%d", u)})
	}
	for i := 1; i <= n; i++ {
		nd := &state.Node{
			ID: ids.NodeID(i), NodeKey: key.NewNode().Public(), MachineKey: key.NewMachine().Public(),
			GivenName: fmt.Sprintf("n%d", i), UserID: ids.UserID(1 + (i-1)%users),
			IPv4: netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}),
		}
		nodes = append(nodes, nd)
		pnodes = append(pnodes, policy.Node{ID: nd.ID, UserID: nd.UserID, IPv4: nd.IPv4})
	}
	return nodes, um, pnodes, pusers
}

func compile(t testing.TB, src string, users []policy.User, nodes []policy.Node) *policy.Compiled {
	t.Helper()
	p, err := policy.Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := policy.Compile(p, users, nodes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPolicyChangeDiffs: u1 -> u2 becomes u1 -> u3. Node 1 (u1) drops node 2
// and gains node 3; node 2 loses node 1 and its filter; node 3 gains both.
func TestPolicyChangeDiffs(t *testing.T) {
	nodes, users, pn, pu := policyWorld(3, 3)
	old := compile(t, `{"acls": [{"action": "accept", "src": ["u1@"], "dst": ["u2@:*"]}]}`, pu, pn)
	cur := compile(t, `{"acls": [{"action": "accept", "src": ["u1@"], "dst": ["u3@:22"]}]}`, pu, pn)
	hub := NewHub(New(Options{}), HubOptions{})
	t.Cleanup(hub.Close)
	sess := map[ids.NodeID]*Session{}
	for _, n := range nodes {
		s := hub.NewSession(n.ID, false, false)
		s.Attach(state.Snapshot{Self: n, Users: users, Policy: old})
		sess[n.ID] = s
	}
	hub.Apply(state.Change{Kind: state.PolicyChanged, Policy: cur, OldPolicy: old, Nodes: nodes, Users: users, At: time.Now()})
	syncHub(hub)
	got := func(id ids.NodeID) tailcfg.MapResponse {
		t.Helper()
		var r tailcfg.MapResponse
		select {
		case f := <-sess[id].queue:
			json.Unmarshal(f.json, &r)
		default:
			t.Fatalf("node %d got nothing", id)
		}
		return r
	}
	peerIDs := func(ns []*tailcfg.Node) []tailcfg.NodeID {
		var out []tailcfg.NodeID
		for _, n := range ns {
			out = append(out, n.ID)
		}
		return out
	}
	r1 := got(1)
	if !slices.Equal(r1.PeersRemoved, []tailcfg.NodeID{2}) || !slices.Equal(peerIDs(r1.PeersChanged), []tailcfg.NodeID{3}) || r1.PacketFilters != nil {
		t.Errorf("node 1: removed %v changed %v filters %v", r1.PeersRemoved, peerIDs(r1.PeersChanged), r1.PacketFilters)
	}
	r2 := got(2)
	if !slices.Equal(r2.PeersRemoved, []tailcfg.NodeID{1}) || r2.PeersChanged != nil || r2.PacketFilters == nil || len(r2.PacketFilters["base"]) != 0 {
		t.Errorf("node 2: removed %v changed %v filters %v", r2.PeersRemoved, peerIDs(r2.PeersChanged), r2.PacketFilters)
	}
	r3 := got(3)
	if r3.PeersRemoved != nil || !slices.Equal(peerIDs(r3.PeersChanged), []tailcfg.NodeID{1}) || len(r3.PacketFilters["base"]) != 1 {
		t.Errorf("node 3: removed %v changed %v filters %v", r3.PeersRemoved, peerIDs(r3.PeersChanged), r3.PacketFilters)
	}
	if len(r3.UserProfiles) != 1 || r3.UserProfiles[0].ID != 1 {
		t.Errorf("node 3 did not get node 1's user profile: %+v", r3.UserProfiles)
	}

	// The same policy again changes nothing: nobody gets a frame.
	hub.Apply(state.Change{Kind: state.PolicyChanged, Policy: cur, OldPolicy: cur, Nodes: nodes, Users: users, At: time.Now()})
	syncHub(hub)
	for id, s := range sess {
		if len(s.queue) != 0 {
			t.Errorf("node %d got a frame for an unchanged policy", id)
		}
	}
}

// benchPolicy is 1,000 rules over 100 users: user i may reach users
// i+1..i+10 on one port each.
func benchPolicy(users int) string {
	src := `{"acls": [`
	for i := 0; i < 1000; i++ {
		from := 1 + i%users
		to := 1 + (i/users+from)%users
		src += fmt.Sprintf(`{"action": "accept", "src": ["u%d@"], "dst": ["u%d@:%d"]},`, from, to, 1000+i)
	}
	return src + `]}`
}

// BenchmarkPolicyChange10k measures one policy change reaching 10,000 map
// sessions: the compile of 1,000 rules for 10,000 nodes, then the hub's
// per-session diff (peers, filter) and queueing of the frames. It reports
// how many sessions got an update.
func BenchmarkPolicyChange10k(b *testing.B) {
	const n, users = 10000, 100
	nodes, um, pn, pu := policyWorld(n, users)
	p0, err := policy.Parse([]byte(benchPolicy(users)))
	if err != nil {
		b.Fatal(err)
	}
	old, _, err := policy.Compile(p0, pu, pn)
	if err != nil {
		b.Fatal(err)
	}
	// The change: one more rule, u1 may reach u50 on port 22.
	src := benchPolicy(users)
	src = src[:len(src)-2] + `{"action": "accept", "src": ["u1@"], "dst": ["u50@:22"]}]}`
	p1, err := policy.Parse([]byte(src))
	if err != nil {
		b.Fatal(err)
	}
	hub := NewHub(New(Options{}), HubOptions{QueueSize: 16})
	b.Cleanup(hub.Close)
	sess := make([]*Session, 0, n)
	for _, nd := range nodes {
		s := hub.NewSession(nd.ID, false, false)
		s.Attach(state.Snapshot{Self: nd, Users: um, Policy: old})
		sess = append(sess, s)
	}
	b.ResetTimer()
	var updated int
	for i := 0; i < b.N; i++ {
		start := time.Now()
		cur, _, err := policy.Compile(p1, pu, pn)
		if err != nil {
			b.Fatal(err)
		}
		compiled := time.Since(start)
		hub.Apply(state.Change{Kind: state.PolicyChanged, Policy: cur, OldPolicy: old, Nodes: nodes, Users: um, At: time.Now()})
		syncHub(hub)
		b.ReportMetric(float64(compiled.Milliseconds()), "compile-ms")
		b.StopTimer()
		updated = 0
		for _, s := range sess {
			for len(s.queue) > 0 {
				<-s.queue
				updated++
			}
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(updated), "sessions-updated")
}

// TestNodeChangeTouchesOnlyAffected: a node change applied incrementally
// (policy.Compiled.Update) reaches only the sessions whose view it
// changes. Policy u1 -> u2. A new u1 node (4) changes node 2's filter (a
// new source) and nothing for node 3 (u3) or node 1 (same user, no rule
// between them). Then node 2 is retagged out of every rule: nodes 1 and 4
// must drop it, and node 3 still hears nothing.
func TestNodeChangeTouchesOnlyAffected(t *testing.T) {
	nodes, users, pn, pu := policyWorld(4, 3)
	nodes[3].UserID, pn[3].UserID = 1, 1 // node 4 belongs to u1
	const src = `{"tagOwners": {"tag:x": ["u1@"]}, "acls": [{"action": "accept", "src": ["u1@"], "dst": ["u2@:*"]}]}`
	c0 := compile(t, src, pu, pn[:3])
	hub := NewHub(New(Options{}), HubOptions{})
	defer hub.Close()
	sess := map[ids.NodeID]*Session{}
	for _, n := range nodes[:3] {
		s := hub.NewSession(n.ID, false, false)
		s.Attach(state.Snapshot{Self: n, Users: users, Policy: c0})
		sess[n.ID] = s
	}
	syncHub(hub)
	drain := func(id ids.NodeID) []tailcfg.MapResponse {
		var out []tailcfg.MapResponse
		for len(sess[id].queue) > 0 {
			var r tailcfg.MapResponse
			json.Unmarshal((<-sess[id].queue).json, &r)
			out = append(out, r)
		}
		return out
	}

	// Node 4 registers.
	c1, aff, _, err := c0.Update(pu, pn, []ids.NodeID{4})
	if err != nil {
		t.Fatal(err)
	}
	if aff.All() || aff.Has(3) || aff.Has(1) || !aff.Has(2) {
		t.Fatalf("affected: all=%v has1=%v has2=%v has3=%v", aff.All(), aff.Has(1), aff.Has(2), aff.Has(3))
	}
	hub.Apply(state.Change{Kind: state.NodeAdded, Node: nodes[3], User: users[1], Policy: c1, At: time.Now()})
	hub.Apply(state.Change{Kind: state.PolicyChanged, Policy: c1, OldPolicy: c0, Nodes: nodes, Users: users,
		Affected: []*policy.Affected{aff}, ChangedNodes: []ids.NodeID{4}, At: time.Now()})
	syncHub(hub)
	if got := drain(3); len(got) != 0 {
		t.Errorf("node 3 (unaffected) got %d frames", len(got))
	}
	if got := drain(1); len(got) != 0 {
		t.Errorf("node 1 (same user, no rule) got %d frames", len(got))
	}
	var filter, peer bool
	for _, r := range drain(2) {
		peer = peer || slices.ContainsFunc(r.PeersChanged, func(n *tailcfg.Node) bool { return n.ID == 4 })
		filter = filter || r.PacketFilters != nil
	}
	if !peer || !filter {
		t.Errorf("node 2: new peer %v, new filter %v; want both", peer, filter)
	}

	// Node 2 is retagged out of every rule.
	n2 := *nodes[1]
	n2.Tags, n2.UserID = []string{"tag:x"}, 0
	pn[1].Tags, pn[1].UserID = []string{"tag:x"}, 0
	nodes[1] = &n2
	c2, aff2, _, err := c1.Update(pu, pn, []ids.NodeID{2})
	if err != nil {
		t.Fatal(err)
	}
	s4 := hub.NewSession(4, false, false)
	s4.Attach(state.Snapshot{Self: nodes[3], Users: users, Policy: c1})
	sess[4] = s4
	hub.Apply(state.Change{Kind: state.NodeUpdated, Node: &n2, Policy: c2, At: time.Now()})
	hub.Apply(state.Change{Kind: state.PolicyChanged, Policy: c2, OldPolicy: c1, Nodes: nodes, Users: users,
		Affected: []*policy.Affected{aff2}, ChangedNodes: []ids.NodeID{2}, At: time.Now()})
	syncHub(hub)
	for _, id := range []ids.NodeID{1, 4} {
		removed := false
		for _, r := range drain(id) {
			removed = removed || slices.Contains(r.PeersRemoved, 2)
			if slices.ContainsFunc(r.PeersChanged, func(n *tailcfg.Node) bool { return n.ID == 2 }) {
				t.Errorf("node %d was sent node 2 it can no longer see", id)
			}
		}
		if !removed {
			t.Errorf("node %d did not drop node 2", id)
		}
	}
	if got := drain(3); len(got) != 0 {
		t.Errorf("node 3 got %d frames for a change that does not concern it", len(got))
	}
}

// BenchmarkNodeChange10k measures one node joining a 10,000-node tailnet
// under 1,000 user-to-user rules: the incremental policy update
// (policy.Compiled.Update) and the hub's round that compares only the
// affected sessions and queues their frames. It reports the update's
// share and how many sessions got a frame.
func BenchmarkNodeChange10k(b *testing.B) {
	const n, users = 10000, 100
	nodes, um, pn, pu := policyWorld(n+1, users)
	base := compile(b, benchPolicy(users), pu, pn[:n])
	hub := NewHub(New(Options{}), HubOptions{QueueSize: 16})
	defer hub.Close()
	sess := make([]*Session, 0, n)
	for _, nd := range nodes[:n] {
		s := hub.NewSession(nd.ID, false, false)
		s.Attach(state.Snapshot{Self: nd, Users: um, Policy: base})
		sess = append(sess, s)
	}
	syncHub(hub)
	newNode := nodes[n]
	b.ResetTimer()
	var updated int
	var upd time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		cur, aff, _, err := base.Update(pu, pn, []ids.NodeID{newNode.ID})
		if err != nil {
			b.Fatal(err)
		}
		upd += time.Since(start)
		hub.Apply(state.Change{Kind: state.NodeAdded, Node: newNode, User: um[newNode.UserID], Policy: cur, At: time.Now()})
		hub.Apply(state.Change{Kind: state.PolicyChanged, Policy: cur, OldPolicy: base, Nodes: nodes, Users: um,
			Affected: []*policy.Affected{aff}, ChangedNodes: []ids.NodeID{newNode.ID}, At: time.Now()})
		syncHub(hub)
		b.StopTimer()
		updated = 0
		for _, s := range sess {
			got := false
			for len(s.queue) > 0 {
				<-s.queue
				s.took(1)
				got = true
			}
			if got {
				updated++
			}
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(upd.Microseconds())/float64(b.N), "update-us")
	b.ReportMetric(float64(updated), "sessions-updated")
}

// TestSelfFrameNotShared: two nodes that see no one (so their views of a
// round are alike) both get a new self node in one round; each session
// gets its own. They used to share one frame, and one node was sent the
// other's self node (its tags, addresses and keys).
func TestSelfFrameNotShared(t *testing.T) {
	nodes, users, pn, pu := policyWorld(2, 2)
	pol := compile(t, `{"acls": []}`, pu, pn)
	hub := NewHub(New(Options{}), HubOptions{})
	defer hub.Close()
	sess := map[ids.NodeID]*Session{}
	for _, n := range nodes {
		s := hub.NewSession(n.ID, false, false)
		s.Attach(state.Snapshot{Self: n, Users: users, Policy: pol})
		sess[n.ID] = s
	}
	syncHub(hub)
	for _, n := range nodes {
		c := *n
		c.Tags = []string{fmt.Sprintf("tag:t%d", n.ID)}
		hub.Apply(state.Change{Kind: state.NodeUpdated, Node: &c, Self: true, Policy: pol, At: time.Now()})
	}
	syncHub(hub)
	for id, s := range sess {
		select {
		case f := <-s.queue:
			var r tailcfg.MapResponse
			if err := json.Unmarshal(f.json, &r); err != nil {
				t.Fatal(err)
			}
			if r.Node == nil || ids.NodeID(r.Node.ID) != id || !slices.Equal(r.Node.Tags, []string{fmt.Sprintf("tag:t%d", id)}) {
				t.Errorf("node %d got self node %+v", id, r.Node)
			}
		default:
			t.Errorf("node %d got nothing", id)
		}
	}
}
