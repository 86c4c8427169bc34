package policy

import (
	"encoding/binary"
	"hash/fnv"
	"net/netip"
	"reflect"
	"slices"
	"sort"

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
func (c *Compiled) Filter(nodeID uint64) []tailcfg.FilterRule {
	if nf := c.nodeFilter(nodeID); nf != nil {
		return nf.rules
	}
	return []tailcfg.FilterRule{}
}

// FilterKey returns a hash of node nodeID's filter: nodes with equal keys
// have equal filters, so callers can encode each distinct filter once.
func (c *Compiled) FilterKey(nodeID uint64) uint64 {
	if nf := c.nodeFilter(nodeID); nf != nil {
		return nf.key
	}
	return 0
}

func (c *Compiled) nodeFilter(nodeID uint64) *nodeFilter {
	i, ok := c.w.index[nodeID]
	if !ok {
		if c.allowAll {
			return c.share(allowAllRules())
		}
		return nil
	}
	if nf := c.filters[i].Load(); nf != nil {
		return nf
	}
	var rules []tailcfg.FilterRule
	if c.allowAll {
		rules = allowAllRules()
	} else {
		rules = c.materialize(i)
	}
	nf := c.share(rules)
	if !c.filters[i].CompareAndSwap(nil, nf) {
		return c.filters[i].Load()
	}
	return nf
}

func allowAllRules() []tailcfg.FilterRule {
	return []tailcfg.FilterRule{{
		SrcIPs:   []string{"*"},
		DstPorts: []tailcfg.NetPortRange{{IP: "*", Ports: tailcfg.PortRangeAny}},
	}}
}

// share returns the stored filter equal to rules, or stores rules.
func (c *Compiled) share(rules []tailcfg.FilterRule) *nodeFilter {
	key := c.hashRules(rules)
	c.filterMu.Lock()
	defer c.filterMu.Unlock()
	for _, nf := range c.shared[key] {
		if reflect.DeepEqual(nf.rules, rules) {
			return nf
		}
	}
	nf := &nodeFilter{rules: rules, key: key}
	c.shared[key] = append(c.shared[key], nf)
	return nf
}

// srcListRef identifies a SrcIPs slice held by the compiled units.
type srcListRef struct {
	first *string
	n     int
}

// registerSrc remembers the content hash of a SrcIPs slice the units
// hold, so hashing a filter does not rehash long source lists.
func (c *Compiled) registerSrc(strs []string) {
	if len(strs) == 0 {
		return
	}
	ref := srcListRef{&strs[0], len(strs)}
	if _, ok := c.srcHashes[ref]; !ok {
		c.srcHashes[ref] = hashStrings(strs)
	}
}

func hashStrings(strs []string) uint64 {
	h := fnv.New64a()
	var buf [8]byte
	for _, s := range strs {
		binary.LittleEndian.PutUint64(buf[:], uint64(len(s)))
		h.Write(buf[:])
		h.Write([]byte(s))
	}
	return h.Sum64()
}

func (c *Compiled) hashRules(rules []tailcfg.FilterRule) uint64 {
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
	for _, r := range rules {
		num(len(r.SrcIPs))
		if len(r.SrcIPs) > 0 {
			sh, ok := c.srcHashes[srcListRef{&r.SrcIPs[0], len(r.SrcIPs)}]
			if !ok {
				sh = hashStrings(r.SrcIPs)
			}
			num(int(sh))
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

// produced is one rule for a node before merging.
type produced struct {
	ord  int32 // position of the merged rule (first appearance of its key)
	seq  int32
	key  int32
	rule tailcfg.FilterRule
}

// materialize builds node i's filter: the units that concern it, reduced
// to its destinations, merged by SrcIPs+IPProto in order of first
// appearance (as Headscale merges the global rule list before reducing).
func (c *Compiled) materialize(i int) []tailcfg.FilterRule {
	w := c.w
	var out []produced
	visit := func(ui int32) {
		u := &c.units[ui]
		var r tailcfg.FilterRule
		switch u.kind {
		case unitWild:
			r.DstPorts = make([]tailcfg.NetPortRange, len(u.ports))
			for k, p := range u.ports {
				r.DstPorts[k] = tailcfg.NetPortRange{IP: "*", Ports: p}
			}
		case unitNodes:
			if !u.nodes.has(i) {
				return
			}
			r.DstPorts = portsFor(w.ipStrs[i], u.ports)
		case unitAddrs:
			for _, e := range u.addrs {
				if c.addrConcerns(i, e) {
					for _, p := range u.ports {
						r.DstPorts = append(r.DstPorts, tailcfg.NetPortRange{IP: e.str, Ports: p})
					}
				}
			}
		case unitVia:
			if !u.nodes.has(i) {
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
			r.SrcIPs = u.src
			out = append(out, produced{seq: u.seq, key: -1, rule: r})
			return
		}
		if len(r.DstPorts) == 0 {
			return
		}
		r.SrcIPs, r.IPProto = u.src, u.proto
		out = append(out, produced{seq: u.seq, key: u.key, rule: r})
	}
	wu, nu := c.wildUnits, c.nodeUnits[i]
	for len(wu) > 0 || len(nu) > 0 {
		if len(nu) == 0 || (len(wu) > 0 && wu[0] < nu[0]) {
			visit(wu[0])
			wu = wu[1:]
		} else {
			visit(nu[0])
			nu = nu[1:]
		}
	}
	if nd := &w.nodes[i]; !nd.tagged() && len(c.selfTs) > 0 {
		out = c.selfRules(i, out)
	}
	if len(out) == 0 {
		return []tailcfg.FilterRule{}
	}
	// A merged rule sits where its key first appears: in the global
	// rule list (keyFirst) or among this node's own rules.
	first := map[int32]int32{}
	for k := range out {
		p := &out[k]
		if p.key < 0 {
			p.ord = p.seq
			continue
		}
		f, ok := first[p.key]
		if !ok {
			f = p.seq
			if g := c.keyFirst[p.key]; g >= 0 && g < f {
				f = g
			}
		} else if p.seq < f {
			f = p.seq
		}
		first[p.key] = f
	}
	for k := range out {
		if out[k].key >= 0 {
			out[k].ord = first[out[k].key]
		}
	}
	sort.SliceStable(out, func(a, b int) bool {
		if out[a].ord != out[b].ord {
			return out[a].ord < out[b].ord
		}
		return out[a].seq < out[b].seq
	})
	rules := make([]tailcfg.FilterRule, 0, len(out))
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
	}
	return rules
}

// selfRules adds the autogroup:self rules for untagged node i: sources
// are its user's nodes among the grant's sources, the destination is the
// node itself.
func (c *Compiled) selfRules(i int, out []produced) []produced {
	w := c.w
	uid := w.nodes[i].UserID
	for ti := range c.selfTs {
		t := &c.selfTs[ti]
		strs, ok := t.srcStrs[uid]
		if !ok {
			continue
		}
		if t.ports == nil { // app part
			d := make([]netip.Prefix, 0, 2)
			for _, ip := range w.ips[i] {
				d = append(d, netip.PrefixFrom(ip, ip.BitLen()))
			}
			if len(d) == 0 {
				continue
			}
			out = append(out, produced{seq: t.seq, key: -1, rule: tailcfg.FilterRule{
				SrcIPs: strs, CapGrant: []tailcfg.CapGrant{{Dsts: d, CapMap: t.app}},
			}})
			if !t.srcSet.has(i) {
				continue
			}
			for k, comp := range companionCaps {
				if _, ok := t.app[comp.cap]; ok {
					out = append(out, produced{seq: t.seq + 1 + int32(k), key: -1, rule: tailcfg.FilterRule{
						SrcIPs:   t.userIPs[uid],
						CapGrant: []tailcfg.CapGrant{{Dsts: d, CapMap: tailcfg.PeerCapMap{comp.companion: nil}}},
					}})
				}
			}
			continue
		}
		dp := portsFor(w.ipStrs[i], t.ports)
		if len(dp) == 0 {
			continue
		}
		key := t.keys[uid]
		out = append(out, produced{seq: t.seq, key: key, rule: tailcfg.FilterRule{
			SrcIPs: strs, DstPorts: dp, IPProto: t.proto,
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
	for _, ip := range w.ips[i] {
		if e.rng.Contains(ip) {
			return true
		}
	}
	if w.routeOverlaps(i, e.rng) {
		return true
	}
	return e.internet && w.exit.has(i)
}

// capDsts returns the CapGrant destinations that concern node i: its own
// addresses (broad prefixes narrowed to them) and, unchanged, prefixes
// overlapping its subnet routes.
func (c *Compiled) capDsts(i int, ce capEntry) []netip.Prefix {
	w := c.w
	var out []netip.Prefix
	if ce.nodes != nil && ce.nodes.has(i) {
		for _, ip := range w.ips[i] {
			out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
		}
	}
	for _, p := range ce.pfxs {
		for _, ip := range w.ips[i] {
			if p.Contains(ip) {
				out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
			}
		}
		for _, sr := range w.subnetRoutes[i] {
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
