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
	world    *world
	lineage  *lineage
	allowAll bool // no policy, or neither "acls" nor "grants": allow-all filter
	warnings []string

	aliasNodes     []bitset       // per lineage.aliases: the nodes it names or covers
	specs          []*specState   // per lineage.specs
	unitSets       []unitNodeSets // per lineage.units
	classes        classTable
	selfStates     []selfState // per lineage.selfTemplates
	ssh            []*sshState // per lineage.ssh
	exitApprovers  bitset
	routeApprovers []bitset // per lineage.routeApproverAliases
	visibility     visibility

	nodes vec[nodeState] // per slot
	cache vec[nodeCache] // per slot
}

// lineage is what the compilations derived from one CompileWithOptions
// call by Update share: everything that depends only on the policy and
// the users.
type lineage struct {
	aliases              []alias
	aliasResolved        []*resolved // addrs, identity and userIDs (nodes unset: see Compiled.aliasNodes)
	specs                []srcIPsSpec
	specUnits            [][]int32         // per spec: units whose SrcIPs come from it
	specFirstUnit        []map[int32]int32 // per spec: protocol -> seq of its first merge-ordered unit
	units                []unit
	wildUnits            []int32 // units visited for every node
	isWild               bitset  // over units
	grants               []grantInfo
	selfTemplates        []selfTemplate
	selfSpecs            []int32 // sources of grants with an autogroup:self destination
	hasSelf              bool
	ssh                  []sshRuleCompiled
	attrs                []attrRule
	hasCaps              bool // nodeAttrs or randomizeClientPort present
	randomizePort        bool
	exitApproverAliases  []int32   // aliases
	routeApproverAliases [][]int32 // per pol.routes: aliases
	filters              *filterTable
}

// nodeState is a node's compiled state that is not a cache.
type nodeState struct {
	units        []int32 // non-wild units whose destinations may concern it
	caps         []tailcfg.NodeCapability
	visSignature int32 // visibility signature
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
// lineage; what depends on nodes is in unitNodeSets, the sources' specState
// and the alias node sets.
type unit struct {
	seq                 int32
	kind                unitKind
	grant               int32
	spec                int32 // SrcIPs
	protoID             int32 // merge key part; -1 for CapGrant rules
	proto               []int
	ports               []tailcfg.PortRange
	alias               int32   // unitNodes: the destination alias
	via                 []int32 // unitVia: via tag aliases
	addrs               []addrEntry
	caps                []capEntry
	needsSources        bool // no rule while the sources have no address (regular and via units)
	countsForVisibility bool // its destinations count for peer visibility
	mainCap             bool // an app grant's own CapGrant rule: SrcIPs never null
	wholeInternet       bool // unitAddrs: exactly autogroup:internet (exit nodes become visible)
}

// unitNodeSets is the node-dependent part of a unit.
type unitNodeSets struct {
	viaNodes     bitset // unitVia: nodes holding a via tag
	coveredNodes bitset // unitAddrs, unitCap: nodes whose filter may get the rule
	visibleDsts  bitset // unitAddrs, unitCap (main), unitVia: visible destinations
}

type addrEntry struct {
	text     string
	ipRange  netipx.IPRange
	internet bool // inside autogroup:internet: exit nodes get it
}

// capEntry is one destination of a CapGrant rule: the nodes of an
// identity alias or of a source list, or address prefixes.
type capEntry struct {
	alias     int32 // identity destination (-1: none)
	identSpec int32 // companion rules: the spec whose identity nodes are destinations (-1: none)
	prefixes  []netip.Prefix
	capMap    tailcfg.PeerCapMap
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

// srcIPsSpec is where a SrcIPs list comes from: a grant's sources, or the
// destinations of an app grant (for the reverse companion rules).
type srcIPsSpec struct {
	isSrc         bool
	star          bool           // autogroup:danger-all: ["*"], every node a source
	memberAliases []int32        // aliases whose nodes are sources
	identAliases  []int32        // identity aliases: their nodes' addresses are listed
	literals      []string       // address strings listed as written (sorted, unique)
	routes        bool           // "*": every approved subnet route is listed
	addrPfx       []netip.Prefix // routers with an overlapping route are sources
	prefixes      []netip.Prefix // address sources (companion capabilities)
}

// specState is a srcIPsSpec resolved against the nodes.
type specState struct {
	addrStrs   []string // sorted, unique; nil when empty
	sum        uint64   // sum of the element hashes (hash derives from it)
	hash       uint64
	nodes      bitset // sources: nodes named, covered, or routing a subnet inside
	identNodes bitset // nodes named by identity aliases
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
		pol:     p,
		opts:    opts,
		world:   w,
		lineage: &lineage{filters: newFilterTable()},
		cache:   newVec[nodeCache](w.numSlots),
	}
	b := &builder{c: c, nodeUnits: make([][]int32, w.numSlots)}
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
	c, lineage := b.c, b.c.lineage
	if b.r != nil {
		lineage.aliases = b.r.aliases
		// Keep what Update needs, not this compilation's node sets.
		lineage.aliasResolved = make([]*resolved, len(b.r.list))
		for i, res := range b.r.list {
			lineage.aliasResolved[i] = &resolved{addrs: res.addrs, identity: res.identity, userIDs: res.userIDs, listPos: res.listPos}
		}
	}
	lineage.isWild = newBitset(len(lineage.units))
	for _, ui := range lineage.wildUnits {
		lineage.isWild.set(int(ui))
	}
	slices.Sort(lineage.wildUnits)
	c.buildClasses()
	sigOf := c.buildVis()
	c.nodes = newVec[nodeState](c.world.numSlots)
	for i := range c.world.numSlots {
		st := c.nodes.at(i)
		st.units = b.nodeUnits[i]
		if b.nodeCaps != nil {
			st.caps = b.nodeCaps[i]
		}
		st.visSignature = sigOf[i]
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
	sp := srcIPsSpec{isSrc: true}
	for _, a := range srcs {
		res := b.r.resolve(a)
		sp.memberAliases = append(sp.memberAliases, res.listPos)
		switch {
		case a.is(agDangerAll):
			sp.star = true
			sp.prefixes = append(sp.prefixes, res.addrs...)
		case a.kind == kindWildcard:
			sp.prefixes = append(sp.prefixes, res.addrs...)
			sp.literals = append(sp.literals, ipSetStrings(b.c.world.tailnetSet)...)
			sp.routes = true
		case res.identity:
			sp.identAliases = append(sp.identAliases, res.listPos)
		default:
			for _, p := range res.addrs {
				sp.prefixes = append(sp.prefixes, p)
				sp.addrPfx = append(sp.addrPfx, p)
				if p.IsSingleIP() {
					sp.literals = append(sp.literals, p.Addr().String())
				} else {
					sp.literals = append(sp.literals, p.String())
				}
			}
		}
	}
	return b.addSpec(sp)
}

func (b *builder) addSpec(sp srcIPsSpec) int32 {
	c, lineage := b.c, b.c.lineage
	sort.Strings(sp.literals)
	sp.literals = slices.Compact(sp.literals)
	id := int32(len(lineage.specs))
	lineage.specs = append(lineage.specs, sp)
	lineage.specUnits = append(lineage.specUnits, nil)
	lineage.specFirstUnit = append(lineage.specFirstUnit, nil)
	c.specs = append(c.specs, b.buildSpec(&lineage.specs[id]))
	return id
}

func (b *builder) buildSpec(sp *srcIPsSpec) *specState {
	w := b.c.world
	nodesOf := func(a int32) bitset { return b.c.aliasNodes[a] }
	st := &specState{identNodes: newBitset(w.numSlots)}
	for _, a := range sp.identAliases {
		st.identNodes.or(nodesOf(a))
	}
	if sp.isSrc {
		st.nodes = newBitset(w.numSlots)
		if sp.star {
			st.nodes.or(w.all)
		} else {
			for _, a := range sp.memberAliases {
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
		st.addrStrs = []string{"*"}
	} else {
		st.addrStrs = specStrs(w, sp, st.identNodes)
	}
	st.sum = sumStrings(st.addrStrs)
	st.hash = listHash(st.sum, len(st.addrStrs))
	return st
}

// specStrs builds a SrcIPs list from scratch.
func specStrs(w *world, sp *srcIPsSpec, ident bitset) []string {
	strs := slices.Clone(sp.literals)
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
	c, lineage, r := b.c, b.c.lineage, b.r
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
		lineage.grants = append(lineage.grants, grantInfo{spec: spec})
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
					alias: -1, needsSources: true, countsForVisibility: true}
				seq++
				res := r.resolve(d)
				var dyn unitNodeSets
				switch {
				case d.kind == kindWildcard:
					u.kind = unitWild
				case res.identity:
					u.kind = unitNodes
					u.alias = res.listPos
				default:
					u.kind = unitAddrs
					u.addrs = c.addrEntries(d, res)
					u.wholeInternet = wholeInternet(c.world, u.addrs)
					dyn.coveredNodes = c.addrCoverage(u.addrs, true)
					dyn.visibleDsts = c.addrCoverage(u.addrs, false)
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
			lineage.selfSpecs = append(lineage.selfSpecs, spec)
			lineage.hasSelf = true
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
		for _, rg := range c.world.internet.Ranges() {
			out = append(out, addrEntry{text: rg.String(), ipRange: rg, internet: true})
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
		out = append(out, addrEntry{text: s, ipRange: rg, internet: c.world.internet.ContainsRange(rg)})
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
	w := c.world
	b := newBitset(w.numSlots)
	for _, e := range entries {
		w.nodesInRange(e.ipRange, b.set)
		for _, ri := range w.routers {
			if w.routeOverlaps(ri, e.ipRange) {
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
func (b *builder) addUnit(u unit, dyn unitNodeSets) {
	c, lineage := b.c, b.c.lineage
	idx := int32(len(lineage.units))
	lineage.units = append(lineage.units, u)
	c.unitSets = append(c.unitSets, dyn)
	lineage.specUnits[u.spec] = append(lineage.specUnits[u.spec], idx)
	if u.kind != unitCap && u.kind != unitVia {
		if lineage.specFirstUnit[u.spec] == nil {
			lineage.specFirstUnit[u.spec] = map[int32]int32{}
		}
		if _, ok := lineage.specFirstUnit[u.spec][u.protoID]; !ok {
			lineage.specFirstUnit[u.spec][u.protoID] = u.seq
		}
	}
	if u.countsForVisibility {
		lineage.grants[u.grant].visUnits = append(lineage.grants[u.grant].visUnits, idx)
	}
	if u.kind == unitWild {
		lineage.wildUnits = append(lineage.wildUnits, idx)
		return
	}
	cover := c.coveredNodes(int(idx))
	n := c.world.numSlots
	if n > 64 && cover.count() > n/2 {
		lineage.wildUnits = append(lineage.wildUnits, idx)
		return
	}
	cover.each(func(i int) { b.nodeUnits[i] = append(b.nodeUnits[i], idx) })
}

// capCoverage returns the nodes a CapGrant rule may concern.
func (c *Compiled) capCoverage(caps []capEntry) bitset {
	w := c.world
	cover := newBitset(w.numSlots)
	for _, ce := range caps {
		cover.or(c.capNodes(ce))
		for _, p := range ce.prefixes {
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
	case ce.identSpec >= 0:
		return c.specs[ce.identSpec].identNodes
	}
	return nil
}

// coveredNodes returns the nodes unit ui may concern (all nodes for "*").
func (c *Compiled) coveredNodes(ui int) bitset {
	u := &c.lineage.units[ui]
	switch u.kind {
	case unitWild:
		return c.world.all
	case unitNodes:
		return c.aliasNodes[u.alias]
	case unitVia:
		return c.unitSets[ui].viaNodes
	}
	return c.unitSets[ui].coveredNodes
}

// visibleDsts returns the nodes unit ui makes visible to its sources.
func (c *Compiled) visibleDsts(ui int) bitset {
	u := &c.lineage.units[ui]
	switch u.kind {
	case unitWild:
		return c.world.all
	case unitNodes:
		return c.aliasNodes[u.alias]
	}
	return c.unitSets[ui].visibleDsts
}

// unitLive reports whether unit ui produces anything: regular and via
// units need sources with an address.
func (c *Compiled) unitLive(ui int) bool {
	u := &c.lineage.units[ui]
	return !u.needsSources || len(c.specs[u.spec].addrStrs) > 0
}

func (b *builder) addSelf(t selfTemplate) {
	c, lineage := b.c, b.c.lineage
	w := c.world
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
	lineage.selfTemplates = append(lineage.selfTemplates, t)
	c.selfStates = append(c.selfStates, selfState{
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
	w := c.world
	u := unit{seq: *seq, kind: unitCap, grant: gi, spec: spec, protoID: -1, alias: -1, mainCap: true, countsForVisibility: true}
	*seq++
	comp := srcIPsSpec{}
	vdst := newBitset(w.numSlots)
	for _, d := range dsts {
		res := r.resolve(d)
		ce := capEntry{alias: -1, identSpec: -1, capMap: g.app}
		if res.identity {
			ce.alias = res.listPos
			vdst.or(res.nodes)
			comp.identAliases = append(comp.identAliases, res.listPos)
		} else {
			if d.kind == kindWildcard {
				comp.routes = true
			}
			ce.prefixes = res.addrs
			var sb netipx.IPSetBuilder
			for _, p := range res.addrs {
				sb.AddPrefix(p)
				w.nodesInRange(netipx.RangeOfPrefix(p), vdst.set)
			}
			if s, err := sb.IPSet(); err == nil {
				comp.literals = append(comp.literals, ipSetStrings(s)...)
			}
		}
		u.caps = append(u.caps, ce)
	}
	b.addUnit(u, unitNodeSets{coveredNodes: c.capCoverage(u.caps), visibleDsts: vdst})
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
		ce := capEntry{alias: -1, identSpec: spec, capMap: tailcfg.PeerCapMap{cc.companion: nil}}
		for _, p := range c.lineage.specs[spec].prefixes {
			if !p.IsSingleIP() {
				ce.prefixes = append(ce.prefixes, p)
			}
		}
		cu.caps = []capEntry{ce}
		b.addUnit(cu, unitNodeSets{coveredNodes: c.capCoverage(cu.caps)})
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
	w := c.world
	if len(g.ip) == 0 || len(g.src) == 0 {
		return
	}
	viaNodes := newBitset(w.numSlots)
	var via []int32
	for _, t := range g.via {
		res := r.resolve(t)
		via = append(via, res.listPos)
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
			entries = append(entries, addrEntry{text: p.String(), ipRange: rg})
		}
	}
	if len(entries) == 0 {
		return
	}
	vdst := newBitset(w.numSlots)
	viaNodes.each(func(i int) {
		if c.viaEntries(i, entries) {
			vdst.set(i)
		}
	})
	for _, ip := range g.ip {
		u := unit{seq: *seq, kind: unitVia, grant: gi, spec: spec, protoID: b.protoID(ip.proto.nums),
			proto: ip.proto.nums, ports: ip.ports, alias: -1, via: via, addrs: entries, needsSources: true, countsForVisibility: true}
		*seq++
		b.addUnit(u, unitNodeSets{viaNodes: viaNodes, visibleDsts: vdst})
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
		return c.world.slot(i).exit
	}
	return c.world.routeOverlaps(i, e.ipRange)
}
