package mapper

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// policyWorld is n nodes, node i owned by user "u<i%users>".
func policyWorld(n, users int) ([]*state.Node, map[uint64]*state.User, []policy.Node, []policy.User) {
	var nodes []*state.Node
	var pnodes []policy.Node
	um := map[uint64]*state.User{}
	var pusers []policy.User
	for u := 1; u <= users; u++ {
		um[uint64(u)] = &state.User{ID: uint64(u), Name: fmt.Sprintf("u%d", u)}
		pusers = append(pusers, policy.User{ID: uint64(u), Name: fmt.Sprintf("u%d", u)})
	}
	for i := 1; i <= n; i++ {
		nd := &state.Node{
			ID: uint64(i), NodeKey: key.NewNode().Public(), MachineKey: key.NewMachine().Public(),
			GivenName: fmt.Sprintf("n%d", i), UserID: uint64(1 + (i-1)%users),
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
	sess := map[uint64]*Session{}
	for _, n := range nodes {
		s := hub.NewSession(n.ID, false, false)
		s.Attach(state.Snapshot{Self: n, Users: users, Policy: old})
		sess[n.ID] = s
	}
	hub.Apply(state.Change{Kind: state.PolicyChanged, Policy: cur, OldPolicy: old, Nodes: nodes, Users: users, At: time.Now()})
	syncHub(hub)
	got := func(id uint64) tailcfg.MapResponse {
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
	ids := func(ns []*tailcfg.Node) []tailcfg.NodeID {
		var out []tailcfg.NodeID
		for _, n := range ns {
			out = append(out, n.ID)
		}
		return out
	}
	r1 := got(1)
	if !slices.Equal(r1.PeersRemoved, []tailcfg.NodeID{2}) || !slices.Equal(ids(r1.PeersChanged), []tailcfg.NodeID{3}) || r1.PacketFilters != nil {
		t.Errorf("node 1: removed %v changed %v filters %v", r1.PeersRemoved, ids(r1.PeersChanged), r1.PacketFilters)
	}
	r2 := got(2)
	if !slices.Equal(r2.PeersRemoved, []tailcfg.NodeID{1}) || r2.PeersChanged != nil || r2.PacketFilters == nil || len(r2.PacketFilters["base"]) != 0 {
		t.Errorf("node 2: removed %v changed %v filters %v", r2.PeersRemoved, ids(r2.PeersChanged), r2.PacketFilters)
	}
	r3 := got(3)
	if r3.PeersRemoved != nil || !slices.Equal(ids(r3.PeersChanged), []tailcfg.NodeID{1}) || len(r3.PacketFilters["base"]) != 1 {
		t.Errorf("node 3: removed %v changed %v filters %v", r3.PeersRemoved, ids(r3.PeersChanged), r3.PacketFilters)
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
