package policy

import (
	"encoding/binary"
	"sync/atomic"

	"github.com/hsctl/headscale/pkg/ids"
)

// visibility answers CanSee. A node's signature is the set of grants
// (with visible destinations) whose sources include it; nodes with the
// same signature share one "reach" set, the union of those grants'
// destinations, computed on first use.
type visibility struct {
	selfSrc bitset // sources of any autogroup:self grant
	sigs    []*sigInfo
	sigIdx  pmap[string, int32] // grant list -> signature
}

// sigInfo is one signature. It is immutable apart from the reach cache;
// Update replaces the ones it changes (a new one may share the cache).
type sigInfo struct {
	grants  []int32
	members []int // slots with this signature, ascending
	reach   *reachCell
}

type reachCell struct{ p atomic.Pointer[bitset] }

func sigKey(grants []int32) string {
	buf := make([]byte, 0, 4*len(grants))
	for _, g := range grants {
		buf = binary.LittleEndian.AppendUint32(buf, uint32(g))
	}
	return string(buf)
}

// sigGrants returns the grants whose sources include slot i.
func (c *Compiled) sigGrants(i int) []int32 {
	var out []int32
	for gi, g := range c.lin.grants {
		if len(g.visUnits) > 0 && c.specs[g.spec].nodes.has(i) {
			out = append(out, int32(gi))
		}
	}
	return out
}

// buildVis computes every node's signature and returns them by slot.
func (c *Compiled) buildVis() []int32 {
	w := c.w
	v := &c.vis
	sigOf := make([]int32, w.n)
	if c.lin.hasSelf {
		v.selfSrc = newBitset(w.n)
		for _, s := range c.lin.selfSpecs {
			v.selfSrc.or(c.specs[s].nodes)
		}
	}
	perNode := make([][]int32, w.n)
	for gi, g := range c.lin.grants {
		if len(g.visUnits) == 0 {
			continue
		}
		c.specs[g.spec].nodes.each(func(i int) { perNode[i] = append(perNode[i], int32(gi)) })
	}
	index := map[string]int32{}
	w.all.each(func(i int) {
		k := sigKey(perNode[i])
		sig, ok := index[k]
		if !ok {
			sig = int32(len(v.sigs))
			index[k] = sig
			v.sigs = append(v.sigs, &sigInfo{grants: perNode[i], reach: &reachCell{}})
		}
		sigOf[i] = sig
		v.sigs[sig].members = append(v.sigs[sig].members, i)
	})
	v.sigIdx = pmap[string, int32]{base: index}
	return sigOf
}

// reachOf returns the destinations of signature s's grants.
func (c *Compiled) reachOf(s *sigInfo) bitset {
	if r := s.reach.p.Load(); r != nil {
		return *r
	}
	r := c.computeReach(s.grants)
	s.reach.p.CompareAndSwap(nil, &r)
	return *s.reach.p.Load()
}

func (c *Compiled) computeReach(grants []int32) bitset {
	r := newBitset(c.w.n)
	for _, g := range grants {
		for _, ui := range c.lin.grants[g].visUnits {
			if c.unitLive(int(ui)) {
				r.or(c.vdst(int(ui)))
			}
		}
	}
	return r
}

// CanSee reports whether nodes a and b should be peers: the policy lets
// a reach b or b reach a (a one-way rule makes both visible, as in
// Tailscale and Headscale, so replies and the reverse path work). Without
// a policy, or with neither "acls" nor "grants", every node sees every
// other. Unknown nodes see nothing.
func (c *Compiled) CanSee(a, b ids.NodeID) bool {
	w := c.w
	ia, okA := w.slotOf(a)
	ib, okB := w.slotOf(b)
	if !okA || !okB {
		return false
	}
	if c.allowAll || ia == ib {
		return true
	}
	if c.selfSees(ia, ib) {
		return true
	}
	v := &c.vis
	return c.reachOf(v.sigs[c.nodes.at(ia).sig]).has(ib) || c.reachOf(v.sigs[c.nodes.at(ib).sig]).has(ia)
}

// selfSees reports whether an autogroup:self grant makes a and b peers:
// both untagged, same user, and one of them a source.
func (c *Compiled) selfSees(a, b int) bool {
	if !c.lin.hasSelf {
		return false
	}
	sa, sb := c.w.slot(a), c.w.slot(b)
	return !sa.tagged() && !sb.tagged() && sa.node.UserID == sb.node.UserID &&
		(c.vis.selfSrc.has(a) || c.vis.selfSrc.has(b))
}

// Peers returns the IDs of the nodes node id may see (CanSee), in ID
// order, without checking every pair: its own reach set, plus every
// group of nodes (by source signature) whose reach set contains it.
func (c *Compiled) Peers(id ids.NodeID) []ids.NodeID {
	return c.AppendPeers(nil, id)
}

// AppendPeers appends Peers(id) to dst, so a caller walking many nodes can
// reuse one buffer.
func (c *Compiled) AppendPeers(dst []ids.NodeID, id ids.NodeID) []ids.NodeID {
	w := c.w
	ia, ok := w.slotOf(id)
	if !ok {
		return dst
	}
	vis := c.visible(ia)
	out := dst
	if w.sorted {
		vis.each(func(j int) {
			if j != ia {
				out = append(out, w.node(j).ID)
			}
		})
		return out
	}
	for _, j := range w.idOrder() {
		if j != ia && vis.has(j) {
			out = append(out, w.node(j).ID)
		}
	}
	return out
}

// visible returns the nodes slot ia may see (including itself).
func (c *Compiled) visible(ia int) bitset {
	w := c.w
	vis := newBitset(w.n)
	if c.allowAll {
		vis.or(w.all)
		return vis
	}
	v := &c.vis
	vis.or(c.reachOf(v.sigs[c.nodes.at(ia).sig]))
	for _, s := range v.sigs {
		if len(s.members) > 0 && c.reachOf(s).has(ia) {
			for _, j := range s.members {
				vis.set(j)
			}
		}
	}
	c.addSelfPeers(ia, vis)
	return vis
}

func (c *Compiled) addSelfPeers(ia int, vis bitset) {
	s := c.w.slot(ia)
	if !c.lin.hasSelf || s.tagged() {
		return
	}
	for _, j := range c.w.usersNodes(s.node.UserID) {
		if c.vis.selfSrc.has(ia) || c.vis.selfSrc.has(j) {
			vis.set(j)
		}
	}
}

// peersOf returns the nodes slot x may see (CanSee, without x), computed
// from the grants directly rather than from the signatures' reach sets,
// so it costs only what x is part of. The result has room for n nodes.
func (c *Compiled) peersOf(x, n int) bitset {
	w := c.w
	out := newBitset(n)
	if x >= w.n || !w.slot(x).live {
		return out
	}
	if c.allowAll {
		out.or(w.all)
	} else {
		for _, g := range c.lin.grants {
			if len(g.visUnits) == 0 {
				continue
			}
			src := c.specs[g.spec].nodes
			inSrc := src.has(x)
			targeted := false
			for _, ui := range g.visUnits {
				if !c.unitLive(int(ui)) {
					continue
				}
				d := c.vdst(int(ui))
				if inSrc {
					out.or(d)
				}
				if !targeted && d.has(x) {
					targeted = true
					out.or(src)
				}
			}
		}
		c.addSelfPeers(x, out)
	}
	out.clear(x)
	return out
}
