package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
)

var updateOpts = CompileOptions{ServerURL: "https://hs.example.com"}

// nodeView renders everything a session of node id receives from c.
func nodeView(c *Compiled, id ids.NodeID) string {
	return fmt.Sprintf("filter %s\nkey %d\nssh %s\ncaps %v %s\npeers %v\n",
		js(c.Filter(id)), c.FilterKey(id), js(c.SSH(id)), c.NodeCapabilities(id), js(c.NodeCapMap(id)), c.Peers(id))
}

// fullView renders every query's answer for the given nodes (and an
// unknown one): per-node views, CanSee for every pair, and RunTests.
func fullView(c *Compiled, nodeList []ids.NodeID) string {
	nodeList = append(slices.Sorted(slices.Values(nodeList)), 999)
	var b strings.Builder
	for _, id := range nodeList {
		b.WriteString("node " + id.String() + "\n" + nodeView(c, id) + "cansee")
		for _, o := range nodeList {
			if c.CanSee(id, o) {
				fmt.Fprintf(&b, " %d", o)
			}
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "tests %v\n", c.RunTests())
	return b.String()
}

func nodeIDs(nodes []Node) []ids.NodeID {
	out := make([]ids.NodeID, len(nodes))
	for i, n := range nodes {
		out[i] = n.ID
	}
	return out
}

// mutate applies one to three random changes to a copy of nodes and
// returns it with the changed IDs.
func mutate(rng *rand.Rand, nodes []Node) ([]Node, []ids.NodeID) {
	nodes = slices.Clone(nodes)
	var changed []ids.NodeID
	for range 1 + rng.IntN(3)*rng.IntN(2) {
		op := rng.IntN(9)
		if len(nodes) == 0 {
			op = 0
		}
		switch op {
		case 0, 1: // add
			id := ids.NodeID(1 + rng.IntN(60))
			if rng.IntN(3) == 0 {
				id = ids.NodeID(100 + rng.IntN(1000))
			}
			if slices.ContainsFunc(nodes, func(n Node) bool { return n.ID == id }) {
				continue
			}
			nodes = append(nodes, genNode(rng, id))
			changed = append(changed, id)
			continue
		case 2: // remove
			k := rng.IntN(len(nodes))
			changed = append(changed, nodes[k].ID)
			nodes = slices.Delete(nodes, k, k+1)
			continue
		}
		k := rng.IntN(len(nodes))
		n := nodes[k]
		switch op {
		case 3: // retag or new owner
			genRetag(rng, &n)
		case 4: // new owner, untagged
			n.Tags = nil
			n.UserID = ids.UserID(1 + rng.IntN(len(genUsers)))
		case 5: // new addresses
			m := genNode(rng, n.ID)
			n.IPv4, n.IPv6 = m.IPv4, m.IPv6
		case 6: // new approved routes
			genReroute(rng, &n)
		case 7: // hostname only
			n.Hostname += "x"
		case 8: // listed, unchanged
		}
		n.Tags = slices.Clone(n.Tags)
		nodes[k] = n
		changed = append(changed, n.ID)
	}
	rng.Shuffle(len(nodes), func(i, j int) { nodes[i], nodes[j] = nodes[j], nodes[i] })
	return nodes, changed
}

// TestUpdateMatchesCompile is the property test for Update: over random
// policies and random sequences of node changes, each step's result must
// answer every query exactly like a full compilation, leave the previous
// compilation unchanged, and report every node whose view changed.
func TestUpdateMatchesCompile(t *testing.T) {
	seeds := 400
	if testing.Short() {
		seeds = 60
	}
	if s := os.Getenv("POLICY_UPDATE_SEEDS"); s != "" {
		seeds, _ = strconv.Atoi(s)
	}
	seed0, _ := strconv.Atoi(os.Getenv("POLICY_UPDATE_SEED0"))
	steps := 0
	for seed := seed0; seed < seed0+seeds; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 99))
		maxNodes := 14
		if seed%10 == 9 {
			maxNodes = 150 // node sets past the "wild unit" threshold
		}
		src, pol, nodes := genCase(rng, maxNodes)
		if rng.IntN(12) == 0 {
			pol, src = nil, "(no policy)"
		}
		users := genUsers
		c, _, err := CompileWithOptions(pol, users, nodes, updateOpts)
		if err != nil {
			continue
		}
		for step := range 10 {
			// Warm some caches first: they are shared with the result.
			for _, n := range nodes {
				if rng.IntN(2) == 0 {
					c.Filter(n.ID)
					c.SSH(n.ID)
					c.Peers(n.ID)
				}
			}
			before := fullView(c, nodeIDs(nodes))
			next, changed := mutate(rng, nodes)
			nextUsers := users
			if rng.IntN(4) == 0 {
				// A login changed someone's provider groups.
				nextUsers = regroup(rng, users)
			}
			nc, aff, warns, err := c.Update(nextUsers, next, changed)
			ref, refWarns, refErr := CompileWithOptions(pol, nextUsers, next, updateOpts)
			fail := func(format string, args ...any) {
				t.Helper()
				t.Fatalf("seed %d step %d, changed %v:\n%s\npolicy:\n%s\nbefore: %s\nafter: %s",
					seed, step, changed, fmt.Sprintf(format, args...), src, js(nodes), js(next))
			}
			if (err != nil) != (refErr != nil) || !slices.Equal(warns, refWarns) {
				fail("err %v warnings %q; full compile: err %v warnings %q", err, warns, refErr, refWarns)
			}
			if err != nil {
				break
			}
			steps++
			got, want := fullView(nc, nodeIDs(next)), fullView(ref, nodeIDs(next))
			if got != want {
				fail("update differs from full compile:\n%s", lineDiff(want, got))
			}
			if after := fullView(c, nodeIDs(nodes)); after != before {
				fail("the previous compilation changed:\n%s", lineDiff(before, after))
			}
			for _, n := range next {
				if slices.ContainsFunc(nodes, func(o Node) bool { return o.ID == n.ID }) && !aff.Has(n.ID) {
					if o, v := nodeView(c, n.ID), nodeView(nc, n.ID); o != v {
						fail("node %d not in Affected %v but its view changed:\n%s", n.ID, slices.Collect(aff.IDs()), lineDiff(o, v))
					}
				}
			}
			for _, id := range changed {
				existed := slices.ContainsFunc(nodes, func(o Node) bool { return o.ID == id })
				exists := slices.ContainsFunc(next, func(o Node) bool { return o.ID == id })
				if (existed || exists) && !aff.Has(id) {
					fail("changed node %d not in Affected", id)
				}
			}
			c, nodes, users = nc, next, nextUsers
		}
	}
	t.Logf("%d update steps checked", steps)
}

// regroup returns users with one user's provider groups changed: a group
// (named by the generated policies or not) joined or left.
func regroup(rng *rand.Rand, users []User) []User {
	out := slices.Clone(users)
	u := &out[rng.IntN(len(out))]
	g := pick(rng, []string{"eng", "/vpn-admins", "ops@example.org", "nobody", "marketing"})
	if i := slices.Index(u.Groups, g); i >= 0 {
		u.Groups = slices.Delete(slices.Clone(u.Groups), i, i+1)
	} else {
		u.Groups = append(slices.Clone(u.Groups), g)
	}
	return out
}

// lineDiff shows the lines that differ between two renderings.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := range max(len(w), len(g)) {
		var a, z string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			z = g[i]
		}
		if a != z {
			fmt.Fprintf(&b, "line %d\n want %s\n  got %s\n", i, a, z)
		}
	}
	return b.String()
}

// affectedIDs returns the affected nodes, or "all".
func affectedIDs(a *Affected) string {
	if a.All() {
		return "all"
	}
	return fmt.Sprint(slices.Collect(a.IDs()))
}

func TestUpdateAffected(t *testing.T) {
	base := "{" + tagOwners + "\n"
	add := func(nodes []Node, n Node) ([]Node, []ids.NodeID) {
		return append(slices.Clone(nodes), n), []ids.NodeID{n.ID}
	}
	set := func(nodes []Node, id ids.NodeID, f func(*Node)) ([]Node, []ids.NodeID) {
		nodes = slices.Clone(nodes)
		for i := range nodes {
			if nodes[i].ID == id {
				f(&nodes[i])
			}
		}
		return nodes, []ids.NodeID{id}
	}
	tests := []struct {
		name   string
		policy string // nil policy when empty
		change func([]Node) ([]Node, []ids.NodeID)
		want   string
	}{
		{
			name:   "new source node affects the destinations, not unrelated nodes",
			policy: `"acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:server:443"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) { return add(ns, node(8, 1, "alice-tablet")) },
			want:   "[4 8]",
		},
		{
			name:   "new destination node affects itself and the sources' peer sets",
			policy: `"acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:server:443"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) { return add(ns, node(8, 0, "server2", "tag:server")) },
			want:   "[1 2 8]",
		},
		{
			name:   "retag away from a destination",
			policy: `"acls": [{"action": "accept", "src": ["bob@"], "dst": ["tag:server:22"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) {
				return set(ns, 4, func(n *Node) { n.Tags = []string{"tag:db"} })
			},
			want: "[3 4]",
		},
		{
			name:   "new address of a source changes the destinations' SrcIPs",
			policy: `"acls": [{"action": "accept", "src": ["bob@"], "dst": ["tag:db:5432"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) {
				return set(ns, 3, func(n *Node) { n.IPv4 = netip.MustParseAddr("100.64.0.33") })
			},
			want: "[3 5]",
		},
		{
			name:   "an address also written in the policy stays in SrcIPs",
			policy: `"acls": [{"action": "accept", "src": ["bob@", "100.64.0.3"], "dst": ["tag:db:5432"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) {
				return set(ns, 3, func(n *Node) { n.IPv4 = netip.MustParseAddr("100.64.0.33") })
			},
			want: "[3 5]",
		},
		{
			name:   "a shared address stays while another source holds it",
			policy: `"acls": [{"action": "accept", "src": ["group:eng"], "dst": ["tag:db:5432"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) {
				ns, _ = set(ns, 2, func(n *Node) { n.IPv4 = netip.MustParseAddr("100.64.0.3") })
				ns, _ = set(ns, 3, func(n *Node) { n.Tags = []string{"tag:server"} })
				return ns, []ids.NodeID{2, 3}
			},
			want: "[2 3 5]",
		},
		{
			name:   "new owner under autogroup:self",
			policy: `"acls": [{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) { return set(ns, 2, func(n *Node) { n.UserID = 2 }) },
			want:   "[1 2 3]",
		},
		{
			name:   "hostname change affects only the node",
			policy: `"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) { return set(ns, 5, func(n *Node) { n.Hostname = "pg" }) },
			want:   "[5]",
		},
		{
			name:   "allow all: a new node is everyone's peer",
			policy: `"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) { return add(ns, node(8, 2, "bob-phone")) },
			want:   "all",
		},
		{
			name:   "new subnet route changes every \"*\" source",
			policy: `"acls": [{"action": "accept", "src": ["*"], "dst": ["tag:db:5432"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) {
				return set(ns, 4, func(n *Node) { n.ApprovedRoutes = []netip.Prefix{netip.MustParsePrefix("10.44.0.0/16")} })
			},
			want: "[4 5]",
		},
		{
			name: "no policy: a retag affects only the node",
			change: func(ns []Node) ([]Node, []ids.NodeID) {
				return set(ns, 4, func(n *Node) { n.Tags = []string{"tag:db"} })
			},
			want: "[4]",
		},
		{
			name:   "no policy: a removal affects everyone",
			change: func(ns []Node) ([]Node, []ids.NodeID) { return slices.Clone(ns[:6]), []ids.NodeID{7} },
			want:   "all",
		},
		{
			name: "ssh sources changing affect the destinations",
			policy: `"acls": [{"action": "accept", "src": ["bob@"], "dst": ["tag:db:5432"]}],
				"ssh": [{"action": "accept", "src": ["group:admins"], "dst": ["tag:server"], "users": ["root"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) { return add(ns, node(8, 1, "alice-tablet")) },
			want:   "[4 8]",
		},
		{
			name:   "nodeAttrs affect only the node",
			policy: `"nodeAttrs": [{"target": ["tag:server"], "attr": ["magicdns-aaaa"]}]`,
			change: func(ns []Node) ([]Node, []ids.NodeID) {
				return set(ns, 5, func(n *Node) { n.Tags = []string{"tag:server"} })
			},
			want: "[5]",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pol *Policy
			if tt.policy != "" {
				var err error
				if pol, err = Parse([]byte(base + tt.policy + "}")); err != nil {
					t.Fatal(err)
				}
			}
			nodes := testNodes()
			c, _, err := CompileWithOptions(pol, testUsers, nodes, updateOpts)
			if err != nil {
				t.Fatal(err)
			}
			next, changed := tt.change(nodes)
			nc, aff, _, err := c.Update(testUsers, next, changed)
			if err != nil {
				t.Fatal(err)
			}
			ref, _, _ := CompileWithOptions(pol, testUsers, next, updateOpts)
			if got, want := fullView(nc, nodeIDs(next)), fullView(ref, nodeIDs(next)); got != want {
				t.Fatalf("update differs from full compile:\n%s", lineDiff(want, got))
			}
			if got := affectedIDs(aff); got != tt.want {
				t.Errorf("affected %s, want %s", got, tt.want)
			}
			if n := len(slices.Collect(aff.IDs())); n != aff.Len() {
				t.Errorf("Len %d, IDs yields %d", aff.Len(), n)
			}
			for _, id := range changed {
				if !aff.Has(id) {
					t.Errorf("changed node %d not affected", id)
				}
			}
		})
	}
}

func TestUpdateFallsBack(t *testing.T) {
	pol, err := Parse([]byte("{" + tagOwners + `"acls": [{"action": "accept", "src": ["alice@"], "dst": ["tag:server:443"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	nodes := testNodes()
	c, _, err := CompileWithOptions(pol, testUsers, nodes, updateOpts)
	if err != nil {
		t.Fatal(err)
	}
	// A change the caller did not list: the node count does not add up,
	// so Update compiles from scratch.
	next := append(slices.Clone(nodes), node(8, 1, "x"), node(9, 1, "y"))
	nc, aff, _, err := c.Update(testUsers, next, []ids.NodeID{8})
	if err != nil || !aff.All() || fullView(nc, nodeIDs(next)) != fullView(mustFull(t, pol, testUsers, next), nodeIDs(next)) {
		t.Fatalf("unlisted change: err %v, affected %s", err, affectedIDs(aff))
	}
	// New users.
	users := append(slices.Clone(testUsers), User{ID: 4, Name: "dave"})
	if _, aff, _, err := c.Update(users, nodes, nil); err != nil || !aff.All() {
		t.Fatalf("user change: err %v, affected %s", err, affectedIDs(aff))
	}
	// A duplicate ID is reported as by a full compilation.
	dup := append(slices.Clone(nodes), node(1, 2, "again"))
	if _, _, _, err := c.Update(testUsers, dup, []ids.NodeID{1}); err == nil {
		t.Fatal("duplicate node ID accepted")
	}
}

func mustFull(t *testing.T, pol *Policy, users []User, nodes []Node) *Compiled {
	t.Helper()
	c, _, err := CompileWithOptions(pol, users, nodes, updateOpts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestUpdateChain checks a long chain of updates (holes reused, slots out
// of ID order, overlays folded) against a full compilation at the end.
func TestUpdateChain(t *testing.T) {
	src, users, nodes := benchWorld(300, 60)
	pol, err := Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	c, _, err := CompileWithOptions(pol, users, nodes, updateOpts)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	nextID := ids.NodeID(len(nodes) + 1)
	for range 400 {
		nodes = slices.Clone(nodes)
		var changed []ids.NodeID
		switch k := rng.IntN(len(nodes)); rng.IntN(3) {
		case 0:
			changed = append(changed, nodes[k].ID)
			nodes = slices.Delete(nodes, k, k+1)
		case 1:
			n := nodes[k]
			n.Tags, n.UserID = nil, ids.UserID(1+rng.IntN(100))
			if rng.IntN(3) == 0 {
				n.Tags = []string{fmt.Sprintf("tag:t%d", rng.IntN(50))}
			}
			nodes[k] = n
			changed = append(changed, n.ID)
		default:
			id := nextID
			if rng.IntN(2) == 0 {
				id = ids.NodeID(rng.IntN(int(nextID))) // may reuse a removed ID
			}
			if id == 0 || slices.ContainsFunc(nodes, func(n Node) bool { return n.ID == id }) {
				continue
			}
			nextID++
			nodes = append(nodes, Node{ID: id, UserID: ids.UserID(1 + rng.IntN(100)),
				IPv4: netip.AddrFrom4([4]byte{100, 65, byte(id >> 8), byte(id)})})
			changed = append(changed, id)
		}
		c, _, _, err = c.Update(users, nodes, changed)
		if err != nil {
			t.Fatal(err)
		}
	}
	if got, want := fullView(c, nodeIDs(nodes)), fullView(mustFull(t, pol, users, nodes), nodeIDs(nodes)); got != want {
		t.Fatalf("after the chain:\n%s", lineDiff(want, got))
	}
}

// TestUpdateConcurrentReaders reads a compilation from several goroutines
// while updates are derived from it (run with -race): the compilation
// must not change, and the updates must match full compilations.
func TestUpdateConcurrentReaders(t *testing.T) {
	src, users, nodes := benchWorld(400, 80)
	pol, err := Parse(src)
	if err != nil {
		t.Fatal(err)
	}
	c := mustFull(t, pol, users, nodes)
	want := fullView(mustFull(t, pol, users, nodes), nodeIDs(nodes[:40]))
	done := make(chan string)
	for range 3 {
		go func() {
			var last string
			for range 3 {
				for _, n := range nodes {
					c.Filter(n.ID)
					c.SSH(n.ID)
					c.Peers(n.ID)
				}
				last = fullView(c, nodeIDs(nodes[:40]))
			}
			done <- last
		}()
	}
	rng := rand.New(rand.NewPCG(1, 1))
	cur, curNodes := c, nodes
	for step := range 30 {
		next := slices.Clone(curNodes)
		k := rng.IntN(len(next))
		next[k].Tags = []string{fmt.Sprintf("tag:t%d", rng.IntN(50))}
		next = append(next, Node{ID: ids.NodeID(1000 + step), UserID: ids.UserID(1 + rng.IntN(100)),
			IPv4: netip.AddrFrom4([4]byte{100, 70, 0, byte(step)})})
		nc, _, _, err := cur.Update(users, next, []ids.NodeID{next[k].ID, ids.NodeID(1000 + step)})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range next[:20] {
			nc.Filter(n.ID)
			nc.Peers(n.ID)
		}
		cur, curNodes = nc, next
		// Also branch off the compilation being read.
		side := append(slices.Clone(nodes), Node{ID: 5000, UserID: ids.UserID(1 + step), IPv4: netip.AddrFrom4([4]byte{100, 71, 0, 1})})
		sc, _, _, err := c.Update(users, side, []ids.NodeID{5000})
		if err != nil {
			t.Fatal(err)
		}
		sc.Filter(5000)
		sc.Peers(nodes[step].ID)
	}
	for range 3 {
		if got := <-done; got != want {
			t.Fatalf("a reader saw the compilation change:\n%s", lineDiff(want, got))
		}
	}
	if got, want := fullView(cur, nodeIDs(curNodes)), fullView(mustFull(t, pol, users, curNodes), nodeIDs(curNodes)); got != want {
		t.Fatalf("after the updates:\n%s", lineDiff(want, got))
	}
}
