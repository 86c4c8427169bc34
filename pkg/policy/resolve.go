package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"go4.org/netipx"
	"tailscale.com/net/tsaddr"
)

// world is the users and nodes a policy is compiled against, indexed for
// alias resolution. Node indices are positions in nodes (sorted by ID).
type world struct {
	users []User
	nodes []Node
	index map[uint64]int // node ID -> index

	ips    [][]netip.Addr // per node: IPv4 then IPv6 (valid ones only)
	ipStrs [][]string
	byIP   []ipEntry // all node addresses, sorted
	ipNode map[netip.Addr]int

	subnetRoutes [][]netip.Prefix // per node: approved non-exit routes
	routers      []int            // nodes with subnet routes
	exit         bitset           // nodes with an approved exit route
	exitNodes    []int
	allRoutes    []string // every approved subnet route, unique, sorted

	untagged   bitset
	tagged     bitset
	all        bitset
	userNodes  map[uint64][]int // untagged nodes per user ID
	tagNodes   map[string][]int
	userByID   map[uint64]int
	tailnetSet *netipx.IPSet // "*": CGNAT minus ChromeOS VM range, plus ULA
	internet   *netipx.IPSet // autogroup:internet
}

type ipEntry struct {
	addr netip.Addr
	node int
}

func newWorld(users []User, nodes []Node) (*world, error) {
	w := &world{
		users:     users,
		nodes:     slices.Clone(nodes),
		index:     make(map[uint64]int, len(nodes)),
		ipNode:    make(map[netip.Addr]int, 2*len(nodes)),
		userNodes: map[uint64][]int{},
		tagNodes:  map[string][]int{},
		userByID:  make(map[uint64]int, len(users)),
	}
	sort.Slice(w.nodes, func(i, j int) bool { return w.nodes[i].ID < w.nodes[j].ID })
	n := len(w.nodes)
	w.ips = make([][]netip.Addr, n)
	w.ipStrs = make([][]string, n)
	w.subnetRoutes = make([][]netip.Prefix, n)
	w.exit, w.untagged, w.tagged, w.all = newBitset(n), newBitset(n), newBitset(n), newBitset(n)
	routeSeen := map[netip.Prefix]bool{}
	for i, u := range users {
		w.userByID[u.ID] = i
	}
	for i := range w.nodes {
		nd := &w.nodes[i]
		if _, dup := w.index[nd.ID]; dup {
			return nil, fmt.Errorf("compile policy: duplicate node ID %d", nd.ID)
		}
		w.index[nd.ID] = i
		w.all.set(i)
		for _, a := range []netip.Addr{nd.IPv4, nd.IPv6} {
			if a.IsValid() {
				a = a.Unmap()
				w.ips[i] = append(w.ips[i], a)
				w.ipStrs[i] = append(w.ipStrs[i], a.String())
				w.byIP = append(w.byIP, ipEntry{a, i})
				w.ipNode[a] = i
			}
		}
		if nd.tagged() {
			w.tagged.set(i)
			for _, t := range nd.Tags {
				w.tagNodes[t] = append(w.tagNodes[t], i)
			}
		} else {
			w.untagged.set(i)
			w.userNodes[nd.UserID] = append(w.userNodes[nd.UserID], i)
		}
		for _, r := range nd.ApprovedRoutes {
			if r.Bits() == 0 {
				w.exit.set(i)
				continue
			}
			r = r.Masked()
			w.subnetRoutes[i] = append(w.subnetRoutes[i], r)
			if !routeSeen[r] {
				routeSeen[r] = true
				w.allRoutes = append(w.allRoutes, r.String())
			}
		}
		if len(w.subnetRoutes[i]) > 0 {
			w.routers = append(w.routers, i)
		}
		if w.exit.has(i) {
			w.exitNodes = append(w.exitNodes, i)
		}
	}
	sort.Strings(w.allRoutes)
	sort.Slice(w.byIP, func(i, j int) bool { return w.byIP[i].addr.Less(w.byIP[j].addr) })

	var b netipx.IPSetBuilder
	b.AddPrefix(tsaddr.CGNATRange())
	b.RemovePrefix(tsaddr.ChromeOSVMRange())
	b.AddPrefix(tsaddr.TailscaleULARange())
	w.tailnetSet, _ = b.IPSet()

	var ib netipx.IPSetBuilder
	ib.AddPrefix(netip.MustParsePrefix("0.0.0.0/0"))
	ib.AddPrefix(netip.MustParsePrefix("2000::/3"))
	for _, p := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "fc00::/7", "fe80::/10"} {
		ib.RemovePrefix(netip.MustParsePrefix(p))
	}
	ib.RemovePrefix(tsaddr.CGNATRange())
	ib.RemovePrefix(tsaddr.TailscaleULARange())
	w.internet, _ = ib.IPSet()
	return w, nil
}

// nodesInRange returns the nodes with an address in r.
func (w *world) nodesInRange(r netipx.IPRange, f func(i int)) {
	from := sort.Search(len(w.byIP), func(i int) bool { return !w.byIP[i].addr.Less(r.From()) })
	for j := from; j < len(w.byIP) && !r.To().Less(w.byIP[j].addr); j++ {
		f(w.byIP[j].node)
	}
}

// routeOverlaps reports whether any of node i's subnet routes overlaps r.
func (w *world) routeOverlaps(i int, r netipx.IPRange) bool {
	for _, sr := range w.subnetRoutes[i] {
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
}

// resolver resolves aliases once each and collects warnings.
type resolver struct {
	pol      *Policy
	w        *world
	cache    map[string]*resolved
	userHits map[string][]int // user token -> user indices
	warned   map[string]bool
	warnings []string
	errs     []string
}

func newResolver(pol *Policy, w *world) *resolver {
	return &resolver{pol: pol, w: w, cache: map[string]*resolved{}, userHits: map[string][]int{}, warned: map[string]bool{}}
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
		for i, u := range r.w.users {
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
	for i, u := range r.w.users {
		if u.Email == tok || u.Name == tok {
			hits = append(hits, i)
		}
	}
	if len(hits) > 1 {
		line, col := r.pol.src.position(a.off)
		names := make([]string, len(hits))
		for i, h := range hits {
			names[i] = fmt.Sprintf("%d(%s)", r.w.users[h].ID, r.w.users[h].Name)
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
func (r *resolver) userIDs(a alias) []uint64 {
	var out []uint64
	switch a.kind {
	case kindUser:
		for _, h := range r.matchUser(a) {
			out = append(out, r.w.users[h].ID)
		}
	case kindGroup:
		for _, m := range r.pol.groups[a.text] {
			for _, h := range r.matchUser(m) {
				out = append(out, r.w.users[h].ID)
			}
		}
	}
	return out
}

// resolve returns the nodes and addresses alias a stands for.
// autogroup:self is per node and resolves to nothing here.
func (r *resolver) resolve(a alias) *resolved {
	if a.kind == kindUser || a.kind == kindGroup {
		// Warnings carry the position of each use, so do not cache
		// the lookup of users itself (it is cheap); cache node sets.
		ids := r.userIDs(a)
		if res, ok := r.cache[a.key()]; ok {
			return res
		}
		res := &resolved{nodes: newBitset(len(r.w.nodes)), identity: true}
		for _, id := range ids {
			for _, i := range r.w.userNodes[id] {
				res.nodes.set(i)
			}
		}
		r.cache[a.key()] = res
		return res
	}
	if res, ok := r.cache[a.key()]; ok {
		return res
	}
	w := r.w
	res := &resolved{}
	switch a.kind {
	case kindWildcard:
		res.nodes = w.all.clone()
		res.addrs = w.tailnetSet.Prefixes()
	case kindTag:
		res.identity = true
		res.nodes = newBitset(len(w.nodes))
		for _, i := range w.tagNodes[a.text] {
			res.nodes.set(i)
		}
	case kindHost, kindPrefix:
		res.addrs = []netip.Prefix{a.pfx}
		res.nodes = newBitset(len(w.nodes))
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
			res.nodes = newBitset(len(w.nodes))
		}
	}
	r.cache[a.key()] = res
	return res
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
