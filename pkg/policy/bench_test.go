package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
)

// benchWorld builds a tailnet of 100 users, 200 groups, 50 tags and
// nNodes nodes (one in five tagged), and a policy of nRules mixed rules.
func benchWorld(nNodes, nRules int) ([]byte, []User, []Node) {
	rng := rand.New(rand.NewPCG(1, 2))
	var users []User
	for i := range 100 {
		users = append(users, User{ID: ids.UserID(i + 1), Name: fmt.Sprintf("user%d", i), Email: fmt.Sprintf("user%d@example.com", i)})
	}
	var nodes []Node
	for i := range nNodes {
		n := Node{
			ID:   ids.NodeID(i + 1),
			IPv4: netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}),
			IPv6: netip.MustParseAddr(fmt.Sprintf("fd7a:115c:a1e0::%x", i+1)),
		}
		if i%5 == 0 {
			n.Tags = []string{fmt.Sprintf("tag:t%d", rng.IntN(50))}
		} else {
			n.UserID = ids.UserID(rng.IntN(100) + 1)
		}
		nodes = append(nodes, n)
	}
	var b strings.Builder
	b.WriteString("{\n\"groups\": {\n")
	for g := range 200 {
		var members []string
		for range 5 {
			members = append(members, fmt.Sprintf("%q", fmt.Sprintf("user%d@", rng.IntN(100))))
		}
		fmt.Fprintf(&b, "  \"group:g%d\": [%s],\n", g, strings.Join(members, ", "))
	}
	b.WriteString("},\n\"tagOwners\": {\n")
	for t := range 50 {
		fmt.Fprintf(&b, "  \"tag:t%d\": [\"group:g%d\"],\n", t, t)
	}
	b.WriteString("},\n\"hosts\": {\"lab\": \"100.64.10.0/24\", \"db\": \"100.64.20.7\"},\n\"acls\": [\n")
	for r := range nRules {
		var src, dst string
		switch r % 10 {
		case 0, 1, 2:
			src, dst = fmt.Sprintf("group:g%d", rng.IntN(200)), fmt.Sprintf("tag:t%d:%d", rng.IntN(50), 1+rng.IntN(1000))
		case 3, 4:
			src, dst = fmt.Sprintf("group:g%d", rng.IntN(200)), fmt.Sprintf("group:g%d:22,80,443", rng.IntN(200))
		case 5:
			src, dst = fmt.Sprintf("user%d@", rng.IntN(100)), fmt.Sprintf("user%d@:*", rng.IntN(100))
		case 6:
			src, dst = fmt.Sprintf("tag:t%d", rng.IntN(50)), fmt.Sprintf("tag:t%d:5432", rng.IntN(50))
		case 7:
			src, dst = "autogroup:member", fmt.Sprintf("tag:t%d:443", rng.IntN(50))
		case 8:
			src, dst = fmt.Sprintf("group:g%d", rng.IntN(200)), "lab:1000-2000"
		case 9:
			src, dst = fmt.Sprintf("tag:t%d", rng.IntN(50)), "db:5432"
		}
		fmt.Fprintf(&b, "  {\"action\": \"accept\", \"src\": [%q], \"dst\": [%q]},\n", src, dst)
	}
	b.WriteString("],\n}\n")
	return []byte(b.String()), users, nodes
}

func BenchmarkCompile_1000Rules_10000Nodes(b *testing.B) {
	src, users, nodes := benchWorld(10000, 1000)
	pol, err := Parse(src)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Compile(pol, users, nodes); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompileAndAllFilters_1000Rules_10000Nodes is what a policy
// change costs: compile, then materialise every node's filter.
func BenchmarkCompileAndAllFilters_1000Rules_10000Nodes(b *testing.B) {
	src, users, nodes := benchWorld(10000, 1000)
	pol, err := Parse(src)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		c, _, err := Compile(pol, users, nodes)
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range nodes {
			c.Filter(n.ID)
		}
	}
}

func BenchmarkParse_1000Rules(b *testing.B) {
	src, _, _ := benchWorld(10, 1000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(src); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFilter measures materialising one node's filter (uncached).
func BenchmarkFilter(b *testing.B) {
	src, users, nodes := benchWorld(10000, 1000)
	pol, _ := Parse(src)
	c, _, err := Compile(pol, users, nodes)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.materialize(i % len(nodes))
		i++
	}
}

// BenchmarkCanSee measures peer checks once the reach sets are built.
func BenchmarkCanSee(b *testing.B) {
	src, users, nodes := benchWorld(10000, 1000)
	pol, _ := Parse(src)
	c, _, err := Compile(pol, users, nodes)
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range nodes {
		c.CanSee(n.ID, nodes[0].ID)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.CanSee(nodes[i%len(nodes)].ID, nodes[(i*7919)%len(nodes)].ID)
		i++
	}
}

// BenchmarkAllPeers_10000Nodes is a full peer map: compile, then Peers
// for every node (building every reach set).
func BenchmarkAllPeers_10000Nodes(b *testing.B) {
	src, users, nodes := benchWorld(10000, 1000)
	pol, _ := Parse(src)
	b.ReportAllocs()
	for b.Loop() {
		c, _, err := Compile(pol, users, nodes)
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range nodes {
			c.Peers(n.ID)
		}
	}
}

// BenchmarkUpdateOneNode10k measures Update for a single node change at
// 10,000 nodes and 1,000 rules, to compare with a full compilation
// (BenchmarkCompile_1000Rules_10000Nodes). "+filters" also rebuilds the
// filters of the affected nodes, to compare with
// BenchmarkCompileAndAllFilters_1000Rules_10000Nodes.
func BenchmarkUpdateOneNode10k(b *testing.B) {
	src, users, nodes := benchWorld(10000, 1000)
	pol, err := Parse(src)
	if err != nil {
		b.Fatal(err)
	}
	c, _, err := Compile(pol, users, nodes)
	if err != nil {
		b.Fatal(err)
	}
	// A new node of user 7, addressed like the generator's.
	i := len(nodes)
	added := append(slices.Clone(nodes), Node{
		ID:     ids.NodeID(i + 1),
		UserID: 7,
		IPv4:   netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}),
		IPv6:   netip.MustParseAddr(fmt.Sprintf("fd7a:115c:a1e0::%x", i+1)),
	})
	// An untagged node becomes tag:t7.
	retagged := slices.Clone(nodes)
	retagged[1].Tags = []string{"tag:t7"}
	removed := slices.Delete(slices.Clone(nodes), 1, 2)
	run := func(next []Node, id ids.NodeID, filters bool) func(b *testing.B) {
		return func(b *testing.B) {
			c.Update(users, next, []ids.NodeID{id}) // build the indexes Update keeps once per lineage
			b.ReportAllocs()
			for b.Loop() {
				nc, aff, _, err := c.Update(users, next, []ids.NodeID{id})
				if err != nil {
					b.Fatal(err)
				}
				if filters {
					for id := range aff.IDs() {
						nc.Filter(id)
					}
				}
			}
		}
	}
	b.Run("add", run(added, ids.NodeID(i+1), false))
	b.Run("retag", run(retagged, nodes[1].ID, false))
	b.Run("remove", run(removed, nodes[1].ID, false))
	b.Run("add+filters", run(added, ids.NodeID(i+1), true))
	b.Run("retag+filters", run(retagged, nodes[1].ID, true))
}
