package policy

import (
	"iter"
	"maps"
	"net/netip"
	"slices"
	"sort"

	"github.com/hsctl/headscale/pkg/ids"
	"go4.org/netipx"
	"tailscale.com/tailcfg"
)

// Affected says which nodes' compiled view (Filter/FilterKey, SSH,
// NodeCapMap, peer set) may differ between a compilation and the one
// Update derived from it, so a server updates only those sessions. It is
// a superset: nodes outside it answer every per-node query as before.
// When every node is affected it says so (All) instead of listing them.
type Affected struct {
	all   bool
	world *world       // the new compilation's nodes
	set   bitset       // slots in w
	gone  []ids.NodeID // changed nodes that no longer exist
}

// All reports whether every node is affected.
func (a *Affected) All() bool { return a.all }

// Has reports whether node id is affected. Nodes that were removed are
// affected; with All, every node is.
func (a *Affected) Has(id ids.NodeID) bool {
	if a.all || slices.Contains(a.gone, id) {
		return true
	}
	i, ok := a.world.slotOf(id)
	return ok && a.set.has(i)
}

// Len returns the number of affected nodes (removed ones included).
func (a *Affected) Len() int {
	if a.all {
		return a.world.live + len(a.gone)
	}
	return a.set.count() + len(a.gone)
}

// IDs yields the affected nodes' IDs: those of the new compilation in ID
// order (all of them with All), then the removed ones.
func (a *Affected) IDs() iter.Seq[ids.NodeID] {
	return func(yield func(ids.NodeID) bool) {
		for _, i := range a.world.idOrder() {
			if (a.all || a.set.has(i)) && !yield(a.world.node(i).ID) {
				return
			}
		}
		for _, id := range a.gone {
			if !yield(id) {
				return
			}
		}
	}
}

// Update returns the policy compiled against nodes, where nodes differs
// from the nodes c was compiled with only in the nodes listed in changed
// (added, removed, or with new tags, owner, addresses, hostname or
// approved routes); users must be unchanged (a user change needs
// CompileWithOptions). The result answers every query exactly as
// CompileWithOptions(policy, users, nodes, options) would; c stays valid
// and unchanged, and shares everything the change does not touch.
// Affected lists the nodes whose view may have changed.
//
// The work is proportional to what the changed nodes touch: the aliases,
// sources and rules that name them and the destinations of those rules,
// plus cheap scans over the rule list; per-node data is copied in chunks
// and only the caches of affected nodes are dropped. If users differ, or
// nodes is inconsistent with changed, Update falls back to a full
// compilation and reports every node affected.
func (c *Compiled) Update(users []User, nodes []Node, changed []ids.NodeID) (*Compiled, *Affected, []string, error) {
	full := func() (*Compiled, *Affected, []string, error) {
		nc, warns, err := CompileWithOptions(c.pol, users, nodes, c.opts)
		if err != nil {
			return nil, nil, warns, err
		}
		return nc, &Affected{all: true, world: nc.world}, warns, nil
	}
	if !sameUsers(c.pol, c.world.users, users) {
		return full()
	}
	edits, ok := c.collectEdits(nodes, changed)
	if !ok {
		return full()
	}
	u := &updater{old: c, oldWorld: c.world}
	u.run(edits)
	return u.c, u.affected(), c.warnings, nil
}

// sameUsers reports whether users a and b are the same as far as policy p
// can tell: the same users in the same order with the same names and
// addresses, in the same identity-provider groups among those p names
// (a change to a group p does not name changes nothing).
func sameUsers(p *Policy, a, b []User) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.EqualFunc(a, b, func(x, y User) bool {
		return x.ID == y.ID && x.Name == y.Name && x.Email == y.Email && p.sameNamedGroups(x.Groups, y.Groups)
	})
}

// sameNamedGroups reports whether a and b hold the same groups among
// those p names.
func (p *Policy) sameNamedGroups(a, b []string) bool {
	if slices.Equal(a, b) {
		return true
	}
	for _, g := range a {
		if p.NamesIdPGroup(g) && !slices.Contains(b, g) {
			return false
		}
	}
	for _, g := range b {
		if p.NamesIdPGroup(g) && !slices.Contains(a, g) {
			return false
		}
	}
	return true
}

// nodeEdit is one changed node: its new data (nil: removed) and its slot
// in the old compilation (-1: new).
type nodeEdit struct {
	id   ids.NodeID
	node *Node
	old  int
}

// collectEdits finds the changed nodes in nodes and checks that nodes
// has exactly the old nodes plus and minus the changes.
func (c *Compiled) collectEdits(nodes []Node, changed []ids.NodeID) ([]nodeEdit, bool) {
	changedIDs := slices.Clone(changed)
	slices.Sort(changedIDs)
	changedIDs = slices.Compact(changedIDs)
	edits := make([]nodeEdit, len(changedIDs))
	for k, id := range changedIDs {
		edits[k] = nodeEdit{id: id, old: -1}
		if s, ok := c.world.slotOf(id); ok {
			edits[k].old = s
		}
	}
	find := func(id ids.NodeID) int {
		k, ok := slices.BinarySearch(changedIDs, id)
		if !ok {
			return -1
		}
		return k
	}
	if len(changedIDs) <= 4 {
		find = func(id ids.NodeID) int { return slices.Index(changedIDs, id) }
	}
	for i := range nodes {
		if k := find(nodes[i].ID); k >= 0 {
			if edits[k].node != nil {
				return nil, false // duplicate ID: let the full compilation report it
			}
			edits[k].node = &nodes[i]
		}
	}
	live := c.world.live
	for _, e := range edits {
		if e.old >= 0 {
			live--
		}
		if e.node != nil {
			live++
		}
	}
	return edits, live == len(nodes)
}

// updater derives c from old.
type updater struct {
	old, c             *Compiled
	oldWorld, newWorld *world
	numSlots           int   // slots in the new world
	changedSlots       []int // slots whose node changed (added, removed or modified)
	gone               []ids.NodeID

	addsOrRemoves bool
	routesChanged bool

	specChanged []bool // SrcIPs changed
	specFlip    []bool // SrcIPs became empty or non-empty

	filterDirty, sshDirty, peerDirty bitset
	allFilters, allPeers             bool

	nodes *vecEdit[nodeState]
}

func (u *updater) run(edits []nodeEdit) {
	old := u.old
	c := &Compiled{
		pol:            old.pol,
		opts:           old.opts,
		lineage:        old.lineage,
		allowAll:       old.allowAll,
		warnings:       old.warnings,
		aliasNodes:     old.aliasNodes,
		specs:          old.specs,
		unitSets:       old.unitSets,
		classes:        old.classes,
		selfStates:     old.selfStates,
		ssh:            old.ssh,
		exitApprovers:  old.exitApprovers,
		routeApprovers: old.routeApprovers,
		visibility:     old.visibility,
	}
	u.c = c
	u.updateWorld(edits)
	c.world = u.newWorld
	u.numSlots = u.newWorld.numSlots
	u.filterDirty, u.sshDirty, u.peerDirty = newBitset(u.numSlots), newBitset(u.numSlots), newBitset(u.numSlots)
	u.nodes = old.nodes.edit(nil)
	u.updateAliases()
	u.updateSpecs()
	u.updateClasses()
	u.updateUnits()
	u.updateSelf()
	u.updateSSH()
	u.updateApprovers()
	u.updateNodes()
	u.updateVis()
	c.nodes = u.nodes.v
	u.updateCaches()
}

// oldSlot returns slot x of the old world, or an empty slot.
func (u *updater) oldSlot(x int) *slot {
	if x < u.oldWorld.numSlots {
		return u.oldWorld.slot(x)
	}
	return &slot{}
}

func (u *updater) updateWorld(edits []nodeEdit) {
	oldWorld := u.oldWorld
	w := &world{
		users: oldWorld.users, userByID: oldWorld.userByID, numSlots: oldWorld.numSlots, live: oldWorld.live,
		routers: oldWorld.routers, exitNodes: oldWorld.exitNodes, routeCount: oldWorld.routeCount, allRoutes: oldWorld.allRoutes,
		sorted: oldWorld.sorted, maxID: oldWorld.maxID, tailnetSet: oldWorld.tailnetSet, internet: oldWorld.internet,
		lazyIndex: &worldIndex{},
	}
	u.newWorld = w
	slots := oldWorld.slots.edit(nil)
	index := oldWorld.index.edit()
	userNodes := oldWorld.userNodes.edit()
	tagNodes := oldWorld.tagNodes.edit()
	ips := oldWorld.ipCounts().edit()
	routeCount := oldWorld.routeCount
	routesCloned := false
	routerTouched := false

	track := func(s int, sl *slot, add bool) {
		if sl.tagged() {
			for _, t := range sl.node.Tags {
				cur, _ := tagNodes.get(t)
				if add {
					tagNodes.set(t, withSlot(cur, s))
				} else {
					tagNodes.set(t, withoutSlot(cur, s))
				}
			}
		} else {
			cur, _ := userNodes.get(sl.node.UserID)
			if add {
				userNodes.set(sl.node.UserID, withSlot(cur, s))
			} else {
				userNodes.set(sl.node.UserID, withoutSlot(cur, s))
			}
		}
		for _, a := range sl.ips {
			h, _ := ips.get(a)
			if add {
				if h.count == 0 {
					h.slot = int32(s)
				} else {
					h.slot = -1
				}
				h.count++
			} else {
				h.count--
				h.slot = -1
			}
			if h.count == 0 {
				ips.del(a)
			} else {
				ips.set(a, h)
			}
		}
		if len(sl.routes) > 0 || sl.exit {
			routerTouched = true
		}
		for _, r := range sl.routes {
			if !routesCloned {
				routeCount = maps.Clone(routeCount)
				routesCloned = true
			}
			before := routeCount[r]
			if add {
				routeCount[r]++
			} else if routeCount[r]--; routeCount[r] == 0 {
				delete(routeCount, r)
			}
			if (before == 0) != (routeCount[r] == 0) {
				u.routesChanged = true
			}
		}
	}
	var freed []int
	for _, e := range edits {
		if e.old < 0 {
			continue
		}
		track(e.old, oldWorld.slot(e.old), false)
		u.changedSlots = append(u.changedSlots, e.old)
		if e.node == nil {
			*slots.mut(e.old) = slot{}
			index.del(e.id)
			w.live--
			u.gone = append(u.gone, e.id)
			u.addsOrRemoves = true
			freed = append(freed, e.old)
			continue
		}
		ns := makeSlot(*e.node)
		*slots.mut(e.old) = ns
		track(e.old, &ns, true)
	}
	scan := 0 // next slot to look at for an old hole
	pick := func(id ids.NodeID) int {
		holes := w.numSlots - w.live
		if holes > 0 && (id <= w.maxID || (holes > 64 && 4*holes > w.live)) {
			if len(freed) > 0 {
				s := freed[0]
				freed = freed[1:]
				return s
			}
			for ; scan < oldWorld.numSlots; scan++ {
				if !oldWorld.all.has(scan) && !slots.v.at(scan).live {
					return scan
				}
			}
		}
		w.numSlots++
		return w.numSlots - 1
	}
	for _, e := range edits {
		if e.old >= 0 || e.node == nil {
			continue
		}
		s := pick(e.id)
		if s != w.numSlots-1 || e.id <= w.maxID {
			w.sorted = false
		}
		w.maxID = max(w.maxID, e.id)
		ns := makeSlot(*e.node)
		*slots.mut(s) = ns
		track(s, &ns, true)
		index.set(e.id, s)
		w.live++
		u.changedSlots = append(u.changedSlots, s)
		u.addsOrRemoves = true
	}
	slices.Sort(u.changedSlots)
	u.changedSlots = slices.Compact(u.changedSlots)
	w.slots = slots.v
	w.index = index.done()
	w.userNodes = userNodes.done()
	w.tagNodes = tagNodes.done()
	w.ipHolderCounts = &ipCounter{holders: ips.done()}
	w.ipHolderCounts.once.Do(func() {})
	w.routeCount = routeCount
	if u.routesChanged {
		w.allRoutes = routeStrings(routeCount)
	}
	n := w.numSlots
	w.all, _ = patchBits(oldWorld.all, u.changedSlots, n, func(x int) bool { return w.slot(x).live })
	w.tagged, _ = patchBits(oldWorld.tagged, u.changedSlots, n, func(x int) bool { return w.slot(x).live && w.slot(x).tagged() })
	w.untagged, _ = patchBits(oldWorld.untagged, u.changedSlots, n, func(x int) bool { return w.slot(x).live && !w.slot(x).tagged() })
	var exitCh bool
	w.exit, exitCh = patchBits(oldWorld.exit, u.changedSlots, n, func(x int) bool { return w.slot(x).exit })
	if routerTouched {
		w.routers = u.slotList(oldWorld.routers, func(s *slot) bool { return len(s.routes) > 0 })
	}
	if exitCh {
		w.exitNodes = u.slotList(oldWorld.exitNodes, func(s *slot) bool { return s.exit })
	}
}

// slotList returns list (ascending slots) with the changed slots
// re-evaluated by keep.
func (u *updater) slotList(list []int, keep func(*slot) bool) []int {
	out := make([]int, 0, len(list)+len(u.changedSlots))
	for _, s := range list {
		if _, changed := slices.BinarySearch(u.changedSlots, s); !changed {
			out = append(out, s)
		}
	}
	for _, x := range u.changedSlots {
		if keep(u.newWorld.slot(x)) {
			out = append(out, x)
		}
	}
	slices.Sort(out)
	return out
}

func withSlot(list []int, s int) []int {
	k, found := slices.BinarySearch(list, s)
	if found {
		return list
	}
	return slices.Insert(slices.Clip(list), k, s)
}

func withoutSlot(list []int, s int) []int {
	k, found := slices.BinarySearch(list, s)
	if !found {
		return list
	}
	return slices.Delete(slices.Clone(list), k, k+1)
}

func (u *updater) updateAliases() {
	c, lineage := u.c, u.c.lineage
	var out []bitset
	for ai := range lineage.aliases {
		a, res := lineage.aliases[ai], lineage.aliasResolved[ai]
		nb, ch := patchBits(c.aliasNodes[ai], u.changedSlots, u.numSlots, func(x int) bool { return u.newWorld.aliasHas(a, res, x) })
		if !ch {
			continue
		}
		if out == nil {
			out = slices.Clone(c.aliasNodes)
		}
		out[ai] = nb
	}
	if out != nil {
		c.aliasNodes = out
	}
}

// inAny reports whether slot x is in the node set of any of the aliases.
func (c *Compiled) inAny(aliases []int32, x int) bool {
	for _, a := range aliases {
		if c.aliasNodes[a].has(x) {
			return true
		}
	}
	return false
}

// specHas reports whether slot x is a source of sp.
func (c *Compiled) specHas(sp *srcIPsSpec, x int) bool {
	s := c.world.slot(x)
	if !s.live {
		return false
	}
	if sp.star || c.inAny(sp.memberAliases, x) {
		return true
	}
	for _, p := range sp.addrPfx {
		if c.world.routeOverlaps(x, netipx.RangeOfPrefix(p)) {
			return true
		}
	}
	return false
}

func (u *updater) updateSpecs() {
	c, lineage := u.c, u.c.lineage
	u.specChanged = make([]bool, len(lineage.specs))
	u.specFlip = make([]bool, len(lineage.specs))
	var out []*specState
	for si := range lineage.specs {
		sp := &lineage.specs[si]
		ost := u.old.specs[si]
		nodes, nch := ost.nodes, false
		if sp.isSrc {
			nodes, nch = patchBits(ost.nodes, u.changedSlots, u.numSlots, func(x int) bool { return c.specHas(sp, x) })
		}
		ident, ich := patchBits(ost.identNodes, u.changedSlots, u.numSlots, func(x int) bool { return c.inAny(sp.identAliases, x) })
		// rem: strings that may have lost their source; add: every
		// string a changed node (or the route list) contributes now,
		// unchanged ones too, so that an address two changed nodes
		// share is not lost.
		var rem, add []string
		edit := false
		if !sp.star {
			for _, x := range u.changedSlots {
				var o, n []string
				if ost.identNodes.has(x) {
					o = u.oldSlot(x).ipStrs
				}
				if ident.has(x) {
					n = u.newWorld.slot(x).ipStrs
				}
				if !slices.Equal(o, n) {
					edit = true
					rem = append(rem, o...)
				}
				add = append(add, n...)
			}
			if sp.routes && u.routesChanged {
				edit = true
				rem = append(rem, u.oldWorld.allRoutes...)
				add = append(add, u.newWorld.allRoutes...)
			}
		}
		strs, sum, sch := ost.addrStrs, ost.sum, false
		if edit {
			strs, sum, sch = u.editStrs(sp, ost, ident, rem, add)
		}
		if !nch && !ich && !sch {
			continue
		}
		if out == nil {
			out = slices.Clone(c.specs)
		}
		out[si] = &specState{addrStrs: strs, sum: sum, hash: listHash(sum, len(strs)), nodes: nodes, identNodes: ident}
		if sch {
			u.specChanged[si] = true
			u.specFlip[si] = (len(ost.addrStrs) == 0) != (len(strs) == 0)
		}
	}
	if out != nil {
		c.specs = out
	}
}

// editStrs applies removed and added strings (each possibly still or
// already contributed otherwise) to a spec's sorted SrcIPs list, in time
// linear in the list. An address another unchanged node also holds
// makes it rebuild the list from scratch instead.
func (u *updater) editStrs(sp *srcIPsSpec, ost *specState, ident bitset, rem, add []string) ([]string, uint64, bool) {
	sort.Strings(rem)
	rem = slices.Compact(rem)
	sort.Strings(add)
	add = slices.Compact(add)
	old := ost.addrStrs
	var del, ins []string
	rebuild := false
	for _, s := range rem {
		if _, ok := slices.BinarySearch(add, s); ok {
			continue
		}
		if _, ok := slices.BinarySearch(sp.literals, s); ok {
			continue // also written as an address in the policy
		}
		if a, err := netip.ParseAddr(s); err == nil && u.otherHolders(a) {
			rebuild = true
			break
		}
		if _, ok := slices.BinarySearch(old, s); ok {
			del = append(del, s)
		}
	}
	if rebuild {
		strs := specStrs(u.newWorld, sp, ident)
		return strs, sumStrings(strs), !slices.Equal(strs, old)
	}
	for _, s := range add {
		if _, ok := slices.BinarySearch(old, s); !ok {
			ins = append(ins, s)
		}
	}
	if len(del)+len(ins) == 0 {
		return old, ost.sum, false
	}
	sum := ost.sum
	for _, s := range del {
		sum -= strHash(s)
	}
	for _, s := range ins {
		sum += strHash(s)
	}
	return mergeSorted(old, del, ins), sum, true
}

// mergeSorted returns old without del and with ins (del is a subset of
// old, ins disjoint from it; all sorted), copying the runs in between.
func mergeSorted(old, del, ins []string) []string {
	out := make([]string, 0, len(old)-len(del)+len(ins))
	i := 0
	for len(del) > 0 || len(ins) > 0 {
		// The next edit is a deletion or an insertion, whichever sorts
		// first.
		if len(del) > 0 && (len(ins) == 0 || del[0] < ins[0]) {
			k, _ := slices.BinarySearch(old[i:], del[0])
			out = append(out, old[i:i+k]...)
			i += k + 1
			del = del[1:]
			continue
		}
		k, _ := slices.BinarySearch(old[i:], ins[0])
		out = append(out, old[i:i+k]...)
		out = append(out, ins[0])
		i += k
		ins = ins[1:]
	}
	out = append(out, old[i:]...)
	if len(out) == 0 {
		return nil
	}
	return out
}

// otherHolders reports whether a node other than the changed ones holds
// address a in the new world.
func (u *updater) otherHolders(a netip.Addr) bool {
	h, _ := u.newWorld.ipHolderCounts.holders.get(a)
	n := h.count
	for _, x := range u.changedSlots {
		if slices.Contains(u.newWorld.slot(x).ips, a) {
			n--
		}
	}
	return n > 0
}

func (u *updater) updateClasses() {
	c, old, lineage := u.c, u.old, u.c.lineage
	var changed []int
	for si, ch := range u.specChanged {
		if ch {
			changed = append(changed, si)
		}
	}
	if len(changed) == 0 {
		return
	}
	ct := classTable{classOfSpec: slices.Clone(old.classes.classOfSpec), list: slices.Clone(old.classes.list), free: slices.Clone(old.classes.free)}
	idx := old.classes.byHash.edit()
	find := func(strs []string, hash uint64) int32 {
		ids, _ := idx.get(hash)
		for _, k := range ids {
			if sameList(ct.list[k].addrStrs, strs) {
				return k
			}
		}
		return -1
	}
	type content struct {
		strs []string
		hash uint64
	}
	var contents []content
	for _, si := range changed {
		ost, nst := old.specs[si], c.specs[si]
		contents = append(contents, content{ost.addrStrs, ost.hash}, content{nst.addrStrs, nst.hash})
		// Leave the old class.
		k := ct.classOfSpec[si]
		ci := ct.list[k]
		specs := slices.DeleteFunc(slices.Clone(ci.specs), func(s int32) bool { return s == int32(si) })
		if len(specs) == 0 {
			ct.list[k] = nil
			ct.free = append(ct.free, k)
			ids, _ := idx.get(ci.hash)
			ids = slices.DeleteFunc(slices.Clone(ids), func(id int32) bool { return id == k })
			if len(ids) == 0 {
				idx.del(ci.hash)
			} else {
				idx.set(ci.hash, ids)
			}
		} else {
			ct.list[k] = &classInfo{addrStrs: ci.addrStrs, hash: ci.hash, specs: specs, firstUnitSeq: lineage.classFirst(specs)}
		}
		// Join the new one.
		k = find(nst.addrStrs, nst.hash)
		if k < 0 {
			if len(ct.free) > 0 {
				k = ct.free[len(ct.free)-1]
				ct.free = ct.free[:len(ct.free)-1]
			} else {
				k = int32(len(ct.list))
				ct.list = append(ct.list, nil)
			}
			ids, _ := idx.get(nst.hash)
			idx.set(nst.hash, append(slices.Clip(ids), k))
			specs := []int32{int32(si)}
			ct.list[k] = &classInfo{addrStrs: nst.addrStrs, hash: nst.hash, specs: specs, firstUnitSeq: lineage.classFirst(specs)}
		} else {
			ci := ct.list[k]
			specs := slices.Clone(ci.specs)
			at, _ := slices.BinarySearch(specs, int32(si))
			specs = slices.Insert(specs, at, int32(si))
			ct.list[k] = &classInfo{addrStrs: ci.addrStrs, hash: ci.hash, specs: specs, firstUnitSeq: lineage.classFirst(specs)}
		}
		ct.classOfSpec[si] = k
	}
	ct.byHash = idx.done()
	c.classes = ct
	// Rules merge at the first rule with the same SrcIPs and protocol in
	// the whole policy: where that changed, rules of unchanged sources
	// may move.
	for _, cn := range contents {
		of, nf := old.classFirstMap(cn.strs, cn.hash), c.classFirstMap(cn.strs, cn.hash)
		if maps.Equal(of, nf) {
			continue
		}
		moved := func(pid int32) bool {
			a, okA := of[pid]
			b, okB := nf[pid]
			return okA != okB || a != b
		}
		for _, cc := range []*Compiled{old, c} {
			k := cc.classes.find(cn.strs, cn.hash)
			if k < 0 {
				continue
			}
			for _, s := range cc.classes.list[k].specs {
				if u.specChanged[s] {
					continue
				}
				for _, ui := range lineage.specUnits[s] {
					if un := &lineage.units[ui]; un.protoID >= 0 && moved(un.protoID) {
						u.markFilter(int(ui))
					}
				}
			}
		}
		u.markSelfContent(cn.strs, cn.hash, moved)
	}
}

// markSelfContent marks the users whose autogroup:self SrcIPs are strs,
// for templates whose protocol's first position moved.
func (u *updater) markSelfContent(strs []string, hash uint64, moved func(int32) bool) {
	lineage := u.c.lineage
	var tmpl []int
	for ti, t := range lineage.selfTemplates {
		if t.ports != nil && moved(t.protoID) {
			tmpl = append(tmpl, ti)
		}
	}
	if len(tmpl) == 0 || len(strs) == 0 {
		return
	}
	a, err := netip.ParseAddr(strs[0])
	if err != nil {
		return // self SrcIPs hold addresses only
	}
	check := func(uid ids.UserID) {
		for _, ti := range tmpl {
			if e, ok := u.c.selfStates[ti].srcStrs.get(uid); ok && e.hash == hash && slices.Equal(e.strs, strs) {
				u.markUser(uid)
				return
			}
		}
	}
	// The selfs are updated later; entries of changed users are marked
	// there, so the new world's owner of the first address is enough,
	// unless it is not known.
	if h, _ := u.newWorld.ipHolderCounts.holders.get(a); h.count == 1 && h.slot >= 0 {
		if s := u.newWorld.slot(int(h.slot)); s.live && !s.tagged() {
			check(s.node.UserID)
		}
		return
	}
	for _, ti := range tmpl {
		u.c.selfStates[ti].srcStrs.each(func(uid ids.UserID, e hashedStrs) {
			if e.hash == hash && slices.Equal(e.strs, strs) {
				u.markUser(uid)
			}
		})
	}
}

// markFilter marks the nodes unit ui may concern.
func (u *updater) markFilter(ui int) {
	if u.c.lineage.units[ui].kind == unitWild {
		u.allFilters = true
		return
	}
	u.filterDirty.or(u.c.coveredNodes(ui))
}

// markUser marks the untagged nodes of user uid (autogroup:self rules).
func (u *updater) markUser(uid ids.UserID) {
	for _, i := range u.newWorld.usersNodes(uid) {
		u.filterDirty.set(i)
	}
}

func (u *updater) updateUnits() {
	c, old, lineage := u.c, u.old, u.c.lineage
	w := u.newWorld
	var out []unitNodeSets
	for ui := range lineage.units {
		un := &lineage.units[ui]
		od := old.unitSets[ui]
		nd := od
		var c1, c2 bool
		switch un.kind {
		case unitVia:
			nd.viaNodes, c1 = patchBits(od.viaNodes, u.changedSlots, u.numSlots, func(x int) bool { return c.inAny(un.via, x) })
			nd.visibleDsts, c2 = patchBits(od.visibleDsts, u.changedSlots, u.numSlots, func(x int) bool {
				return nd.viaNodes.has(x) && c.viaEntries(x, un.addrs)
			})
		case unitAddrs:
			nd.coveredNodes, c1 = patchBits(od.coveredNodes, u.changedSlots, u.numSlots, func(x int) bool {
				for _, e := range un.addrs {
					if c.addrConcerns(x, e) {
						return true
					}
				}
				return false
			})
			nd.visibleDsts, c2 = patchBits(od.visibleDsts, u.changedSlots, u.numSlots, func(x int) bool {
				s := w.slot(x)
				for _, e := range un.addrs {
					if w.routeOverlaps(x, e.ipRange) {
						return true
					}
					for _, ip := range s.ips {
						if e.ipRange.Contains(ip) {
							return true
						}
					}
				}
				return un.wholeInternet && s.exit
			})
		case unitCap:
			nd.coveredNodes, c1 = patchBits(od.coveredNodes, u.changedSlots, u.numSlots, func(x int) bool { return c.capTouches(x, un.caps, true) })
			if un.countsForVisibility {
				nd.visibleDsts, c2 = patchBits(od.visibleDsts, u.changedSlots, u.numSlots, func(x int) bool { return c.capTouches(x, un.caps, false) })
			}
		}
		if c1 || c2 {
			if out == nil {
				out = slices.Clone(c.unitSets)
			}
			out[ui] = nd
		}
	}
	if out != nil {
		c.unitSets = out
	}
	for ui := range lineage.units {
		if u.specChanged[lineage.units[ui].spec] {
			u.markFilter(ui)
		}
	}
}

// capTouches reports whether slot x is a destination of a CapGrant rule:
// named, or with an address inside a prefix, or (for filters) routing a
// subnet overlapping one.
func (c *Compiled) capTouches(x int, caps []capEntry, routes bool) bool {
	s := c.world.slot(x)
	if !s.live {
		return false
	}
	for _, ce := range caps {
		if c.capNodes(ce).has(x) {
			return true
		}
		for _, p := range ce.prefixes {
			rg := netipx.RangeOfPrefix(p)
			for _, ip := range s.ips {
				if rg.Contains(ip) {
					return true
				}
			}
			if routes && c.world.routeOverlaps(x, rg) {
				return true
			}
		}
	}
	return false
}

// changedUsers returns the owners, before and after, of the changed
// untagged nodes.
func (u *updater) changedUsers() []ids.UserID {
	var out []ids.UserID
	for _, x := range u.changedSlots {
		for _, s := range []*slot{u.oldSlot(x), u.newWorld.slot(x)} {
			if s.live && !s.tagged() {
				out = append(out, s.node.UserID)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (u *updater) updateSelf() {
	c, old, lineage := u.c, u.old, u.c.lineage
	if len(lineage.selfTemplates) == 0 {
		return
	}
	w := u.newWorld
	users := u.changedUsers()
	if len(users) == 0 {
		return
	}
	c.selfStates = slices.Clone(old.selfStates)
	for ti, t := range lineage.selfTemplates {
		st := old.selfStates[ti]
		srcE, ipE := st.srcStrs.edit(), st.userIPs.edit()
		srcSet := c.specs[t.spec].nodes
		set := func(e *pmapEdit[ids.UserID, hashedStrs], uid ids.UserID, strs []string) {
			cur, _ := e.get(uid)
			if slices.Equal(cur.strs, strs) {
				return
			}
			if len(strs) == 0 {
				e.del(uid)
			} else {
				e.set(uid, hashed(strs))
			}
			u.markUser(uid)
		}
		for _, uid := range users {
			members := w.usersNodes(uid)
			if t.ports == nil {
				set(ipE, uid, selfUserIPs(w, members))
			}
			set(srcE, uid, selfSrcStrs(w, members, srcSet))
		}
		c.selfStates[ti] = selfState{srcStrs: srcE.done(), userIPs: ipE.done()}
	}
}

func (u *updater) updateSSH() {
	c, old, lineage := u.c, u.old, u.c.lineage
	w := u.newWorld
	if len(lineage.ssh) == 0 {
		return
	}
	c.ssh = slices.Clone(old.ssh)
	for ri := range lineage.ssh {
		sc, ost := &lineage.ssh[ri], old.ssh[ri]
		src, sch := patchBits(ost.src, u.changedSlots, u.numSlots, func(x int) bool { return c.inAny(sc.src, x) })
		dst, dch := patchBits(ost.dst, u.changedSlots, u.numSlots, func(x int) bool { return c.inAny(sc.dst, x) })
		var users []ids.UserID
		tagged := false
		for _, x := range u.changedSlots {
			for k, s := range []*slot{u.oldSlot(x), w.slot(x)} {
				in := ost.src.has(x)
				if k == 1 {
					in = src.has(x)
				}
				if !in {
					continue
				}
				if s.tagged() {
					tagged = true
				} else if _, ok := w.userByID[s.node.UserID]; ok {
					users = append(users, s.node.UserID)
				}
			}
		}
		if !sch && !dch && len(users) == 0 && !tagged {
			continue
		}
		st := &sshState{src: src, dst: dst, userIDs: ost.userIDs, byUser: ost.byUser, tagged: ost.tagged}
		slices.Sort(users)
		users = slices.Compact(users)
		be := ost.byUser.edit()
		var changedUsers []ids.UserID
		for _, uid := range users {
			ps := userPrincipals(w, uid, src)
			cur, _ := be.get(uid)
			if principalsEqual(cur, ps) {
				continue
			}
			changedUsers = append(changedUsers, uid)
			k, found := slices.BinarySearch(st.userIDs, uid)
			if len(ps) == 0 {
				be.del(uid)
				if found {
					st.userIDs = slices.Delete(slices.Clone(st.userIDs), k, k+1)
				}
			} else {
				be.set(uid, ps)
				if !found {
					st.userIDs = slices.Insert(slices.Clone(st.userIDs), k, uid)
				}
			}
		}
		st.byUser = be.done()
		taggedChanged := false
		if tagged {
			if t := taggedPrincipals(w, src); !principalsEqual(t, ost.tagged) {
				st.tagged = t
				taggedChanged = true
			}
		}
		if len(changedUsers) > 0 || taggedChanged {
			u.sshDirty.or(dst)
			if sc.self || sc.localparts != nil {
				for _, uid := range changedUsers {
					for _, i := range w.usersNodes(uid) {
						u.sshDirty.set(i)
					}
				}
			}
		}
		c.ssh[ri] = st
	}
}

// userPrincipals returns the addresses of user uid's nodes in src, sorted.
func userPrincipals(w *world, uid ids.UserID, src bitset) []*tailcfg.SSHPrincipal {
	var ps []*tailcfg.SSHPrincipal
	for _, i := range w.usersNodes(uid) {
		if src.has(i) {
			for _, ip := range w.slot(i).ipStrs {
				ps = append(ps, &tailcfg.SSHPrincipal{NodeIP: ip})
			}
		}
	}
	sortPrincipals(ps)
	return ps
}

func principalsEqual(a, b []*tailcfg.SSHPrincipal) bool {
	return slices.EqualFunc(a, b, func(x, y *tailcfg.SSHPrincipal) bool { return x.NodeIP == y.NodeIP })
}

func (u *updater) updateApprovers() {
	c, lineage := u.c, u.c.lineage
	c.exitApprovers, _ = patchBits(c.exitApprovers, u.changedSlots, u.numSlots, func(x int) bool { return c.inAny(lineage.exitApproverAliases, x) })
	var out []bitset
	for k, owners := range lineage.routeApproverAliases {
		b, ch := patchBits(c.routeApprovers[k], u.changedSlots, u.numSlots, func(x int) bool { return c.inAny(owners, x) })
		if ch {
			if out == nil {
				out = slices.Clone(c.routeApprovers)
			}
			out[k] = b
		}
	}
	if out != nil {
		c.routeApprovers = out
	}
}

// updateNodes recomputes the changed nodes' unit lists and capabilities.
func (u *updater) updateNodes() {
	c, lineage := u.c, u.c.lineage
	for _, x := range u.changedSlots {
		st := u.nodes.mut(x)
		*st = nodeState{}
		if !u.newWorld.slot(x).live {
			continue
		}
		for ui := range lineage.units {
			if !lineage.isWild.has(ui) && c.coveredNodes(ui).has(x) {
				st.units = append(st.units, int32(ui))
			}
		}
		if lineage.hasCaps {
			st.caps = c.capsFor(x)
		}
	}
}

func (u *updater) updateVis() {
	c, old, lineage := u.c, u.old, u.c.lineage
	if c.allowAll {
		if u.addsOrRemoves {
			u.allPeers = true
		}
		return
	}
	n := u.numSlots
	v := old.visibility
	if lineage.hasSelf {
		v.selfSrc, _ = patchBits(old.visibility.selfSrc, u.changedSlots, n, func(x int) bool {
			for _, s := range lineage.selfSpecs {
				if c.specs[s].nodes.has(x) {
					return true
				}
			}
			return false
		})
	}
	// Grants whose visible destinations changed.
	changed := newBitset(len(lineage.grants))
	flipped := newBitset(len(lineage.grants))
	anyChanged, anyFlipped := false, false
	for gi, g := range lineage.grants {
		for _, ui := range g.visUnits {
			un := &lineage.units[ui]
			if un.needsSources && u.specFlip[un.spec] {
				flipped.set(gi)
				anyFlipped = true
			}
			if flipped.has(gi) || u.vdstChanged(int(ui)) {
				changed.set(gi)
				anyChanged = true
				break
			}
		}
	}
	// Signatures of the changed nodes.
	sigs := slices.Clone(old.visibility.signatures)
	idx := old.visibility.signatureOf.edit()
	move := func(sig int32, x int, add bool) {
		s := sigs[sig]
		ns := &sigInfo{grants: s.grants, reach: s.reach}
		if add {
			ns.members = withSlot(s.members, x)
		} else if ns.members = withoutSlot(s.members, x); len(ns.members) == 0 {
			ns.reach = &reachCell{} // unused now: do not keep its reach set alive
		}
		sigs[sig] = ns
	}
	for _, x := range u.changedSlots {
		oldSig := int32(-1)
		if u.oldSlot(x).live {
			oldSig = old.nodes.at(x).visSignature
		}
		newSig := int32(-1)
		if u.newWorld.slot(x).live {
			gs := c.sigGrants(x)
			key := sigKey(gs)
			id, ok := idx.get(key)
			if !ok {
				id = int32(len(sigs))
				sigs = append(sigs, &sigInfo{grants: gs, reach: &reachCell{}})
				idx.set(key, id)
			}
			newSig = id
			u.nodes.mut(x).visSignature = id
		}
		if oldSig == newSig {
			continue
		}
		if oldSig >= 0 {
			move(oldSig, x, false)
		}
		if newSig >= 0 {
			move(newSig, x, true)
		}
	}
	// Reach sets: patch the changed nodes' bits of those computed, or
	// drop them where a grant's destinations changed wholesale.
	if anyChanged {
		for si, s := range sigs {
			hit, flip := false, false
			for _, g := range s.grants {
				hit = hit || changed.has(int(g))
				flip = flip || flipped.has(int(g))
			}
			if !hit {
				continue
			}
			ns := &sigInfo{grants: s.grants, members: s.members, reach: &reachCell{}}
			if prev := s.reach.p.Load(); prev != nil && !flip {
				r := prev.grown(n)
				for _, x := range u.changedSlots {
					if c.reaches(s.grants, x) {
						r.set(x)
					} else {
						r.clear(x)
					}
				}
				ns.reach.p.Store(&r)
			}
			sigs[si] = ns
		}
	}
	v.signatures = sigs
	v.signatureOf = idx.done()
	c.visibility = v
	// Peer sets: other nodes gain or lose only changed nodes, except
	// where a grant's destinations changed wholesale.
	for _, x := range u.changedSlots {
		p, q := old.peersOf(x, n), c.peersOf(x, n)
		if os, ns := u.oldSlot(x), u.newWorld.slot(x); os.live && ns.live && os.node.ID != ns.node.ID {
			p.or(q) // the slot now holds another node: its peers lose one, gain another
		} else {
			p.xor(q)
		}
		u.peerDirty.or(p)
	}
	if anyFlipped {
		for gi, g := range lineage.grants {
			if !flipped.has(gi) {
				continue
			}
			for _, cc := range []*Compiled{old, c} {
				u.peerDirty.or(cc.specs[g.spec].nodes)
				for _, ui := range g.visUnits {
					u.peerDirty.or(cc.visibleDsts(int(ui)))
				}
			}
		}
	}
}

// vdstChanged reports whether unit ui's visible destinations changed.
func (u *updater) vdstChanged(ui int) bool {
	o, n := u.old.visibleDsts(ui), u.c.visibleDsts(ui)
	for _, x := range u.changedSlots {
		if o.has(x) != n.has(x) {
			return true
		}
	}
	return false
}

// reaches reports whether slot x is a visible destination of any of the
// grants.
func (c *Compiled) reaches(grants []int32, x int) bool {
	for _, g := range grants {
		for _, ui := range c.lineage.grants[g].visUnits {
			if c.unitLive(int(ui)) && c.visibleDsts(int(ui)).has(x) {
				return true
			}
		}
	}
	return false
}

func (u *updater) updateCaches() {
	c, old := u.c, u.old
	if u.allFilters {
		c.cache = newVec[nodeCache](u.numSlots)
		return
	}
	e := old.cache.edit(copyCacheChunk)
	u.filterDirty.each(func(i int) { e.mut(i).filter.Store(nil) })
	u.sshDirty.each(func(i int) { e.mut(i).ssh.Store(nil) })
	for _, x := range u.changedSlots {
		e.mut(x).filter.Store(nil)
		e.mut(x).ssh.Store(nil)
	}
	c.cache = e.v
}

func (u *updater) affected() *Affected {
	w := u.newWorld
	set := newBitset(u.numSlots)
	set.or(u.filterDirty)
	set.or(u.sshDirty)
	set.or(u.peerDirty)
	for _, x := range u.changedSlots {
		set.set(x)
	}
	for i := range set {
		if i < len(w.all) {
			set[i] &= w.all[i]
		} else {
			set[i] = 0
		}
	}
	all := u.allFilters || u.allPeers || (w.live > 0 && set.count() == w.live)
	return &Affected{all: all, world: w, set: set, gone: u.gone}
}
