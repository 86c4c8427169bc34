package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

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
// and cached) and safe for concurrent use.
type Compiled struct {
	pol      *Policy
	opts     CompileOptions
	w        *world
	allowAll bool // no policy, or neither "acls" nor "grants": allow-all filter

	units     []unit
	wildUnits []int32   // units that concern (nearly) every node
	nodeUnits [][]int32 // per node: other units that may concern it
	selfTs    []selfTemplate
	keyFirst  []int32 // merge key -> first global sequence number
	srcNames  *interner

	filters  []atomic.Pointer[nodeFilter]
	filterMu sync.Mutex
	shared   map[uint64][]*nodeFilter // filter hash -> distinct filters

	srcHashes map[srcListRef]uint64 // immutable after Compile

	vis visibility

	ssh      []sshCompiled
	sshCache []atomic.Pointer[sshResult]

	caps [][]tailcfg.NodeCapability

	exitApprovers  bitset
	routeApprovers []routeSet
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
// the destinations that concern the node.
type unit struct {
	seq   int32
	key   int32 // merge key (SrcIPs, IPProto); -1 for CapGrant rules
	kind  unitKind
	src   []string
	proto []int
	ports []tailcfg.PortRange
	nodes bitset      // unitNodes; unitVia: nodes holding a via tag
	addrs []addrEntry // unitAddrs, unitVia
	caps  []capEntry  // unitCap
}

type addrEntry struct {
	str      string
	rng      netipx.IPRange
	internet bool // inside autogroup:internet: exit nodes get it
}

type capEntry struct {
	nodes  bitset         // nodes whose own addresses are destinations
	pfxs   []netip.Prefix // address destinations
	capMap tailcfg.PeerCapMap
}

// selfTemplate is the autogroup:self part of a grant, expanded per node.
type selfTemplate struct {
	seq     int32
	srcSet  bitset // nodes the grant's sources cover
	proto   []int
	ports   []tailcfg.PortRange
	app     tailcfg.PeerCapMap
	keys    map[uint64]int32    // user ID -> merge key of the user's SrcIPs
	srcStrs map[uint64][]string // user ID -> SrcIPs
	userIPs map[uint64][]string // user ID -> addresses of all its devices (companion caps)
}

// interner gives dense ids to SrcIPs lists (and keys to SrcIPs+IPProto).
type interner struct {
	ids  map[string]int32
	keys map[[2]int32]int32
}

func (in *interner) id(s string) int32 {
	if id, ok := in.ids[s]; ok {
		return id
	}
	id := int32(len(in.ids))
	in.ids[s] = id
	return id
}

func (in *interner) key(src []string, proto []int) int32 {
	s := in.id(strings.Join(src, ","))
	p := in.id(fmt.Sprint(proto))
	k := [2]int32{s, p}
	if id, ok := in.keys[k]; ok {
		return id
	}
	id := int32(len(in.keys))
	in.keys[k] = id
	return id
}

// srcInfo is a grant's resolved sources.
type srcInfo struct {
	strs     []string       // SrcIPs
	all      bool           // autogroup:danger-all: SrcIPs ["*"]
	nodes    bitset         // nodes that are sources (address or route inside)
	prefixes []netip.Prefix // address sources (for companion caps)
	srcNodes bitset         // nodes named by identity sources (for companion caps)
	empty    bool
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
		pol:       p,
		opts:      opts,
		w:         w,
		filters:   make([]atomic.Pointer[nodeFilter], len(w.nodes)),
		sshCache:  make([]atomic.Pointer[sshResult], len(w.nodes)),
		shared:    map[uint64][]*nodeFilter{},
		srcHashes: map[srcListRef]uint64{},
	}
	if p == nil {
		c.allowAll = true
		return c, nil, nil
	}
	r := newResolver(p, w)
	c.allowAll = !p.hasACLs && !p.hasGrants
	c.srcNames = &interner{ids: map[string]int32{}, keys: map[[2]int32]int32{}}
	if !c.allowAll {
		c.compileGrants(r)
	}
	c.compileSSH(r)
	c.compileNodeAttrs(r)
	c.compileApprovers(r)
	// Resolve every group once so unknown members are reported even when
	// no rule uses the group.
	for name := range p.groups {
		r.userIDs(alias{kind: kindGroup, text: name})
	}
	if len(r.errs) > 0 {
		return nil, r.warnings, errors.New("compile policy:\n" + strings.Join(r.errs, "\n"))
	}
	sort.Strings(r.warnings)
	return c, r.warnings, nil
}

// sources resolves a grant's src list into SrcIPs the way Tailscale's
// control plane renders them: every address of every node an identity
// alias names (listed one by one, never collapsed into ranges), each
// address alias as written, and for "*" the tailnet ranges plus every
// approved subnet route. Explicit sources next to "*" keep their own
// entries, as Tailscale does.
func (c *Compiled) sources(r *resolver, srcs []alias) *srcInfo {
	w := c.w
	si := &srcInfo{nodes: newBitset(len(w.nodes)), srcNodes: newBitset(len(w.nodes))}
	var strs []string
	for _, a := range srcs {
		res := r.resolve(a)
		si.nodes.or(res.nodes)
		switch {
		case a.is(agDangerAll):
			si.all = true
			si.prefixes = append(si.prefixes, res.addrs...)
		case a.kind == kindWildcard:
			si.prefixes = append(si.prefixes, res.addrs...)
			strs = append(strs, ipSetStrings(w.tailnetSet)...)
			strs = append(strs, w.allRoutes...)
			for _, ri := range w.routers {
				si.nodes.set(ri)
			}
		case res.identity:
			si.srcNodes.or(res.nodes)
			res.nodes.each(func(i int) { strs = append(strs, w.ipStrs[i]...) })
		default:
			for _, p := range res.addrs {
				si.prefixes = append(si.prefixes, p)
				if p.IsSingleIP() {
					strs = append(strs, p.Addr().String())
				} else {
					strs = append(strs, p.String())
				}
				// Routers whose subnets are inside a source act for them.
				for _, ri := range w.routers {
					if w.routeOverlaps(ri, netipx.RangeOfPrefix(p)) {
						si.nodes.set(ri)
					}
				}
			}
		}
	}
	if si.all {
		si.strs = []string{"*"}
		si.nodes = w.all.clone()
		return si
	}
	sort.Strings(strs)
	si.strs = slices.Compact(strs)
	si.empty = len(si.strs) == 0
	return si
}

func (c *Compiled) compileGrants(r *resolver) {
	w := c.w
	n := len(w.nodes)
	c.nodeUnits = make([][]int32, n)
	var seq int32
	srcCache := map[string]*srcInfo{}
	for gi := range c.pol.grants {
		g := &c.pol.grants[gi]
		skey := aliasListKey(g.src)
		si, ok := srcCache[skey]
		if !ok {
			si = c.sources(r, g.src)
			srcCache[skey] = si
		}
		gv := grantVis{src: si.nodes}
		if len(g.via) > 0 {
			c.compileVia(r, g, si, &seq, &gv)
			c.vis.grants = append(c.vis.grants, gv)
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
		// Regular destinations.
		if !si.empty {
			for _, spec := range g.ip {
				key := c.srcNames.key(si.strs, spec.proto.nums)
				for _, d := range other {
					u := unit{seq: seq, key: key, src: si.strs, proto: spec.proto.nums, ports: spec.ports}
					seq++
					res := r.resolve(d)
					switch {
					case d.kind == kindWildcard:
						u.kind = unitWild
						gv.dst = append(gv.dst, w.all)
					case res.identity:
						u.kind = unitNodes
						u.nodes = res.nodes
						gv.dst = append(gv.dst, res.nodes)
					default:
						u.kind = unitAddrs
						u.addrs = c.addrEntries(d, res)
						gv.dst = append(gv.dst, c.addrCoverage(u.addrs, false))
					}
					c.addUnit(u)
				}
			}
		}
		if len(g.app) > 0 && len(other) > 0 {
			c.compileApp(r, g, other, si, &seq, &gv)
		}
		if selfDst {
			t := selfTemplate{seq: seq, srcSet: si.nodes, app: g.app}
			seq++
			c.vis.selfSrc = orInto(c.vis.selfSrc, si.nodes)
			for _, spec := range g.ip {
				tt := t
				tt.proto, tt.ports = spec.proto.nums, spec.ports
				tt.seq = seq
				seq++
				c.addSelf(tt)
			}
			if len(g.app) > 0 {
				tt := t
				tt.seq = seq
				seq += int32(1 + len(companionCaps))
				c.addSelf(tt)
			}
		}
		c.vis.grants = append(c.vis.grants, gv)
	}
	c.keyFirst = make([]int32, len(c.srcNames.keys)+1)
	for i := range c.keyFirst {
		c.keyFirst[i] = -1
	}
	for i := range c.units {
		u := &c.units[i]
		if u.key >= 0 && u.kind != unitVia && c.keyFirst[u.key] < 0 {
			c.keyFirst[u.key] = u.seq
		}
	}
	c.vis.init(w)
	for i := range c.units {
		c.registerSrc(c.units[i].src)
	}
	for ti := range c.selfTs {
		for _, strs := range c.selfTs[ti].srcStrs {
			c.registerSrc(strs)
		}
		for _, strs := range c.selfTs[ti].userIPs {
			c.registerSrc(strs)
		}
	}
}

func orInto(dst, src bitset) bitset {
	if dst == nil {
		return src.clone()
	}
	dst.or(src)
	return dst
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

// addrCoverage returns the nodes address entries concern: nodes with an
// address inside, routers whose subnet routes overlap, and exit nodes
// for entries inside the internet (for filters; forVisibility keeps
// Headscale's narrower peer rule: exit nodes only for the whole internet).
func (c *Compiled) addrCoverage(entries []addrEntry, forFilter bool) bitset {
	w := c.w
	b := newBitset(len(w.nodes))
	internetCount := 0
	for _, e := range entries {
		w.nodesInRange(e.rng, b.set)
		for _, ri := range w.routers {
			if w.routeOverlaps(ri, e.rng) {
				b.set(ri)
			}
		}
		if e.internet {
			internetCount++
			if forFilter {
				for _, x := range w.exitNodes {
					b.set(x)
				}
			}
		}
	}
	if !forFilter && internetCount > 0 && internetCount == len(c.w.internet.Ranges()) && internetCount == len(entries) {
		for _, x := range w.exitNodes {
			b.set(x)
		}
	}
	return b
}

// addUnit records u and indexes it under the nodes it may concern.
func (c *Compiled) addUnit(u unit) {
	idx := int32(len(c.units))
	c.units = append(c.units, u)
	w := c.w
	n := len(w.nodes)
	var cover bitset
	switch u.kind {
	case unitWild:
		c.wildUnits = append(c.wildUnits, idx)
		return
	case unitNodes:
		cover = u.nodes
	case unitAddrs:
		cover = c.addrCoverage(u.addrs, true)
	case unitVia:
		cover = u.nodes
	case unitCap:
		cover = newBitset(n)
		for _, ce := range u.caps {
			if ce.nodes != nil {
				cover.or(ce.nodes)
			}
			for _, p := range ce.pfxs {
				w.nodesInRange(netipx.RangeOfPrefix(p), cover.set)
				for _, ri := range w.routers {
					if w.routeOverlaps(ri, netipx.RangeOfPrefix(p)) {
						cover.set(ri)
					}
				}
			}
		}
	}
	if n > 64 && cover.count() > n/2 {
		c.wildUnits = append(c.wildUnits, idx)
		return
	}
	cover.each(func(i int) { c.nodeUnits[i] = append(c.nodeUnits[i], idx) })
}

func (c *Compiled) addSelf(t selfTemplate) {
	w := c.w
	t.keys = map[uint64]int32{}
	t.srcStrs = map[uint64][]string{}
	t.userIPs = map[uint64][]string{}
	for uid, members := range w.userNodes {
		if t.app != nil && t.ports == nil {
			var all []string
			for _, i := range members {
				all = append(all, w.ipStrs[i]...)
			}
			sort.Strings(all)
			t.userIPs[uid] = all
		}
		var strs []string
		for _, i := range members {
			if t.srcSet.has(i) {
				strs = append(strs, w.ipStrs[i]...)
			}
		}
		if len(strs) == 0 {
			continue
		}
		sort.Strings(strs)
		t.srcStrs[uid] = strs
		if t.app == nil || t.ports != nil {
			t.keys[uid] = c.srcNames.key(strs, t.proto)
		}
	}
	c.selfTs = append(c.selfTs, t)
}

// compileApp adds the CapGrant rule of an app grant, and the companion
// rules Tailscale adds for Taildrive and peer relays (reversed: the
// destinations learn they may serve the sources).
func (c *Compiled) compileApp(r *resolver, g *grant, dsts []alias, si *srcInfo, seq *int32, gv *grantVis) {
	w := c.w
	u := unit{seq: *seq, key: -1, kind: unitCap, src: si.strs}
	*seq++
	if u.src == nil {
		u.src = []string{}
	}
	var dstStrs []string
	dstNodes := newBitset(len(w.nodes))
	var dstPfxs []netip.Prefix
	wildcard := false
	for _, d := range dsts {
		res := r.resolve(d)
		ce := capEntry{capMap: g.app}
		if res.identity {
			ce.nodes = res.nodes
			dstNodes.or(res.nodes)
			res.nodes.each(func(i int) { dstStrs = append(dstStrs, w.ipStrs[i]...) })
		} else {
			if d.kind == kindWildcard {
				wildcard = true
			}
			ce.pfxs = res.addrs
			dstPfxs = append(dstPfxs, res.addrs...)
			var b netipx.IPSetBuilder
			for _, p := range res.addrs {
				b.AddPrefix(p)
			}
			if s, err := b.IPSet(); err == nil {
				dstStrs = append(dstStrs, ipSetStrings(s)...)
			}
		}
		u.caps = append(u.caps, ce)
	}
	c.addUnit(u)
	cover := dstNodes.clone()
	for _, p := range dstPfxs {
		w.nodesInRange(netipx.RangeOfPrefix(p), cover.set)
	}
	gv.dst = append(gv.dst, cover)
	if wildcard {
		dstStrs = append(dstStrs, w.allRoutes...)
	}
	sort.Strings(dstStrs)
	dstStrs = slices.Compact(dstStrs)
	for _, comp := range companionCaps {
		if _, ok := g.app[comp.cap]; !ok {
			continue
		}
		cu := unit{seq: *seq, key: -1, kind: unitCap, src: dstStrs}
		*seq++
		ce := capEntry{nodes: si.srcNodes, capMap: tailcfg.PeerCapMap{comp.companion: nil}}
		for _, p := range si.prefixes {
			if !p.IsSingleIP() {
				ce.pfxs = append(ce.pfxs, p)
			}
		}
		cu.caps = []capEntry{ce}
		c.addUnit(cu)
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
func (c *Compiled) compileVia(r *resolver, g *grant, si *srcInfo, seq *int32, gv *grantVis) {
	w := c.w
	if len(g.ip) == 0 || si.empty || len(g.src) == 0 {
		return
	}
	viaNodes := newBitset(len(w.nodes))
	for _, t := range g.via {
		for _, i := range w.tagNodes[t.text] {
			viaNodes.set(i)
		}
	}
	vsi := si
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
	for _, spec := range g.ip {
		u := unit{seq: *seq, key: c.srcNames.key(vsi.strs, spec.proto.nums), kind: unitVia,
			src: vsi.strs, proto: spec.proto.nums, ports: spec.ports, nodes: viaNodes, addrs: entries}
		*seq++
		c.addUnit(u)
	}
	cover := newBitset(len(w.nodes))
	viaNodes.each(func(i int) {
		if c.viaEntries(i, entries) {
			cover.set(i)
		}
	})
	gv.dst = append(gv.dst, cover)
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
		return c.w.exit.has(i)
	}
	return c.w.routeOverlaps(i, e.rng)
}
