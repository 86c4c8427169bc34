package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/hsctl/headscale/pkg/ids"
	"go4.org/netipx"
	"tailscale.com/tailcfg"
)

// CompileOptions are server settings the compiled output depends on.
type CompileOptions struct {
	// ServerURL is the control server's public URL. SSH "check" rules
	// send clients to ServerURL + "/machine/ssh/action/$SRC_NODE_ID/to/
	// $DST_NODE_ID?local_user=$LOCAL_USER" (the client fills in the
	// variables), as Headscale does.
	ServerURL string
}

// Compiled is a policy compiled against a set of users and nodes: per
// node packet filters, SSH policies, capabilities and peer visibility.
// It is immutable once built (per-node results are computed on first use
// and cached) and safe for concurrent use; Update derives a new
// Compiled for changed nodes without disturbing this one.
//
// What depends only on the policy and the users (the alias table, the
// rule units and their order) lives in the lineage, shared by every
// compilation Update derives; the rest is per compilation, copied on
// write where Update changes it.
type Compiled struct {
	pol      *Policy
	opts     CompileOptions
	w        *world
	lin      *lineage
	allowAll bool // no policy, or neither "acls" nor "grants": allow-all filter
	warnings []string

	aliasNodes     []bitset     // per lin.aliases: the nodes it names or covers
	specs          []*specState // per lin.specs
	udyn           []unitDyn    // per lin.units
	classes        classTable
	selfs          []selfState // per lin.selfTs
	ssh            []*sshState // per lin.ssh
	exitApprovers  bitset
	routeApprovers []bitset // per lin.routeOwners
	vis            visibility

	nodes vec[nodeState] // per slot
	cache vec[nodeCache] // per slot
}

// lineage is what the compilations derived from one CompileWithOptions
// call by Update share: everything that depends only on the policy and
// the users.
type lineage struct {
	aliases   []alias
	aliasRes  []*resolved // addrs, identity and uids (nodes unset: see Compiled.aliasNodes)
	specs     []strsSpec
	specUnits [][]int32         // per spec: units whose SrcIPs come from it
	specFirst []map[int32]int32 // per spec: protocol -> seq of its first merge-ordered unit
	units     []unit
	wildUnits []int32 // units visited for every node
	isWild    bitset  // over units
	grants    []grantInfo
	selfTs    []selfTemplate
	selfSpecs []int32 // sources of grants with an autogroup:self destination
	hasSelf   bool
	ssh       []sshRuleC
	attrs     []attrRule
	capsOn    bool // nodeAttrs or randomizeClientPort present
	randomize bool
	exitOwner []int32   // aliases
	routeOwn  [][]int32 // per pol.routes: aliases
	filters   *filterTable
}

// nodeState is a node's compiled state that is not a cache.
type nodeState struct {
	units []int32 // non-wild units whose destinations may concern it
	caps  []tailcfg.NodeCapability
	sig   int32 // visibility signature
}

// nodeCache holds a node's results computed on first use.
type nodeCache struct {
	filter atomic.Pointer[nodeFilter]
	ssh    atomic.Pointer[sshResult]
}

func copyCacheChunk(dst, src *[chunkLen]nodeCache) {
	for i := range src {
		if f := src[i].filter.Load(); f != nil {
			dst[i].filter.Store(f)
		}
		if r := src[i].ssh.Load(); r != nil {
			dst[i].ssh.Store(r)
		}
	}
}

type unitKind uint8

const (
	unitWild  unitKind = iota + 1 // dst "*": {"IP": "*"}
	unitNodes                     // dst names nodes: each node's own addresses
	unitAddrs                     // dst is addresses (hosts, prefixes, autogroup:internet)
	unitCap                       // CapGrant rule (app grants and companions)
	unitVia                       // via grant: only nodes with a via tag and a matching route
)

// unit is one (grant, ip spec, destination) piece of the filter; per node,
// units become FilterRules (merged by SrcIPs+IPProto) after keeping only
// the destinations that concern the node. Units never change within a
// lineage; what depends on nodes is in unitDyn, the sources' specState
// and the alias node sets.
type unit struct {
	seq           int32
	kind          unitKind
	grant         int32
	spec          int32 // SrcIPs
	protoID       int32 // merge key part; -1 for CapGrant rules
	proto         []int
	ports         []tailcfg.PortRange
	alias         int32   // unitNodes: the destination alias
	via           []int32 // unitVia: via tag aliases
	addrs         []addrEntry
	caps          []capEntry
	mayDie        bool // no rule while the sources have no address (regular and via units)
	vis           bool // its destinations count for peer visibility
	mainCap       bool // an app grant's own CapGrant rule: SrcIPs never null
	wholeInternet bool // unitAddrs: exactly autogroup:internet (exit nodes become visible)
}

// unitDyn is the node-dependent part of a unit.
type unitDyn struct {
	nodes bitset // unitVia: nodes holding a via tag
	cover bitset // unitAddrs, unitCap: nodes whose filter may get the rule
	vdst  bitset // unitAddrs, unitCap (main), unitVia: visible destinations
}

type addrEntry struct {
	str      string
	rng      netipx.IPRange
	internet bool // inside autogroup:internet: exit nodes get it
}

// capEntry is one destination of a CapGrant rule: the nodes of an
// identity alias or of a source list, or address prefixes.
type capEntry struct {
	alias  int32 // identity destination (-1: none)
	ident  int32 // companion rules: the spec whose identity nodes are destinations (-1: none)
	pfxs   []netip.Prefix
	capMap tailcfg.PeerCapMap
}

// grantInfo is a grant's sources and the units whose destinations make
// nodes visible to them.
type grantInfo struct {
	spec     int32
	visUnits []int32
}

// selfTemplate is the autogroup:self part of a grant, expanded per node.
type selfTemplate struct {
	seq     int32
	spec    int32 // the grant's sources
	proto   []int
	protoID int32
	ports   []tailcfg.PortRange // nil: the app (CapGrant) part
	app     tailcfg.PeerCapMap
}

// selfState is a self template's per-user SrcIPs.
type selfState struct {
	srcStrs pmap[ids.UserID, hashedStrs] // user -> addresses of its nodes among the sources
	userIPs pmap[ids.UserID, hashedStrs] // app part: user -> addresses of all its nodes
}

type hashedStrs struct {
	strs []string
	hash uint64
}

// strsSpec is where a SrcIPs list comes from: a grant's sources, or the
// destinations of an app grant (for the reverse companion rules).
type strsSpec struct {
	isSrc    bool
	star     bool           // autogroup:danger-all: ["*"], every node a source
	members  []int32        // aliases whose nodes are sources
	idents   []int32        // identity aliases: their nodes' addresses are listed
	lits     []string       // address strings listed as written (sorted, unique)
	routes   bool           // "*": every approved subnet route is listed
	addrPfx  []netip.Prefix // routers with an overlapping route are sources
	prefixes []netip.Prefix // address sources (companion capabilities)
}

// specState is a strsSpec resolved against the nodes.
type specState struct {
	strs  []string // sorted, unique; nil when empty
	sum   uint64   // sum of the element hashes (hash derives from it)
	hash  uint64
	nodes bitset // sources: nodes named, covered, or routing a subnet inside
	ident bitset // nodes named by identity aliases
}

// Compile compiles p against users and nodes with default options. It
// returns warnings (e.g. users named in the policy that do not exist:
// they are ignored, so one unknown user does not break a group) and an
// error for problems that make the policy unusable against this data
// (e.g. a user token matching several users).
func Compile(p *Policy, users []User, nodes []Node) (*Compiled, []string, error) {
	return CompileWithOptions(p, users, nodes, CompileOptions{})
}

// CompileWithOptions is Compile with server settings (the SSH check URL).
func CompileWithOptions(p *Policy, users []User, nodes []Node, opts CompileOptions) (*Compiled, []string, error) {
	w, err := newWorld(users, nodes)
	if err != nil {
		return nil, nil, err
	}
	c := &Compiled{
		pol:   p,
		opts:  opts,
		w:     w,
		lin:   &lineage{filters: newFilterTable()},
		cache: newVec[nodeCache](w.n),
	}
	b := &builder{c: c, nodeUnits: make([][]int32, w.n)}
	if p == nil {
		c.allowAll = true
		b.finish()
		return c, nil, nil
	}
	r := newResolver(p, w)
	r.nodesOut = &c.aliasNodes
	b.r = r
	c.allowAll = !p.hasACLs && !p.hasGrants
	if !c.allowAll {
		b.compileGrants()
	}
	b.compileSSH()
	b.compileNodeAttrs()
	b.compileApprovers()
	// Resolve every group once so unknown members are reported even when
	// no rule uses the group.
	for name := range p.groups {
		r.userIDs(alias{kind: kindGroup, text: name})
	}
	if len(r.errs) > 0 {
		return nil, r.warnings, errors.New("compile policy:\n" + strings.Join(r.errs, "\n"))
	}
	sort.Strings(r.warnings)
	c.warnings = r.warnings
	b.finish()
	return c, r.warnings, nil
}

// builder holds what a full compilation needs besides the result.
type builder struct {
	c         *Compiled
	r         *resolver
	nodeUnits [][]int32
	nodeCaps  [][]tailcfg.NodeCapability
	protoIDs  map[string]int32
}

func (b *builder) finish() {
	c, lin := b.c, b.c.lin
	if b.r != nil {
		lin.aliases = b.r.aliases
		// Keep what Update needs, not this compilation's node sets.
		lin.aliasRes = make([]*resolved, len(b.r.list))
		for i, res := range b.r.list {
			lin.aliasRes[i] = &resolved{addrs: res.addrs, identity: res.identity, uids: res.uids, idx: res.idx}
		}
	}
	lin.isWild = newBitset(len(lin.units))
	for _, ui := range lin.wildUnits {
		lin.isWild.set(int(ui))
	}
	slices.Sort(lin.wildUnits)
	c.buildClasses()
	sigOf := c.buildVis()
	c.nodes = newVec[nodeState](c.w.n)
	for i := range c.w.n {
		st := c.nodes.at(i)
		st.units = b.nodeUnits[i]
		if b.nodeCaps != nil {
			st.caps = b.nodeCaps[i]
		}
		st.sig = sigOf[i]
	}
}

func (b *builder) protoID(p []int) int32 {
	if b.protoIDs == nil {
		b.protoIDs = map[string]int32{}
	}
	k := fmt.Sprint(p)
	id, ok := b.protoIDs[k]
	if !ok {
		id = int32(len(b.protoIDs))
		b.protoIDs[k] = id
	}
	return id
}

// srcSpec resolves a grant's src list: SrcIPs the way Tailscale's control
// plane renders them (every address of every node an identity alias
// names, listed one by one; each address alias as written; for "*" the
// tailnet ranges plus every approved subnet route), and the source nodes.
func (b *builder) srcSpec(srcs []alias) int32 {
	sp := strsSpec{isSrc: true}
	for _, a := range srcs {
		res := b.r.resolve(a)
		sp.members = append(sp.members, res.idx)
		switch {
		case a.is(agDangerAll):
			sp.star = true
			sp.prefixes = append(sp.prefixes, res.addrs...)
		case a.kind == kindWildcard:
			sp.prefixes = append(sp.prefixes, res.addrs...)
			sp.lits = append(sp.lits, ipSetStrings(b.c.w.tailnetSet)...)
			sp.routes = true
		case res.identity:
			sp.idents = append(sp.idents, res.idx)
		default:
			for _, p := range res.addrs {
				sp.prefixes = append(sp.prefixes, p)
				sp.addrPfx = append(sp.addrPfx, p)
				if p.IsSingleIP() {
					sp.lits = append(sp.lits, p.Addr().String())
				} else {
					sp.lits = append(sp.lits, p.String())
				}
			}
		}
	}
	return b.addSpec(sp)
}

func (b *builder) addSpec(sp strsSpec) int32 {
	c, lin := b.c, b.c.lin
	sort.Strings(sp.lits)
	sp.lits = slices.Compact(sp.lits)
	id := int32(len(lin.specs))
	lin.specs = append(lin.specs, sp)
	lin.specUnits = append(lin.specUnits, nil)
	lin.specFirst = append(lin.specFirst, nil)
	c.specs = append(c.specs, b.buildSpec(&lin.specs[id]))
	return id
}

func (b *builder) buildSpec(sp *strsSpec) *specState {
	w := b.c.w
	nodesOf := func(a int32) bitset { return b.c.aliasNodes[a] }
	st := &specState{ident: newBitset(w.n)}
	for _, a := range sp.idents {
		st.ident.or(nodesOf(a))
	}
	if sp.isSrc {
		st.nodes = newBitset(w.n)
		if sp.star {
			st.nodes.or(w.all)
		} else {
			for _, a := range sp.members {
				st.nodes.or(nodesOf(a))
			}
			// Routers whose subnets are inside a source act for them.
			for _, p := range sp.addrPfx {
				rg := netipx.RangeOfPrefix(p)
				for _, ri := range w.routers {
					if w.routeOverlaps(ri, rg) {
						st.nodes.set(ri)
					}
				}
			}
		}
	}
	if sp.star {
		st.strs = []string{"*"}
	} else {
		st.strs = specStrs(w, sp, st.ident)
	}
	st.sum = sumStrings(st.strs)
	st.hash = listHash(st.sum, len(st.strs))
	return st
}

// specStrs builds a SrcIPs list from scratch.
func specStrs(w *world, sp *strsSpec, ident bitset) []string {
	strs := slices.Clone(sp.lits)
	ident.each(func(i int) { strs = append(strs, w.slot(i).ipStrs...) })
	if sp.routes {
		strs = append(strs, w.allRoutes...)
	}
	sort.Strings(strs)
	strs = slices.Compact(strs)
	if len(strs) == 0 {
		return nil
	}
	return strs
}

func (b *builder) compileGrants() {
	c, lin, r := b.c, b.c.lin, b.r
	var seq int32
	specOf := map[string]int32{}
	for gi := range c.pol.grants {
		g := &c.pol.grants[gi]
		skey := aliasListKey(g.src)
		spec, ok := specOf[skey]
		if !ok {
			spec = b.srcSpec(g.src)
			specOf[skey] = spec
		}
		lin.grants = append(lin.grants, grantInfo{spec: spec})
		if len(g.via) > 0 {
			b.compileVia(g, int32(gi), spec, &seq)
			continue
		}
		var selfDst bool
		var other []alias
		for _, d := range g.dst {
			if d.is(agSelf) {
				selfDst = true
			} else {
				other = append(other, d)
			}
		}
		if len(g.src) == 0 || len(g.dst) == 0 {
			continue
		}
		// Regular destinations. Their units exist even while the
		// sources have no address (they then produce nothing), so the
		// unit list does not depend on the nodes.
		for _, ip := range g.ip {
			pid := b.protoID(ip.proto.nums)
			for _, d := range other {
				u := unit{seq: seq, grant: int32(gi), spec: spec, protoID: pid, proto: ip.proto.nums, ports: ip.ports,
					alias: -1, mayDie: true, vis: true}
				seq++
				res := r.resolve(d)
				var dyn unitDyn
				switch {
				case d.kind == kindWildcard:
					u.kind = unitWild
				case res.identity:
					u.kind = unitNodes
					u.alias = res.idx
				default:
					u.kind = unitAddrs
					u.addrs = c.addrEntries(d, res)
					u.wholeInternet = wholeInternet(c.w, u.addrs)
					dyn.cover = c.addrCoverage(u.addrs, true)
					dyn.vdst = c.addrCoverage(u.addrs, false)
				}
				b.addUnit(u, dyn)
			}
		}
		if len(g.app) > 0 && len(other) > 0 {
			b.compileApp(g, int32(gi), other, spec, &seq)
		}
		if selfDst {
			t := selfTemplate{seq: seq, spec: spec, app: g.app}
			seq++
			lin.selfSpecs = append(lin.selfSpecs, spec)
			lin.hasSelf = true
			for _, ip := range g.ip {
				tt := t
				tt.proto, tt.ports = ip.proto.nums, ip.ports
				tt.protoID = b.protoID(tt.proto)
				tt.seq = seq
				seq++
				b.addSelf(tt)
			}
			if len(g.app) > 0 {
				tt := t
				tt.protoID = -1
				tt.seq = seq
				seq += int32(1 + len(companionCaps))
				b.addSelf(tt)
			}
		}
	}
}

func aliasListKey(as []alias) string {
	parts := make([]string, len(as))
	for i, a := range as {
		parts[i] = a.text
	}
	return strings.Join(parts, "\x00")
}

// addrEntries renders an address destination as DstPorts IPs: a host or
// prefix as itself, autogroup:internet as its ranges.
func (c *Compiled) addrEntries(d alias, res *resolved) []addrEntry {
	if d.is(agInternet) {
		var out []addrEntry
		// Tailscale writes the internet as ranges, even prefix-aligned
		// ones (2000::/3 is "2000::-3fff:ffff:...").
		for _, rg := range c.w.internet.Ranges() {
			out = append(out, addrEntry{str: rg.String(), rng: rg, internet: true})
		}
		return out
	}
	out := make([]addrEntry, 0, len(res.addrs))
	for _, p := range res.addrs {
		rg := netipx.RangeOfPrefix(p)
		s := p.String()
		if p.IsSingleIP() {
			s = p.Addr().String()
		}
		out = append(out, addrEntry{str: s, rng: rg, internet: c.w.internet.ContainsRange(rg)})
	}
	return out
}

// wholeInternet reports whether entries are exactly autogroup:internet:
// only then are exit nodes visible destinations (Headscale's peer rule).
func wholeInternet(w *world, entries []addrEntry) bool {
	n := 0
	for _, e := range entries {
		if e.internet {
			n++
		}
	}
	return n > 0 && n == len(w.internet.Ranges()) && n == len(entries)
}

// addrCoverage returns the nodes address entries concern: nodes with an
// address inside, routers whose subnet routes overlap, and exit nodes
// for entries inside the internet (for filters; forVisibility keeps
// Headscale's narrower peer rule: exit nodes only for the whole internet).
func (c *Compiled) addrCoverage(entries []addrEntry, forFilter bool) bitset {
	w := c.w
	b := newBitset(w.n)
	for _, e := range entries {
		w.nodesInRange(e.rng, b.set)
		for _, ri := range w.routers {
			if w.routeOverlaps(ri, e.rng) {
				b.set(ri)
			}
		}
		if e.internet && forFilter {
			for _, x := range w.exitNodes {
				b.set(x)
			}
		}
	}
	if !forFilter && wholeInternet(w, entries) {
		for _, x := range w.exitNodes {
			b.set(x)
		}
	}
	return b
}

// addUnit records u and indexes it under the nodes it may concern.
func (b *builder) addUnit(u unit, dyn unitDyn) {
	c, lin := b.c, b.c.lin
	idx := int32(len(lin.units))
	lin.units = append(lin.units, u)
	c.udyn = append(c.udyn, dyn)
	lin.specUnits[u.spec] = append(lin.specUnits[u.spec], idx)
	if u.kind != unitCap && u.kind != unitVia {
		if lin.specFirst[u.spec] == nil {
			lin.specFirst[u.spec] = map[int32]int32{}
		}
		if _, ok := lin.specFirst[u.spec][u.protoID]; !ok {
			lin.specFirst[u.spec][u.protoID] = u.seq
		}
	}
	if u.vis {
		lin.grants[u.grant].visUnits = append(lin.grants[u.grant].visUnits, idx)
	}
	if u.kind == unitWild {
		lin.wildUnits = append(lin.wildUnits, idx)
		return
	}
	cover := c.cover(int(idx))
	n := c.w.n
	if n > 64 && cover.count() > n/2 {
		lin.wildUnits = append(lin.wildUnits, idx)
		return
	}
	cover.each(func(i int) { b.nodeUnits[i] = append(b.nodeUnits[i], idx) })
}

// capCoverage returns the nodes a CapGrant rule may concern.
func (c *Compiled) capCoverage(caps []capEntry) bitset {
	w := c.w
	cover := newBitset(w.n)
	for _, ce := range caps {
		cover.or(c.capNodes(ce))
		for _, p := range ce.pfxs {
			rg := netipx.RangeOfPrefix(p)
			w.nodesInRange(rg, cover.set)
			for _, ri := range w.routers {
				if w.routeOverlaps(ri, rg) {
					cover.set(ri)
				}
			}
		}
	}
	return cover
}

// capNodes returns the nodes whose own addresses are a CapGrant
// destination.
func (c *Compiled) capNodes(ce capEntry) bitset {
	switch {
	case ce.alias >= 0:
		return c.aliasNodes[ce.alias]
	case ce.ident >= 0:
		return c.specs[ce.ident].ident
	}
	return nil
}

// cover returns the nodes unit ui may concern (all nodes for "*").
func (c *Compiled) cover(ui int) bitset {
	u := &c.lin.units[ui]
	switch u.kind {
	case unitWild:
		return c.w.all
	case unitNodes:
		return c.aliasNodes[u.alias]
	case unitVia:
		return c.udyn[ui].nodes
	}
	return c.udyn[ui].cover
}

// vdst returns the nodes unit ui makes visible to its sources.
func (c *Compiled) vdst(ui int) bitset {
	u := &c.lin.units[ui]
	switch u.kind {
	case unitWild:
		return c.w.all
	case unitNodes:
		return c.aliasNodes[u.alias]
	}
	return c.udyn[ui].vdst
}

// unitLive reports whether unit ui produces anything: regular and via
// units need sources with an address.
func (c *Compiled) unitLive(ui int) bool {
	u := &c.lin.units[ui]
	return !u.mayDie || len(c.specs[u.spec].strs) > 0
}

func (b *builder) addSelf(t selfTemplate) {
	c, lin := b.c, b.c.lin
	w := c.w
	srcSet := c.specs[t.spec].nodes
	srcStrs := map[ids.UserID]hashedStrs{}
	userIPs := map[ids.UserID]hashedStrs{}
	for uid, members := range w.userNodes.base {
		if t.ports == nil {
			if all := selfUserIPs(w, members); all != nil {
				userIPs[uid] = hashed(all)
			}
		}
		if strs := selfSrcStrs(w, members, srcSet); strs != nil {
			srcStrs[uid] = hashed(strs)
		}
	}
	lin.selfTs = append(lin.selfTs, t)
	c.selfs = append(c.selfs, selfState{
		srcStrs: pmap[ids.UserID, hashedStrs]{base: srcStrs},
		userIPs: pmap[ids.UserID, hashedStrs]{base: userIPs},
	})
}

func hashed(strs []string) hashedStrs {
	return hashedStrs{strs: strs, hash: listHash(sumStrings(strs), len(strs))}
}

// selfSrcStrs returns the addresses of a user's nodes that are sources,
// sorted; nil if none.
func selfSrcStrs(w *world, members []int, srcSet bitset) []string {
	var strs []string
	for _, i := range members {
		if srcSet.has(i) {
			strs = append(strs, w.slot(i).ipStrs...)
		}
	}
	sort.Strings(strs)
	return strs
}

// selfUserIPs returns the addresses of all a user's nodes, sorted.
func selfUserIPs(w *world, members []int) []string {
	var all []string
	for _, i := range members {
		all = append(all, w.slot(i).ipStrs...)
	}
	sort.Strings(all)
	return all
}

// compileApp adds the CapGrant rule of an app grant, and the companion
// rules Tailscale adds for Taildrive and peer relays (reversed: the
// destinations learn they may serve the sources).
func (b *builder) compileApp(g *grant, gi int32, dsts []alias, spec int32, seq *int32) {
	c, r := b.c, b.r
	w := c.w
	u := unit{seq: *seq, kind: unitCap, grant: gi, spec: spec, protoID: -1, alias: -1, mainCap: true, vis: true}
	*seq++
	comp := strsSpec{}
	vdst := newBitset(w.n)
	for _, d := range dsts {
		res := r.resolve(d)
		ce := capEntry{alias: -1, ident: -1, capMap: g.app}
		if res.identity {
			ce.alias = res.idx
			vdst.or(res.nodes)
			comp.idents = append(comp.idents, res.idx)
		} else {
			if d.kind == kindWildcard {
				comp.routes = true
			}
			ce.pfxs = res.addrs
			var sb netipx.IPSetBuilder
			for _, p := range res.addrs {
				sb.AddPrefix(p)
				w.nodesInRange(netipx.RangeOfPrefix(p), vdst.set)
			}
			if s, err := sb.IPSet(); err == nil {
				comp.lits = append(comp.lits, ipSetStrings(s)...)
			}
		}
		u.caps = append(u.caps, ce)
	}
	b.addUnit(u, unitDyn{cover: c.capCoverage(u.caps), vdst: vdst})
	compSpec := int32(-1)
	for _, cc := range companionCaps {
		if _, ok := g.app[cc.cap]; !ok {
			continue
		}
		if compSpec < 0 {
			compSpec = b.addSpec(comp)
		}
		cu := unit{seq: *seq, kind: unitCap, grant: gi, spec: compSpec, protoID: -1, alias: -1}
		*seq++
		ce := capEntry{alias: -1, ident: spec, capMap: tailcfg.PeerCapMap{cc.companion: nil}}
		for _, p := range c.lin.specs[spec].prefixes {
			if !p.IsSingleIP() {
				ce.pfxs = append(ce.pfxs, p)
			}
		}
		cu.caps = []capEntry{ce}
		b.addUnit(cu, unitDyn{cover: c.capCoverage(cu.caps)})
	}
}

// companionCaps are the capabilities for which Tailscale also sends the
// reverse capability to the destinations.
var companionCaps = []struct{ cap, companion tailcfg.PeerCapability }{
	{tailcfg.PeerCapabilityTaildrive, tailcfg.PeerCapabilityTaildriveSharer},
	{tailcfg.PeerCapabilityRelay, tailcfg.PeerCapabilityRelayTarget},
}

// compileVia handles a grant with "via": its rules go only to nodes that
// hold one of the via tags and have an approved route overlapping a
// destination (or are exit nodes, for autogroup:internet).
func (b *builder) compileVia(g *grant, gi int32, spec int32, seq *int32) {
	c, r := b.c, b.r
	w := c.w
	if len(g.ip) == 0 || len(g.src) == 0 {
		return
	}
	viaNodes := newBitset(w.n)
	var via []int32
	for _, t := range g.via {
		res := r.resolve(t)
		via = append(via, res.idx)
		viaNodes.or(res.nodes)
	}
	var entries []addrEntry
	for _, d := range g.dst {
		if d.is(agInternet) {
			entries = append(entries, c.addrEntries(d, nil)...)
			continue
		}
		res := r.resolve(d)
		for _, p := range res.addrs {
			rg := netipx.RangeOfPrefix(p)
			entries = append(entries, addrEntry{str: p.String(), rng: rg})
		}
	}
	if len(entries) == 0 {
		return
	}
	vdst := newBitset(w.n)
	viaNodes.each(func(i int) {
		if c.viaEntries(i, entries) {
			vdst.set(i)
		}
	})
	for _, ip := range g.ip {
		u := unit{seq: *seq, kind: unitVia, grant: gi, spec: spec, protoID: b.protoID(ip.proto.nums),
			proto: ip.proto.nums, ports: ip.ports, alias: -1, via: via, addrs: entries, mayDie: true, vis: true}
		*seq++
		b.addUnit(u, unitDyn{nodes: viaNodes, vdst: vdst})
	}
}

// viaEntries reports whether node i serves any of the via entries.
func (c *Compiled) viaEntries(i int, entries []addrEntry) bool {
	for _, e := range entries {
		if c.viaEntryFor(i, e) {
			return true
		}
	}
	return false
}

func (c *Compiled) viaEntryFor(i int, e addrEntry) bool {
	if e.internet {
		return c.w.slot(i).exit
	}
	return c.w.routeOverlaps(i, e.rng)
}
