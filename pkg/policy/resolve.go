package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/hsctl/headscale/pkg/ids"
	"go4.org/netipx"
	"tailscale.com/net/tsaddr"
)

// world is the users and nodes a policy is compiled against, indexed for
// alias resolution. Nodes live in slots: CompileWithOptions puts them in
// ID order; Update keeps every node in its slot, gives new nodes a free
// or a new slot and leaves removed nodes' slots empty, so per-slot data
// and node sets of unchanged nodes stay valid across updates.
type world struct {
	users    []User
	userByID map[ids.UserID]int

	slots    vec[slot]
	numSlots int // number of slots (live or empty); node sets have room for n
	live     int // number of nodes
	index    pmap[ids.NodeID, int]

	all, untagged, tagged, exit bitset
	routers                     []int // slots with subnet routes, ascending
	exitNodes                   []int
	routeCount                  map[netip.Prefix]int    // approved subnet route -> nodes with it
	allRoutes                   []string                // every approved subnet route, unique, sorted
	userNodes                   pmap[ids.UserID, []int] // untagged nodes per user ID, ascending
	tagNodes                    pmap[string, []int]

	sorted bool       // slot order is ID order
	maxID  ids.NodeID // highest node ID ever given a slot

	tailnetSet *netipx.IPSet // "*": CGNAT minus ChromeOS VM range, plus ULA
	internet   *netipx.IPSet // autogroup:internet

	lazyIndex      *worldIndex
	ipHolderCounts *ipCounter
}

// slot is one node and what is derived from it.
type slot struct {
	node   Node
	live   bool
	ips    []netip.Addr // IPv4 then IPv6 (valid ones only)
	ipStrs []string
	routes []netip.Prefix // approved subnet routes (masked), not exit routes
	exit   bool           // has an approved exit route
}

func makeSlot(nd Node) slot {
	s := slot{node: nd, live: true}
	for _, a := range []netip.Addr{nd.IPv4, nd.IPv6} {
		if a.IsValid() {
			a = a.Unmap()
			s.ips = append(s.ips, a)
			s.ipStrs = append(s.ipStrs, a.String())
		}
	}
	for _, r := range nd.ApprovedRoutes {
		if r.Bits() == 0 {
			s.exit = true
			continue
		}
		s.routes = append(s.routes, r.Masked())
	}
	return s
}

func (s *slot) tagged() bool { return s.node.tagged() }

// worldIndex holds indexes built on first use: nodes by address (for
// host and prefix aliases and policy tests) and slots in ID order.
type worldIndex struct {
	ipOnce sync.Once
	byIP   []ipEntry // all node addresses, sorted
	ipNode map[netip.Addr]int

	idOnce sync.Once
	byID   []int
}

// ipCounter counts, per address, the nodes holding it, and names the
// holder while it is unique and known (Update uses it to tell whether an
// address leaving a source list is still someone's, and whose).
type ipCounter struct {
	once    sync.Once
	holders pmap[netip.Addr, ipHolders]
}

type ipHolders struct {
	count int32
	slot  int32 // the only holder when n == 1 and known; -1 otherwise
}

type ipEntry struct {
	addr netip.Addr
	node int
}

var netSets = sync.OnceValues(func() (*netipx.IPSet, *netipx.IPSet) {
	var b netipx.IPSetBuilder
	b.AddPrefix(tsaddr.CGNATRange())
	b.RemovePrefix(tsaddr.ChromeOSVMRange())
	b.AddPrefix(tsaddr.TailscaleULARange())
	tailnet, _ := b.IPSet()

	var ib netipx.IPSetBuilder
	ib.AddPrefix(netip.MustParsePrefix("0.0.0.0/0"))
	ib.AddPrefix(netip.MustParsePrefix("2000::/3"))
	for _, p := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10"} {
		ib.RemovePrefix(netip.MustParsePrefix(p))
	}
	ib.RemovePrefix(tsaddr.CGNATRange())
	ib.RemovePrefix(tsaddr.TailscaleULARange())
	internet, _ := ib.IPSet()
	return tailnet, internet
})

func newWorld(users []User, nodes []Node) (*world, error) {
	sorted := slices.Clone(nodes)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].ID < sorted[j].ID })
	n := len(sorted)
	w := &world{
		users:          users,
		userByID:       make(map[ids.UserID]int, len(users)),
		slots:          newVec[slot](n),
		numSlots:       n,
		live:           n,
		routeCount:     map[netip.Prefix]int{},
		sorted:         true,
		lazyIndex:      &worldIndex{},
		ipHolderCounts: &ipCounter{},
	}
	w.tailnetSet, w.internet = netSets()
	index := make(map[ids.NodeID]int, n)
	userNodes := map[ids.UserID][]int{}
	tagNodes := map[string][]int{}
	w.exit, w.untagged, w.tagged, w.all = newBitset(n), newBitset(n), newBitset(n), newBitset(n)
	for i, u := range users {
		w.userByID[u.ID] = i
	}
	for i := range sorted {
		nd := sorted[i]
		if _, dup := index[nd.ID]; dup {
			return nil, fmt.Errorf("compile policy: duplicate node ID %d", nd.ID)
		}
		index[nd.ID] = i
		w.maxID = nd.ID
		s := w.slots.at(i)
		*s = makeSlot(nd)
		w.all.set(i)
		if nd.tagged() {
			w.tagged.set(i)
			for _, t := range nd.Tags {
				tagNodes[t] = append(tagNodes[t], i)
			}
		} else {
			w.untagged.set(i)
			userNodes[nd.UserID] = append(userNodes[nd.UserID], i)
		}
		for _, r := range s.routes {
			w.routeCount[r]++
		}
		if len(s.routes) > 0 {
			w.routers = append(w.routers, i)
		}
		if s.exit {
			w.exit.set(i)
			w.exitNodes = append(w.exitNodes, i)
		}
	}
	w.index = pmap[ids.NodeID, int]{base: index}
	w.userNodes = pmap[ids.UserID, []int]{base: userNodes}
	w.tagNodes = pmap[string, []int]{base: tagNodes}
	w.allRoutes = routeStrings(w.routeCount)
	return w, nil
}

func routeStrings(m map[netip.Prefix]int) []string {
	out := make([]string, 0, len(m))
	for r := range m {
		out = append(out, r.String())
	}
	sort.Strings(out)
	return out
}

func (w *world) slot(i int) *slot { return w.slots.at(i) }
func (w *world) node(i int) *Node { return &w.slots.at(i).node }

// slotOf returns the slot of node id.
func (w *world) slotOf(id ids.NodeID) (int, bool) { return w.index.get(id) }

func (w *world) usersNodes(uid ids.UserID) []int {
	v, _ := w.userNodes.get(uid)
	return v
}

func (w *world) tagsNodes(tag string) []int {
	v, _ := w.tagNodes.get(tag)
	return v
}

// ipIndex returns the address index, building it on first use. With
// duplicate addresses the node with the highest ID wins, as when the
// nodes are indexed in ID order.
func (w *world) ipIndex() *worldIndex {
	x := w.lazyIndex
	x.ipOnce.Do(func() {
		x.ipNode = make(map[netip.Addr]int, 2*w.live)
		for _, i := range w.idOrder() {
			for _, a := range w.slot(i).ips {
				x.byIP = append(x.byIP, ipEntry{a, i})
				x.ipNode[a] = i
			}
		}
		sort.Slice(x.byIP, func(i, j int) bool { return x.byIP[i].addr.Less(x.byIP[j].addr) })
	})
	return x
}

// idOrder returns the slots of all nodes in ID order.
func (w *world) idOrder() []int {
	x := w.lazyIndex
	x.idOnce.Do(func() {
		x.byID = make([]int, 0, w.live)
		w.all.each(func(i int) { x.byID = append(x.byID, i) })
		if !w.sorted {
			sort.Slice(x.byID, func(a, b int) bool { return w.node(x.byID[a]).ID < w.node(x.byID[b]).ID })
		}
	})
	return x.byID
}

// ipCounts returns the holders of each address.
func (w *world) ipCounts() pmap[netip.Addr, ipHolders] {
	c := w.ipHolderCounts
	c.once.Do(func() {
		if c.holders.base != nil || c.holders.delta != nil {
			return
		}
		m := make(map[netip.Addr]ipHolders, 2*w.live)
		w.all.each(func(i int) {
			for _, a := range w.slot(i).ips {
				h := m[a]
				if h.count == 0 {
					h.slot = int32(i)
				} else {
					h.slot = -1
				}
				h.count++
				m[a] = h
			}
		})
		c.holders = pmap[netip.Addr, ipHolders]{base: m}
	})
	return c.holders
}

// nodesInRange returns the nodes with an address in r.
func (w *world) nodesInRange(r netipx.IPRange, f func(i int)) {
	byIP := w.ipIndex().byIP
	from := sort.Search(len(byIP), func(i int) bool { return !byIP[i].addr.Less(r.From()) })
	for j := from; j < len(byIP) && !r.To().Less(byIP[j].addr); j++ {
		f(byIP[j].node)
	}
}

// routeOverlaps reports whether any of node i's subnet routes overlaps r.
func (w *world) routeOverlaps(i int, r netipx.IPRange) bool {
	for _, sr := range w.slot(i).routes {
		if rangeOverlapsPrefix(r, sr) {
			return true
		}
	}
	return false
}

func rangeOverlapsPrefix(r netipx.IPRange, p netip.Prefix) bool {
	pr := netipx.RangeOfPrefix(p)
	return r.From().BitLen() == pr.From().BitLen() && !r.To().Less(pr.From()) && !pr.To().Less(r.From())
}

// resolved is what an alias stands for in the current world.
type resolved struct {
	nodes    bitset         // nodes it names (identity) or whose address it covers
	addrs    []netip.Prefix // address aliases: the literal prefixes
	identity bool           // users, groups, tags, autogroup:member/tagged
	userIDs  []ids.UserID   // users and groups: the users named
	listPos  int32          // position in resolver.list
}

// resolver resolves aliases once each and collects warnings.
type resolver struct {
	pol      *Policy
	world    *world
	cache    map[string]*resolved
	userHits map[string][]int // user token -> user indices
	warned   map[string]bool
	warnings []string
	errs     []string
	list     []*resolved // distinct aliases in the order first resolved
	aliases  []alias
	nodesOut *[]bitset // if set, receives each new alias's nodes
}

func newResolver(pol *Policy, w *world) *resolver {
	return &resolver{pol: pol, world: w, cache: map[string]*resolved{}, userHits: map[string][]int{}, warned: map[string]bool{}}
}

func (r *resolver) warnf(a alias, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	line, col := r.pol.src.position(a.off)
	w := fmt.Sprintf("%d:%d: %s: %s", line, col, a.path, msg)
	if !r.warned[w] {
		r.warned[w] = true
		r.warnings = append(r.warnings, w)
	}
}

// matchUser finds the users a token names, following Headscale: strip one
// trailing "@", then compare with the e-mail address and the name.
func (r *resolver) matchUser(a alias) []int {
	if hits, ok := r.userHits[a.text]; ok {
		if len(hits) == 0 {
			r.warnf(a, "user %q matches no user; ignored", a.text)
		}
		return hits
	}
	var hits []int
	if domain, ok := strings.CutPrefix(a.text, "user:*@"); ok {
		// Tailscale's "every user with an e-mail address in domain".
		for i, u := range r.world.users {
			if at := strings.LastIndex(u.Email, "@"); at >= 0 && strings.EqualFold(u.Email[at+1:], domain) {
				hits = append(hits, i)
			}
		}
		if len(hits) == 0 {
			r.warnf(a, "no user has an e-mail address in %q", domain)
		}
		r.userHits[a.text] = hits
		return hits
	}
	tok := strings.TrimSuffix(a.text, "@")
	for i, u := range r.world.users {
		if u.Email == tok || u.Name == tok {
			hits = append(hits, i)
		}
	}
	if len(hits) > 1 {
		line, col := r.pol.src.position(a.off)
		names := make([]string, len(hits))
		for i, h := range hits {
			names[i] = fmt.Sprintf("%d(%s)", r.world.users[h].ID, r.world.users[h].Name)
		}
		r.errs = append(r.errs, fmt.Sprintf("%d:%d: %s: user token %q is ambiguous: matches users %s", line, col, a.path, a.text, strings.Join(names, ", ")))
		hits = nil
	} else if len(hits) == 0 {
		r.warnf(a, "user %q matches no user; ignored", a.text)
	}
	r.userHits[a.text] = hits
	return hits
}

// userIDs returns the IDs of the users a user or group alias names.
func (r *resolver) userIDs(a alias) []ids.UserID {
	var out []ids.UserID
	switch a.kind {
	case kindUser:
		for _, h := range r.matchUser(a) {
			out = append(out, r.world.users[h].ID)
		}
	case kindGroup:
		for _, m := range r.pol.groups[a.text] {
			if m.kind == kindIdPGroup {
				out = append(out, r.idpGroupUsers(m)...)
				continue
			}
			for _, h := range r.matchUser(m) {
				out = append(out, r.world.users[h].ID)
			}
		}
	case kindIdPGroup:
		out = r.idpGroupUsers(a)
	}
	return out
}

// idpGroupUsers returns the IDs of the users the identity provider put in
// the group a names. A group nobody has (yet) names nobody; that is not a
// mistake in the policy, so it is not reported.
func (r *resolver) idpGroupUsers(a alias) []ids.UserID {
	g := a.idpGroup()
	var out []ids.UserID
	for i := range r.world.users {
		if u := &r.world.users[i]; u.inIdPGroup(g) {
			out = append(out, u.ID)
		}
	}
	return out
}

// resolve returns the nodes and addresses alias a stands for.
// autogroup:self is per node and resolves to nothing here. Each distinct
// alias gets an index (resolved.idx) in the order first resolved.
func (r *resolver) resolve(a alias) *resolved {
	if a.namesUsers() {
		// Warnings carry the position of each use, so do not cache
		// the lookup of users itself (it is cheap); cache node sets.
		ids := r.userIDs(a)
		if res, ok := r.cache[a.key()]; ok {
			return res
		}
		res := &resolved{nodes: newBitset(r.world.numSlots), identity: true, userIDs: ids}
		for _, id := range ids {
			for _, i := range r.world.usersNodes(id) {
				res.nodes.set(i)
			}
		}
		r.remember(a, res)
		return res
	}
	if res, ok := r.cache[a.key()]; ok {
		return res
	}
	w := r.world
	res := &resolved{}
	switch a.kind {
	case kindWildcard:
		res.nodes = w.all.clone()
		res.addrs = w.tailnetSet.Prefixes()
	case kindTag:
		res.identity = true
		res.nodes = newBitset(w.numSlots)
		for _, i := range w.tagsNodes(a.text) {
			res.nodes.set(i)
		}
	case kindHost, kindPrefix:
		res.addrs = []netip.Prefix{a.pfx}
		res.nodes = newBitset(w.numSlots)
		w.nodesInRange(netipx.RangeOfPrefix(a.pfx), res.nodes.set)
	case kindAutogroup:
		switch a.text {
		case agMember:
			res.identity, res.nodes = true, w.untagged.clone()
		case agTagged:
			res.identity, res.nodes = true, w.tagged.clone()
		case agDangerAll:
			res.nodes = w.all.clone()
			res.addrs = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
		case agInternet:
			res.nodes = w.exit.clone()
			res.addrs = w.internet.Prefixes()
		default:
			res.nodes = newBitset(w.numSlots)
		}
	}
	r.remember(a, res)
	return res
}

func (r *resolver) remember(a alias, res *resolved) {
	res.listPos = int32(len(r.list))
	r.list = append(r.list, res)
	r.aliases = append(r.aliases, a)
	r.cache[a.key()] = res
	if r.nodesOut != nil {
		*r.nodesOut = append(*r.nodesOut, res.nodes)
	}
}

// aliasHas reports whether alias a (resolved as res) names or covers the
// node in slot i: the per-node form of resolve, used by Update.
func (w *world) aliasHas(a alias, res *resolved, i int) bool {
	s := w.slot(i)
	if !s.live {
		return false
	}
	switch a.kind {
	case kindWildcard:
		return true
	case kindUser, kindGroup, kindIdPGroup:
		return !s.tagged() && slices.Contains(res.userIDs, s.node.UserID)
	case kindTag:
		return slices.Contains(s.node.Tags, a.text)
	case kindHost, kindPrefix:
		rg := netipx.RangeOfPrefix(a.pfx)
		for _, ip := range s.ips {
			if rg.Contains(ip) {
				return true
			}
		}
	case kindAutogroup:
		switch a.text {
		case agMember:
			return !s.tagged()
		case agTagged:
			return s.tagged()
		case agDangerAll:
			return true
		case agInternet:
			return s.exit
		}
	}
	return false
}

// ipSetStrings renders an IP set the way SrcIPs carry it: single
// addresses bare, prefix-aligned ranges as CIDRs, other ranges as "a-b".
func ipSetStrings(s *netipx.IPSet) []string {
	var out []string
	for _, rg := range s.Ranges() {
		out = append(out, rangeString(rg))
	}
	return out
}

func rangeString(rg netipx.IPRange) string {
	if rg.From() == rg.To() {
		return rg.From().String()
	}
	if p, ok := rg.Prefix(); ok {
		return p.String()
	}
	return rg.String()
}

// parseIPRangeString parses a SrcIPs/DstPorts address: "1.2.3.4",
// "10.0.0.0/8" or "a-b".
func parseIPRangeString(s string) (netipx.IPRange, error) {
	if strings.Contains(s, "-") {
		return netipx.ParseIPRange(s)
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netipx.IPRange{}, err
		}
		return netipx.RangeOfPrefix(p), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netipx.IPRange{}, err
	}
	return netipx.IPRangeFrom(a, a), nil
}
