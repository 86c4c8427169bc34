package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/hsctl/headscale/pkg/ids"
	"tailscale.com/tailcfg"
)

// defaultProtos is what a rule without "proto" allows, and what a test
// without "proto" tries: TCP, UDP, ICMP and ICMPv6.
var defaultProtos = []int{6, 17, 1, 58}

// RunTests evaluates the policy's "tests" and "sshTests" against the
// compiled result. It returns nil when every assertion holds, otherwise
// an ErrorList with one entry per failing assertion, each with the
// position of the assertion in the policy file. A policy should be
// accepted only if RunTests passes.
func (c *Compiled) RunTests() error {
	if c.pol == nil {
		return nil
	}
	var errs ErrorList
	for ti := range c.pol.tests {
		errs = append(errs, c.runACLTest(&c.pol.tests[ti])...)
	}
	for ti := range c.pol.sshTests {
		errs = append(errs, c.runSSHTest(&c.pol.sshTests[ti])...)
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

func (c *Compiled) testErr(off int, path, format string, args ...any) *Error {
	return c.pol.src.newError(off, path, format, args...)
}

// testSources resolves a test src to the addresses it stands for, and the
// user it names (for autogroup:self destinations).
func (c *Compiled) testSources(a alias) ([]netip.Prefix, ids.UserID, bool) {
	r := newResolver(c.pol, c.w)
	res := r.resolve(a)
	var out []netip.Prefix
	if res.identity {
		res.nodes.each(func(i int) {
			for _, ip := range c.w.slot(i).ips {
				out = append(out, netip.PrefixFrom(ip, ip.BitLen()))
			}
		})
	}
	out = append(out, res.addrs...)
	var uid ids.UserID
	hasUser := false
	if a.kind == kindUser {
		if ids := r.userIDs(a); len(ids) == 1 {
			uid, hasUser = ids[0], true
		}
	}
	return out, uid, hasUser
}

func (c *Compiled) runACLTest(t *aclTest) []*Error {
	if t.src.kind == 0 {
		return nil
	}
	srcs, uid, hasUser := c.testSources(t.src)
	if len(srcs) == 0 {
		return []*Error{c.testErr(t.off, t.path, "source %q resolved to no IP addresses", t.srcStr)}
	}
	protos := t.proto.nums
	if protos == nil {
		protos = defaultProtos
	}
	var errs []*Error
	check := func(list []strAt, want bool) {
		for _, d := range list {
			host, portStr, _ := splitHostPort(d.s)
			ports, _ := parsePorts(portStr)
			a, _ := parseAlias(host)
			a.off, a.path = d.off, d.path
			if a.kind == kindHost {
				a.pfx = c.pol.hosts[a.text]
			}
			dsts := c.testDests(a, uid, hasUser)
			if len(dsts) == 0 {
				errs = append(errs, c.testErr(d.off, d.path, "%s -> %s: destination resolved to no IP addresses", t.srcStr, d.s))
				continue
			}
			got := true
			for _, s := range srcs {
				if !c.allows(s, dsts, ports[0].First, protos) {
					got = false
					break
				}
			}
			if got != want {
				errs = append(errs, c.testErr(d.off, d.path, "%s -> %s%s: expected %s, got %s", t.srcStr, d.s, protoSuffix(t.proto), verdict(want), verdict(got)))
			}
		}
	}
	check(t.accept, true)
	check(t.deny, false)
	return errs
}

func protoSuffix(p protocol) string {
	if p.name == "" {
		return ""
	}
	return " (" + p.name + ")"
}

func verdict(allowed bool) string {
	if allowed {
		return "ALLOWED"
	}
	return "DENIED"
}

// testDests resolves a test destination to addresses; autogroup:self is
// the source user's own devices.
func (c *Compiled) testDests(a alias, uid ids.UserID, hasUser bool) []netip.Addr {
	w := c.w
	var out []netip.Addr
	if a.is(agSelf) {
		if !hasUser {
			return nil
		}
		for _, i := range w.usersNodes(uid) {
			out = append(out, w.slot(i).ips...)
		}
		return out
	}
	r := newResolver(c.pol, w)
	res := r.resolve(a)
	if res.identity {
		res.nodes.each(func(i int) { out = append(out, w.slot(i).ips...) })
	}
	for _, p := range res.addrs {
		out = append(out, p.Addr())
	}
	return out
}

// allows reports whether the compiled rules let traffic from src reach
// any of dsts on port with one of protos, evaluating the whole rule set
// (including autogroup:self) rather than one node's filter.
func (c *Compiled) allows(src netip.Prefix, dsts []netip.Addr, port uint16, protos []int) bool {
	if c.allowAll {
		return true
	}
	w := c.w
	portOK := func(ports []tailcfg.PortRange) bool {
		for _, p := range ports {
			if p.First <= port && port <= p.Last {
				return true
			}
		}
		return false
	}
	protoOK := func(ps []int) bool {
		if len(ps) == 0 {
			return true
		}
		for _, p := range ps {
			if slices.Contains(protos, p) {
				return true
			}
		}
		return false
	}
	ipNode := w.ipIndex().ipNode
	for ui := range c.lin.units {
		u := &c.lin.units[ui]
		if u.kind == unitCap || u.kind == unitVia || !c.unitLive(ui) || !portOK(u.ports) || !protoOK(u.proto) || !srcOverlaps(c.specs[u.spec].strs, src) {
			continue
		}
		for _, d := range dsts {
			switch u.kind {
			case unitWild:
				return true
			case unitNodes:
				if i, ok := ipNode[d]; ok && c.aliasNodes[u.alias].has(i) {
					return true
				}
			case unitAddrs:
				for _, e := range u.addrs {
					if e.rng.Contains(d) {
						return true
					}
				}
			}
		}
	}
	// autogroup:self: a source node reaches its own user's devices.
	si, ok := ipNode[src.Addr()]
	if !ok || !src.IsSingleIP() || w.node(si).tagged() {
		return false
	}
	for ti := range c.lin.selfTs {
		t := &c.lin.selfTs[ti]
		if t.ports == nil || !c.specs[t.spec].nodes.has(si) || !portOK(t.ports) || !protoOK(t.proto) {
			continue
		}
		for _, d := range dsts {
			if di, ok := ipNode[d]; ok && !w.node(di).tagged() && w.node(di).UserID == w.node(si).UserID {
				return true
			}
		}
	}
	return false
}

// srcOverlaps reports whether a SrcIPs list covers any of p.
func srcOverlaps(srcIPs []string, p netip.Prefix) bool {
	for _, s := range srcIPs {
		if s == "*" {
			return true
		}
		if rg, err := parseIPRangeString(s); err == nil && rangeOverlapsPrefix(rg, p) {
			return true
		}
	}
	return false
}

func (c *Compiled) runSSHTest(t *sshTest) []*Error {
	if t.src.kind == 0 {
		return nil
	}
	w := c.w
	srcPfx, uid, hasUser := c.testSources(t.src)
	var srcs []netip.Addr
	for _, p := range srcPfx {
		if p.IsSingleIP() {
			srcs = append(srcs, p.Addr())
		}
	}
	srcLabel := t.src.text
	if len(srcs) == 0 {
		return []*Error{c.testErr(t.off, t.path, "source %q resolved to no IP addresses", srcLabel)}
	}
	var errs []*Error
	var dstNodes []int
	seen := map[int]bool{}
	for _, d := range t.dst {
		var found []int
		if d.is(agSelf) {
			if hasUser {
				found = w.usersNodes(uid)
			}
		} else {
			r := newResolver(c.pol, w)
			r.resolve(d).nodes.each(func(i int) { found = append(found, i) })
		}
		if len(found) == 0 {
			errs = append(errs, c.testErr(d.off, d.path, "dst alias %q resolved to no nodes", d.text))
		}
		for _, i := range found {
			if !seen[i] {
				seen[i] = true
				dstNodes = append(dstNodes, i)
			}
		}
	}
	slices.SortFunc(dstNodes, func(a, b int) int { return cmp.Compare(w.node(a).ID, w.node(b).ID) })
	label := func(i int) string {
		if h := w.node(i).Hostname; h != "" {
			return h
		}
		return fmt.Sprint(w.node(i).ID)
	}
	for _, i := range dstNodes {
		pol := c.SSH(w.node(i).ID)
		for _, u := range t.accept {
			if !allSrcs(srcs, func(a netip.Addr) bool { acc, _ := sshReach(pol, a, u.s); return acc }) {
				errs = append(errs, c.testErr(u.off, u.path, "%s/%s -> %s: expected ALLOWED, got DENIED", srcLabel, u.s, label(i)))
			}
		}
		for _, u := range t.deny {
			if anySrc(srcs, func(a netip.Addr) bool { acc, _ := sshReach(pol, a, u.s); return acc }) {
				errs = append(errs, c.testErr(u.off, u.path, "%s/%s -> %s: expected DENIED, got ALLOWED", srcLabel, u.s, label(i)))
			}
		}
		for _, u := range t.check {
			if !allSrcs(srcs, func(a netip.Addr) bool { _, chk := sshReach(pol, a, u.s); return chk }) {
				how := "DENIED"
				if allSrcs(srcs, func(a netip.Addr) bool { acc, _ := sshReach(pol, a, u.s); return acc }) {
					how = "ALLOWED via accept"
				}
				errs = append(errs, c.testErr(u.off, u.path, "%s/%s -> %s: expected ALLOWED via check, got %s", srcLabel, u.s, label(i), how))
			}
		}
	}
	return errs
}

func allSrcs(srcs []netip.Addr, f func(netip.Addr) bool) bool {
	for _, s := range srcs {
		if !f(s) {
			return false
		}
	}
	return true
}

func anySrc(srcs []netip.Addr, f func(netip.Addr) bool) bool {
	for _, s := range srcs {
		if f(s) {
			return true
		}
	}
	return false
}

// sshReach reports whether src may log in as user under pol, and whether
// that is through a check rule.
func sshReach(pol *tailcfg.SSHPolicy, src netip.Addr, user string) (accept, check bool) {
	if pol == nil || user == "" {
		return false, false
	}
	for _, r := range pol.Rules {
		if r.Action == nil || !slices.ContainsFunc(r.Principals, func(p *tailcfg.SSHPrincipal) bool {
			a, err := netip.ParseAddr(p.NodeIP)
			return err == nil && a == src
		}) {
			continue
		}
		if !sshUserAllowed(r.SSHUsers, user) {
			continue
		}
		accept = true
		if r.Action.HoldAndDelegate != "" {
			check = true
		}
	}
	return accept, check
}

func sshUserAllowed(m map[string]string, user string) bool {
	if v, ok := m[user]; ok {
		return v != ""
	}
	if user == "root" {
		return false
	}
	return m["*"] != ""
}
