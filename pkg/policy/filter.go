package policy

import (
	"encoding/binary"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"weak"

	"github.com/hsctl/headscale/pkg/ids"
	"tailscale.com/tailcfg"
)

// nodeFilter is a node's materialised packet filter.
type nodeFilter struct {
	rules []tailcfg.FilterRule
	key   uint64
}

// Filter returns the packet filter for node nodeID: only the rules whose
// destinations concern the node (its own addresses, subnets it routes,
// the internet if it is an exit node), as Tailscale sends them. The result
// is deterministic; nodes with identical filters get the same slice. The
// slice and everything it points to are shared: do not modify them.
//
// The result is never nil: an empty slice means "deny everything". On the
// wire a nil MapResponse.PacketFilter means "unchanged", so callers must
// send an empty filter explicitly (e.g. PacketFilters {"base": []}).
// Unknown nodes get an empty filter, except without a policy.
func (c *Compiled) Filter(nodeID ids.NodeID) []tailcfg.FilterRule {
	if nf := c.nodeFilter(nodeID); nf != nil {
		return nf.rules
	}
	return []tailcfg.FilterRule{}
}

// FilterKey returns a hash of node nodeID's filter: nodes with equal keys
// have equal filters, so callers can encode each distinct filter once.
func (c *Compiled) FilterKey(nodeID ids.NodeID) uint64 {
	if nf := c.nodeFilter(nodeID); nf != nil {
		return nf.key
	}
	return 0
}

var allowAllSrc = []string{"*"}

func (c *Compiled) nodeFilter(nodeID ids.NodeID) *nodeFilter {
	i, ok := c.w.slotOf(nodeID)
	if !ok {
		if c.allowAll {
			rules := allowAllRules()
			return c.lin.filters.share(rules, hashRules(rules, []uint64{listHash(sumStrings(allowAllSrc), 1)}))
		}
		return nil
	}
	cell := &c.cache.at(i).filter
	if nf := cell.Load(); nf != nil {
		return nf
	}
	var rules []tailcfg.FilterRule
	var key uint64
	if c.allowAll {
		rules = allowAllRules()
		key = hashRules(rules, []uint64{listHash(sumStrings(allowAllSrc), 1)})
	} else {
		rules, key = c.materialize(i)
	}
	nf := c.lin.filters.share(rules, key)
	if !cell.CompareAndSwap(nil, nf) {
		return cell.Load()
	}
	return nf
}

func allowAllRules() []tailcfg.FilterRule {
	return []tailcfg.FilterRule{{
		SrcIPs:   []string{"*"},
		DstPorts: []tailcfg.NetPortRange{{IP: "*", Ports: tailcfg.PortRangeAny}},
	}}
}

// filterTable lets nodes with identical filters share one slice, across
// all compilations of a lineage (Update keeps unchanged nodes' filters).
// Entries are weak, so filters no compilation uses any more are freed.
type filterTable struct {
	mu      sync.Mutex
	m       map[uint64][]weak.Pointer[nodeFilter]
	entries int
	sweepAt int
}

func newFilterTable() *filterTable {
	return &filterTable{m: map[uint64][]weak.Pointer[nodeFilter]{}, sweepAt: 1024}
}

// share returns the stored filter equal to rules, or stores rules.
func (t *filterTable) share(rules []tailcfg.FilterRule, key uint64) *nodeFilter {
	t.mu.Lock()
	defer t.mu.Unlock()
	list := t.m[key]
	live := list[:0]
	var found *nodeFilter
	for _, wp := range list {
		nf := wp.Value()
		if nf == nil {
			t.entries--
			continue
		}
		live = append(live, wp)
		if found == nil && rulesEqual(nf.rules, rules) {
			found = nf
		}
	}
	if found == nil {
		found = &nodeFilter{rules: rules, key: key}
		live = append(live, weak.Make(found))
		t.entries++
	}
	t.m[key] = live
	if t.entries > t.sweepAt {
		for k, list := range t.m {
			live := list[:0]
			for _, wp := range list {
				if wp.Value() != nil {
					live = append(live, wp)
				}
			}
			t.entries -= len(list) - len(live)
			if len(live) == 0 {
				delete(t.m, k)
			} else {
				t.m[k] = live
			}
		}
		t.sweepAt = 2*t.entries + 1024
	}
	return found
}

// rulesEqual is reflect.DeepEqual for filters (nil and empty differ),
// without reflection and with a shortcut for shared SrcIPs lists.
func rulesEqual(a, b []tailcfg.FilterRule) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	for k := range a {
		x, y := &a[k], &b[k]
		if !sameList(x.SrcIPs, y.SrcIPs) || !sameList(x.SrcBits, y.SrcBits) || !sameList(x.IPProto, y.IPProto) ||
			!slices.EqualFunc(x.DstPorts, y.DstPorts, portRangeEqual) || (x.DstPorts == nil) != (y.DstPorts == nil) ||
			!slices.EqualFunc(x.CapGrant, y.CapGrant, capGrantEqual) || (x.CapGrant == nil) != (y.CapGrant == nil) {
			return false
		}
	}
	return true
}

func sameList[T comparable](a, b []T) bool {
	if len(a) != len(b) || (a == nil) != (b == nil) {
		return false
	}
	return len(a) == 0 || &a[0] == &b[0] || slices.Equal(a, b)
}

func portRangeEqual(a, b tailcfg.NetPortRange) bool {
	if a.IP != b.IP || a.Ports != b.Ports || (a.Bits == nil) != (b.Bits == nil) {
		return false
	}
	return a.Bits == nil || *a.Bits == *b.Bits
}

func capGrantEqual(a, b tailcfg.CapGrant) bool {
	if !sameList(a.Dsts, b.Dsts) || !sameList(a.Caps, b.Caps) || (a.CapMap == nil) != (b.CapMap == nil) {
		return false
	}
	return maps.EqualFunc(a.CapMap, b.CapMap, sameList[tailcfg.RawMessage])
}

// strHash hashes one SrcIPs element. A list's hash is built from the sum
// of its elements' hashes, so Update can adjust it for added and removed
// elements without rehashing long lists (SrcIPs lists are sorted, so the
// multiset determines the list).
func strHash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	return mix64(h)
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

func sumStrings(strs []string) uint64 {
	var sum uint64
	for _, s := range strs {
		sum += strHash(s)
	}
	return sum
}

func listHash(sum uint64, n int) uint64 { return mix64(sum ^ mix64(uint64(n)+0x9e3779b97f4a7c15)) }

// hashRules hashes a filter; srcHashes[k] is listHash of rules[k].SrcIPs.
func hashRules(rules []tailcfg.FilterRule, srcHashes []uint64) uint64 {
	h := fnv.New64a()
	var buf [8]byte
	num := func(v int) {
		binary.LittleEndian.PutUint64(buf[:], uint64(v))
		h.Write(buf[:])
	}
	str := func(s string) {
		num(len(s))
		h.Write([]byte(s))
	}
	num(len(rules))
	for k, r := range rules {
		num(len(r.SrcIPs))
		if len(r.SrcIPs) > 0 {
			num(int(srcHashes[k]))
		}
		num(len(r.IPProto))
		for _, p := range r.IPProto {
			num(p)
		}
		num(len(r.DstPorts))
		for _, d := range r.DstPorts {
			str(d.IP)
			num(int(d.Ports.First)<<16 | int(d.Ports.Last))
		}
		num(len(r.CapGrant))
		for _, cg := range r.CapGrant {
			num(len(cg.Dsts))
			for _, p := range cg.Dsts {
				str(p.String())
			}
			caps := make([]string, 0, len(cg.CapMap))
			for k := range cg.CapMap {
				caps = append(caps, string(k))
			}
			sort.Strings(caps)
			for _, k := range caps {
				str(k)
				num(len(cg.CapMap[tailcfg.PeerCapability(k)]))
				for _, v := range cg.CapMap[tailcfg.PeerCapability(k)] {
					str(string(v))
				}
			}
		}
	}
	return h.Sum64()
}

// classTable groups source lists by content: rules with equal SrcIPs and
// IPProto are merged, at the position of the first such rule in the
// whole policy ("first").
type classTable struct {
	of   []int32      // spec -> class
	list []*classInfo // class -> info; nil: unused id
	free []int32
	idx  pmap[uint64, []int32] // list hash -> classes
}

// classInfo is one distinct SrcIPs content. It is immutable; Update
// replaces the classes it changes.
type classInfo struct {
	strs  []string
	hash  uint64
	specs []int32         // ascending
	first map[int32]int32 // protocol -> seq of the first regular unit
}

func (c *Compiled) buildClasses() {
	lin := c.lin
	ct := &c.classes
	ct.of = make([]int32, len(lin.specs))
	idx := map[uint64][]int32{}
	for si, st := range c.specs {
		id := int32(-1)
		for _, k := range idx[st.hash] {
			if sameList(ct.list[k].strs, st.strs) {
				id = k
				break
			}
		}
		if id < 0 {
			id = int32(len(ct.list))
			ct.list = append(ct.list, &classInfo{strs: st.strs, hash: st.hash})
			idx[st.hash] = append(idx[st.hash], id)
		}
		ct.list[id].specs = append(ct.list[id].specs, int32(si))
		ct.of[si] = id
	}
	for _, ci := range ct.list {
		ci.first = lin.classFirst(ci.specs)
	}
	ct.idx = pmap[uint64, []int32]{base: idx}
}

// classFirst merges the specs' first positions per protocol.
func (lin *lineage) classFirst(specs []int32) map[int32]int32 {
	var first map[int32]int32
	for _, s := range specs {
		for p, seq := range lin.specFirst[s] {
			if first == nil {
				first = map[int32]int32{}
			}
			if f, ok := first[p]; !ok || seq < f {
				first[p] = seq
			}
		}
	}
	return first
}

// find returns the class with SrcIPs strs, or -1.
func (ct *classTable) find(strs []string, hash uint64) int32 {
	ids, _ := ct.idx.get(hash)
	for _, k := range ids {
		if sameList(ct.list[k].strs, strs) {
			return k
		}
	}
	return -1
}

// classFirstMap returns the first positions of rules with SrcIPs strs.
func (c *Compiled) classFirstMap(strs []string, hash uint64) map[int32]int32 {
	if k := c.classes.find(strs, hash); k >= 0 {
		return c.classes.list[k].first
	}
	return nil
}

// produced is one rule for a node before merging.
type produced struct {
	ord   int32 // position of the merged rule (first appearance of its key)
	seq   int32
	first int32 // the policy's first rule with this key (-1: none)
	key   int64 // SrcIPs class and protocol; -1 for CapGrant rules
	hash  uint64
	rule  tailcfg.FilterRule
}

// materialize builds node i's filter and its key: the units that concern
// it, reduced to its destinations, merged by SrcIPs+IPProto in order of
// first appearance (as Headscale merges the global rule list before
// reducing).
func (c *Compiled) materialize(i int) ([]tailcfg.FilterRule, uint64) {
	w, lin := c.w, c.lin
	s := w.slot(i)
	var out []produced
	visit := func(ui int32) {
		u := &lin.units[ui]
		sp := c.specs[u.spec]
		if u.mayDie && len(sp.strs) == 0 {
			return
		}
		var r tailcfg.FilterRule
		switch u.kind {
		case unitWild:
			r.DstPorts = make([]tailcfg.NetPortRange, len(u.ports))
			for k, p := range u.ports {
				r.DstPorts[k] = tailcfg.NetPortRange{IP: "*", Ports: p}
			}
		case unitNodes:
			if !c.aliasNodes[u.alias].has(i) {
				return
			}
			r.DstPorts = portsFor(s.ipStrs, u.ports)
		case unitAddrs:
			for _, e := range u.addrs {
				if c.addrConcerns(i, e) {
					for _, p := range u.ports {
						r.DstPorts = append(r.DstPorts, tailcfg.NetPortRange{IP: e.str, Ports: p})
					}
				}
			}
		case unitVia:
			if !c.udyn[ui].nodes.has(i) {
				return
			}
			for _, e := range u.addrs {
				if c.viaEntryFor(i, e) {
					for _, p := range u.ports {
						r.DstPorts = append(r.DstPorts, tailcfg.NetPortRange{IP: e.str, Ports: p})
					}
				}
			}
		case unitCap:
			for _, ce := range u.caps {
				if d := c.capDsts(i, ce); len(d) > 0 {
					r.CapGrant = append(r.CapGrant, tailcfg.CapGrant{Dsts: d, CapMap: ce.capMap})
				}
			}
			if len(r.CapGrant) == 0 {
				return
			}
			r.SrcIPs = sp.strs
			if u.mainCap && r.SrcIPs == nil {
				r.SrcIPs = []string{}
			}
			out = append(out, produced{seq: u.seq, key: -1, first: -1, hash: sp.hash, rule: r})
			return
		}
		if len(r.DstPorts) == 0 {
			return
		}
		r.SrcIPs, r.IPProto = sp.strs, u.proto
		class := c.classes.of[u.spec]
		first, ok := c.classes.list[class].first[u.protoID]
		if !ok {
			first = -1
		}
		out = append(out, produced{seq: u.seq, key: int64(class)<<32 | int64(u.protoID), first: first, hash: sp.hash, rule: r})
	}
	wu, nu := lin.wildUnits, c.nodes.at(i).units
	for len(wu) > 0 || len(nu) > 0 {
		if len(nu) == 0 || (len(wu) > 0 && wu[0] < nu[0]) {
			visit(wu[0])
			wu = wu[1:]
		} else {
			visit(nu[0])
			nu = nu[1:]
		}
	}
	if !s.tagged() && len(lin.selfTs) > 0 {
		out = c.selfRules(i, out)
	}
	if len(out) == 0 {
		rules := []tailcfg.FilterRule{}
		return rules, hashRules(rules, nil)
	}
	// A merged rule sits where its key first appears: in the global
	// rule list (first) or among this node's own rules.
	ord := map[int64]int32{}
	for k := range out {
		p := &out[k]
		if p.key < 0 {
			continue
		}
		f, ok := ord[p.key]
		if !ok {
			f = p.seq
			if p.first >= 0 && p.first < f {
				f = p.first
			}
		} else if p.seq < f {
			f = p.seq
		}
		ord[p.key] = f
	}
	for k := range out {
		if out[k].key >= 0 {
			out[k].ord = ord[out[k].key]
		} else {
			out[k].ord = out[k].seq
		}
	}
	sort.SliceStable(out, func(a, b int) bool {
		if out[a].ord != out[b].ord {
			return out[a].ord < out[b].ord
		}
		return out[a].seq < out[b].seq
	})
	rules := make([]tailcfg.FilterRule, 0, len(out))
	hashes := make([]uint64, 0, len(out))
	for k := 0; k < len(out); k++ {
		p := out[k]
		r := p.rule
		if p.key >= 0 {
			for k+1 < len(out) && out[k+1].key == p.key {
				r.DstPorts = append(r.DstPorts, out[k+1].rule.DstPorts...)
				k++
			}
		}
		rules = append(rules, r)
		hashes = append(hashes, p.hash)
	}
	return rules, hashRules(rules, hashes)
}

// selfRules adds the autogroup:self rules for untagged node i: sources
// are its user's nodes among the grant's sources, the destination is the
// node itself.
func (c *Compiled) selfRules(i int, out []produced) []produced {
	w, lin := c.w, c.lin
	s := w.slot(i)
	uid := s.node.UserID
	var local []hashedStrs // SrcIPs without a class: keys by position
	selfKey := func(hs hashedStrs, pid int32) (int64, int32) {
		if k := c.classes.find(hs.strs, hs.hash); k >= 0 {
			f, ok := c.classes.list[k].first[pid]
			if !ok {
				f = -1
			}
			return int64(k)<<32 | int64(pid), f
		}
		for n, l := range local {
			if l.hash == hs.hash && slices.Equal(l.strs, hs.strs) {
				return int64(len(c.classes.list)+n)<<32 | int64(pid), -1
			}
		}
		local = append(local, hs)
		return int64(len(c.classes.list)+len(local)-1)<<32 | int64(pid), -1
	}
	for ti := range lin.selfTs {
		t := &lin.selfTs[ti]
		src, ok := c.selfs[ti].srcStrs.get(uid)
		if !ok {
			continue
		}
		if t.ports == nil { // app part
			d := make([]netip.Prefix, 0, 2)
			for _, ip := range s.ips {
				d = append(d, netip.PrefixFrom(ip, ip.BitLen()))
			}
			if len(d) == 0 {
				continue
			}
			out = append(out, produced{seq: t.seq, key: -1, first: -1, hash: src.hash, rule: tailcfg.FilterRule{
				SrcIPs: src.strs, CapGrant: []tailcfg.CapGrant{{Dsts: d, CapMap: t.app}},
			}})
			if !c.specs[t.spec].nodes.has(i) {
				continue
			}
			all, _ := c.selfs[ti].userIPs.get(uid)
			for k, comp := range companionCaps {
				if _, ok := t.app[comp.cap]; ok {
					out = append(out, produced{seq: t.seq + 1 + int32(k), key: -1, first: -1, hash: all.hash, rule: tailcfg.FilterRule{
						SrcIPs:   all.strs,
						CapGrant: []tailcfg.CapGrant{{Dsts: d, CapMap: tailcfg.PeerCapMap{comp.companion: nil}}},
					}})
				}
			}
			continue
		}
		dp := portsFor(s.ipStrs, t.ports)
		if len(dp) == 0 {
			continue
		}
		key, first := selfKey(src, t.protoID)
		out = append(out, produced{seq: t.seq, key: key, first: first, hash: src.hash, rule: tailcfg.FilterRule{
			SrcIPs: src.strs, DstPorts: dp, IPProto: t.proto,
		}})
	}
	return out
}

func portsFor(ips []string, ports []tailcfg.PortRange) []tailcfg.NetPortRange {
	out := make([]tailcfg.NetPortRange, 0, len(ips)*len(ports))
	for _, ip := range ips {
		for _, p := range ports {
			out = append(out, tailcfg.NetPortRange{IP: ip, Ports: p})
		}
	}
	return out
}

// addrConcerns reports whether an address destination concerns node i:
// one of its addresses is inside, it routes an overlapping subnet, or it
// is an exit node and the destination is on the internet.
func (c *Compiled) addrConcerns(i int, e addrEntry) bool {
	w := c.w
	s := w.slot(i)
	for _, ip := range s.ips {
		if e.rng.Contains(ip) {
			return true
		}
	}
	if w.routeOverlaps(i, e.rng) {
		return true
	}
	return e.internet && s.exit
}

// capDsts returns the CapGrant destinations that concern node i: its own
// addresses (broad prefixes narrowed to them) and, unchanged, prefixes
// overlapping its subnet routes.
func (c *Compiled) capDsts(i int, ce capEntry) []netip.Prefix {
	s := c.w.slot(i)
	var out []netip.Prefix
	if c.capNodes(ce).has(i) {
		for _, ip := range s.ips {
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	for _, p := range ce.pfxs {
		for _, ip := range s.ips {
			if p.Contains(ip) {
				out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
			}
		}
		for _, sr := range s.routes {
			if p.Overlaps(sr) {
				out = append(out, p)
			}
		}
	}
	if len(out) > 1 {
		slices.SortFunc(out, netip.Prefix.Compare)
		out = slices.Compact(out)
	}
	return out
}
