package policy

import (
	"encoding/binary"
	"sync/atomic"
)

// grantVis is who a grant lets reach whom, as node sets.
type grantVis struct {
	src bitset
	dst []bitset
}

// visibility answers CanSee. Nodes that are sources of the same grants
// share one "reach" set (the union of those grants' destinations),
// computed on first use.
type visibility struct {
	grants  []grantVis
	selfSrc bitset // sources of any autogroup:self grant

	sigOf     []int32   // node -> signature
	sigGrants [][]int32 // signature -> grants whose sources include it
	sigNodes  [][]int   // signature -> nodes with it
	reach     []atomic.Pointer[bitset]
}

func (v *visibility) init(w *world) {
	n := len(w.nodes)
	perNode := make([][]int32, n)
	for gi, g := range v.grants {
		if len(g.dst) == 0 {
			continue
		}
		g.src.each(func(i int) { perNode[i] = append(perNode[i], int32(gi)) })
	}
	v.sigOf = make([]int32, n)
	index := map[string]int32{}
	var buf []byte
	for i, gs := range perNode {
		buf = buf[:0]
		for _, g := range gs {
			buf = binary.LittleEndian.AppendUint32(buf, uint32(g))
		}
		sig, ok := index[string(buf)]
		if !ok {
			sig = int32(len(v.sigGrants))
			index[string(buf)] = sig
			v.sigGrants = append(v.sigGrants, gs)
			v.sigNodes = append(v.sigNodes, nil)
		}
		v.sigOf[i] = sig
		v.sigNodes[sig] = append(v.sigNodes[sig], i)
	}
	v.reach = make([]atomic.Pointer[bitset], len(v.sigGrants))
}

func (v *visibility) reachOf(sig int32, n int) bitset {
	if r := v.reach[sig].Load(); r != nil {
		return *r
	}
	r := newBitset(n)
	for _, g := range v.sigGrants[sig] {
		for _, d := range v.grants[g].dst {
			r.or(d)
		}
	}
	v.reach[sig].CompareAndSwap(nil, &r)
	return *v.reach[sig].Load()
}

// CanSee reports whether nodes a and b should be peers: the policy lets
// a reach b or b reach a (a one-way rule makes both visible, as in
// Tailscale and Headscale, so replies and the reverse path work). Without
// a policy, or with neither "acls" nor "grants", every node sees every
// other. Unknown nodes see nothing.
func (c *Compiled) CanSee(a, b uint64) bool {
	ia, okA := c.w.index[a]
	ib, okB := c.w.index[b]
	if !okA || !okB {
		return false
	}
	if c.allowAll || ia == ib {
		return true
	}
	w := c.w
	v := &c.vis
	if v.selfSrc != nil && !w.nodes[ia].tagged() && !w.nodes[ib].tagged() &&
		w.nodes[ia].UserID == w.nodes[ib].UserID && (v.selfSrc.has(ia) || v.selfSrc.has(ib)) {
		return true
	}
	if v.sigOf == nil {
		return false
	}
	n := len(w.nodes)
	return v.reachOf(v.sigOf[ia], n).has(ib) || v.reachOf(v.sigOf[ib], n).has(ia)
}

// Peers returns the IDs of the nodes node id may see (CanSee), in ID
// order, without checking every pair: its own reach set, plus every
// group of nodes (by source signature) whose reach set contains it.
func (c *Compiled) Peers(id uint64) []uint64 {
	return c.AppendPeers(nil, id)
}

// AppendPeers appends Peers(id) to dst, so a caller walking many nodes can
// reuse one buffer.
func (c *Compiled) AppendPeers(dst []uint64, id uint64) []uint64 {
	w := c.w
	ia, ok := w.index[id]
	if !ok {
		return dst
	}
	n := len(w.nodes)
	var vis bitset
	if c.allowAll {
		vis = w.all.clone()
	} else {
		v := &c.vis
		vis = newBitset(n)
		if v.sigOf != nil {
			vis.or(v.reachOf(v.sigOf[ia], n))
			for sig := range v.sigGrants {
				if v.reachOf(int32(sig), n).has(ia) {
					for _, j := range v.sigNodes[sig] {
						vis.set(j)
					}
				}
			}
		}
		if nd := &w.nodes[ia]; v.selfSrc != nil && !nd.tagged() {
			for _, j := range w.userNodes[nd.UserID] {
				if v.selfSrc.has(ia) || v.selfSrc.has(j) {
					vis.set(j)
				}
			}
		}
	}
	out := dst
	vis.each(func(j int) {
		if j != ia {
			out = append(out, w.nodes[j].ID)
		}
	})
	return out
}
