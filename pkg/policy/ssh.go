package policy

import (
	"net/netip"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"tailscale.com/tailcfg"
)

// sshRuleC is an SSH rule's node-independent part.
type sshRuleC struct {
	action     *tailcfg.SSHAction
	users      map[string]string
	acceptEnv  []string
	self       bool                  // autogroup:self destination
	hasOther   bool                  // destinations other than autogroup:self
	src, dst   []int32               // aliases (dst without autogroup:self)
	localparts map[ids.UserID]string // user ID -> e-mail local part (localpart:*@domain)
	check      bool                  // action "check"
	period     time.Duration         // check: how long an approval lasts (0: always ask)
}

// sshState is an SSH rule resolved against the nodes.
type sshState struct {
	src, dst bitset
	userIDs  []ids.UserID                              // source users with principals, ascending
	byUser   pmap[ids.UserID, []*tailcfg.SSHPrincipal] // sorted by address
	tagged   []*tailcfg.SSHPrincipal                   // tagged sources in ID order, once per tag
}

type sshResult struct{ pol *tailcfg.SSHPolicy }

var sshAcceptAction = tailcfg.SSHAction{
	Accept:                    true,
	AllowAgentForwarding:      true,
	AllowLocalPortForwarding:  true,
	AllowRemotePortForwarding: true,
}

// SSHCheckPath is appended to CompileOptions.ServerURL to form the URL
// clients are sent to by an SSH "check" rule.
const SSHCheckPath = "/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"

func (b *builder) compileSSH() {
	c, r := b.c, b.r
	w := c.w
	check := &tailcfg.SSHAction{HoldAndDelegate: c.opts.ServerURL + SSHCheckPath}
	accept := sshAcceptAction
	for _, rule := range c.pol.ssh {
		sc := sshRuleC{
			acceptEnv: rule.acceptEnv,
			users:     map[string]string{"root": ""},
		}
		st := &sshState{src: newBitset(w.n), dst: newBitset(w.n)}
		if rule.check {
			sc.action = check
			sc.check = true
			sc.period = DefaultSSHCheckPeriod
			if p := rule.period; p != nil {
				sc.period = p.d
				if p.always {
					sc.period = 0
				}
			}
		} else {
			sc.action = &accept
		}
		var domains []string
		for _, u := range rule.users {
			switch {
			case u == "root":
				sc.users["root"] = "root"
			case u == agNonRoot:
				sc.users["*"] = "="
			case isLocalpart(u):
				domains = append(domains, strings.TrimPrefix(u, "localpart:*@"))
			default:
				sc.users[u] = u
			}
		}
		for _, s := range rule.src {
			res := r.resolve(s)
			sc.src = append(sc.src, res.idx)
			st.src.or(res.nodes)
		}
		for _, d := range rule.dst {
			if d.is(agSelf) {
				sc.self = true
				continue
			}
			sc.hasOther = true
			res := r.resolve(d)
			sc.dst = append(sc.dst, res.idx)
			st.dst.or(res.nodes)
		}
		// Principals: one per source address, grouped by user; tagged
		// nodes are listed once per tag, as Tailscale's control plane
		// does.
		byUser := map[ids.UserID][]*tailcfg.SSHPrincipal{}
		st.src.each(func(i int) {
			s := w.slot(i)
			if s.tagged() {
				return
			}
			if _, ok := w.userByID[s.node.UserID]; !ok {
				return
			}
			for _, ip := range s.ipStrs {
				byUser[s.node.UserID] = append(byUser[s.node.UserID], &tailcfg.SSHPrincipal{NodeIP: ip})
			}
		})
		for uid, ps := range byUser {
			st.userIDs = append(st.userIDs, uid)
			sortPrincipals(ps)
		}
		slices.Sort(st.userIDs)
		st.byUser = pmap[ids.UserID, []*tailcfg.SSHPrincipal]{base: byUser}
		st.tagged = taggedPrincipals(w, st.src)
		if len(domains) > 0 {
			sc.localparts = map[ids.UserID]string{}
			for _, u := range w.users {
				at := strings.LastIndex(u.Email, "@")
				if at < 0 {
					continue
				}
				for _, d := range domains {
					if strings.EqualFold(u.Email[at+1:], d) {
						sc.localparts[u.ID] = u.Email[:at]
					}
				}
			}
		}
		c.lin.ssh = append(c.lin.ssh, sc)
		c.ssh = append(c.ssh, st)
	}
}

func sortPrincipals(ps []*tailcfg.SSHPrincipal) {
	sort.Slice(ps, func(a, b int) bool {
		return netip.MustParseAddr(ps[a].NodeIP).Less(netip.MustParseAddr(ps[b].NodeIP))
	})
}

// taggedPrincipals lists the addresses of the tagged nodes in src, in ID
// order, once per tag.
func taggedPrincipals(w *world, src bitset) []*tailcfg.SSHPrincipal {
	var slots []int
	src.each(func(i int) {
		if w.slot(i).live && w.slot(i).tagged() {
			slots = append(slots, i)
		}
	})
	if !w.sorted {
		sort.Slice(slots, func(a, b int) bool { return w.node(slots[a]).ID < w.node(slots[b]).ID })
	}
	var out []*tailcfg.SSHPrincipal
	for _, i := range slots {
		s := w.slot(i)
		for range s.node.Tags {
			for _, ip := range s.ipStrs {
				out = append(out, &tailcfg.SSHPrincipal{NodeIP: ip})
			}
		}
	}
	return out
}

// isLocalpart reports whether u is the canonical "localpart:*@domain".
func isLocalpart(u string) bool {
	rest, ok := strings.CutPrefix(u, "localpart:*@")
	return ok && rest != "" && !strings.Contains(rest, "@")
}

// SSH returns the SSH policy for node nodeID, or nil when no SSH rule
// targets it. Rules are in Tailscale's order (check rules before accept
// rules, otherwise policy order); principals are source node addresses.
// Note for callers: in a MapResponse a nil SSHPolicy means "unchanged",
// so send an empty &tailcfg.SSHPolicy{} to clear a node's earlier policy.
// The result is shared: do not modify it.
func (c *Compiled) SSH(nodeID ids.NodeID) *tailcfg.SSHPolicy {
	i, ok := c.w.slotOf(nodeID)
	if !ok || len(c.ssh) == 0 {
		return nil
	}
	cell := &c.cache.at(i).ssh
	if r := cell.Load(); r != nil {
		return r.pol
	}
	pol := c.sshFor(i)
	cell.CompareAndSwap(nil, &sshResult{pol: pol})
	return cell.Load().pol
}

func (c *Compiled) sshFor(i int) *tailcfg.SSHPolicy {
	w := c.w
	nd := w.node(i)
	var rules []*tailcfg.SSHRule
	for ri := range c.ssh {
		sc, st := &c.lin.ssh[ri], c.ssh[ri]
		if st.src.empty() {
			continue
		}
		emit := func(ps []*tailcfg.SSHPrincipal, uid ids.UserID, hasUID bool) {
			rules = append(rules, &tailcfg.SSHRule{Principals: ps, SSHUsers: sc.users, Action: sc.action, AcceptEnv: sc.acceptEnv})
			if hasUID {
				if lp, ok := sc.localparts[uid]; ok {
					rules = append(rules, &tailcfg.SSHRule{Principals: ps, SSHUsers: map[string]string{lp: lp}, Action: sc.action, AcceptEnv: sc.acceptEnv})
				}
			}
		}
		if sc.self && !nd.tagged() {
			if ps, _ := st.byUser.get(nd.UserID); len(ps) > 0 {
				emit(ps, nd.UserID, true)
			}
		}
		switch {
		case st.dst.has(i):
			if sc.localparts != nil {
				for _, uid := range st.userIDs {
					ps, _ := st.byUser.get(uid)
					emit(ps, uid, true)
				}
				if len(st.tagged) > 0 {
					emit(st.tagged, 0, false)
				}
				continue
			}
			var all []*tailcfg.SSHPrincipal
			for _, uid := range st.userIDs {
				ps, _ := st.byUser.get(uid)
				all = append(all, ps...)
			}
			all = append(all, st.tagged...)
			if len(all) > 0 {
				emit(all, 0, false)
			}
		case sc.localparts != nil && st.src.has(i) && sc.hasOther:
			// A source that is not a destination still gets its own
			// user's localpart mapping (Tailscale does this).
			if nd.tagged() {
				var ps []*tailcfg.SSHPrincipal
				for _, ip := range w.slot(i).ipStrs {
					ps = append(ps, &tailcfg.SSHPrincipal{NodeIP: ip})
				}
				if len(ps) > 0 {
					emit(ps, 0, false)
				}
			} else if ps, _ := st.byUser.get(nd.UserID); len(ps) > 0 {
				emit(ps, nd.UserID, true)
			}
		}
	}
	if len(rules) == 0 {
		return nil
	}
	// Check rules first (most restrictive), as Tailscale evaluates them.
	slices.SortStableFunc(rules, func(a, b *tailcfg.SSHRule) int {
		ac, bc := a.Action.HoldAndDelegate != "", b.Action.HoldAndDelegate != ""
		switch {
		case ac == bc:
			return 0
		case ac:
			return -1
		}
		return 1
	})
	return &tailcfg.SSHPolicy{Rules: rules}
}

// DefaultSSHCheckPeriod is how long an approved SSH check lasts when the
// rule sets no checkPeriod, as in Tailscale.
const DefaultSSHCheckPeriod = 12 * time.Hour

// SSHCheckPeriod returns how long an approval of an SSH "check" from node
// src to node dst is remembered: the shortest checkPeriod among the check
// rules that cover the pair (0 for "always": ask every time), or
// DefaultSSHCheckPeriod when no check rule covers it. The control server
// asks when a client delegates a check.
func (c *Compiled) SSHCheckPeriod(src, dst ids.NodeID) time.Duration {
	si, ok1 := c.w.slotOf(src)
	di, ok2 := c.w.slotOf(dst)
	if !ok1 || !ok2 {
		return DefaultSSHCheckPeriod
	}
	found := false
	best := time.Duration(0)
	for ri := range c.ssh {
		sc, st := &c.lin.ssh[ri], c.ssh[ri]
		if !sc.check || !st.src.has(si) {
			continue
		}
		covers := st.dst.has(di)
		if !covers && sc.self {
			sn, dn := c.w.node(si), c.w.node(di)
			covers = len(sn.Tags) == 0 && len(dn.Tags) == 0 && sn.UserID == dn.UserID && sn.UserID != 0
		}
		if !covers {
			continue
		}
		if !found || sc.period < best {
			best, found = sc.period, true
		}
	}
	if !found {
		return DefaultSSHCheckPeriod
	}
	return best
}
