package policy

import (
	"net/netip"
	"slices"
	"sort"
	"strings"

	"tailscale.com/tailcfg"
)

// sshCompiled is an SSH rule resolved against the world.
type sshCompiled struct {
	action     *tailcfg.SSHAction
	users      map[string]string
	acceptEnv  []string
	self       bool   // autogroup:self destination
	hasOther   bool   // destinations other than autogroup:self
	dst        bitset // other destinations
	src        bitset
	userIDs    []uint64 // source users, ascending
	byUser     map[uint64][]*tailcfg.SSHPrincipal
	tagged     []*tailcfg.SSHPrincipal
	localparts map[uint64]string // user ID -> e-mail local part (localpart:*@domain)
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

func (c *Compiled) compileSSH(r *resolver) {
	w := c.w
	n := len(w.nodes)
	check := &tailcfg.SSHAction{HoldAndDelegate: c.opts.ServerURL + SSHCheckPath}
	accept := sshAcceptAction
	for _, rule := range c.pol.ssh {
		sc := sshCompiled{
			acceptEnv: rule.acceptEnv,
			dst:       newBitset(n),
			src:       newBitset(n),
			users:     map[string]string{"root": ""},
			byUser:    map[uint64][]*tailcfg.SSHPrincipal{},
		}
		if rule.check {
			sc.action = check
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
			sc.src.or(res.nodes)
		}
		for _, d := range rule.dst {
			if d.is(agSelf) {
				sc.self = true
				continue
			}
			sc.hasOther = true
			sc.dst.or(r.resolve(d).nodes)
		}
		// Principals: one per source address, grouped by user; tagged
		// nodes are listed once per tag, as Tailscale's control plane
		// does.
		sc.src.each(func(i int) {
			nd := &w.nodes[i]
			if nd.tagged() {
				for range nd.Tags {
					for _, ip := range w.ipStrs[i] {
						sc.tagged = append(sc.tagged, &tailcfg.SSHPrincipal{NodeIP: ip})
					}
				}
				return
			}
			if _, ok := w.userByID[nd.UserID]; !ok {
				return
			}
			if _, ok := sc.byUser[nd.UserID]; !ok {
				sc.userIDs = append(sc.userIDs, nd.UserID)
			}
			for _, ip := range w.ipStrs[i] {
				sc.byUser[nd.UserID] = append(sc.byUser[nd.UserID], &tailcfg.SSHPrincipal{NodeIP: ip})
			}
		})
		slices.Sort(sc.userIDs)
		for _, ps := range sc.byUser {
			sort.Slice(ps, func(a, b int) bool {
				return netip.MustParseAddr(ps[a].NodeIP).Less(netip.MustParseAddr(ps[b].NodeIP))
			})
		}
		if len(domains) > 0 {
			sc.localparts = map[uint64]string{}
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
		c.ssh = append(c.ssh, sc)
	}
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
func (c *Compiled) SSH(nodeID uint64) *tailcfg.SSHPolicy {
	i, ok := c.w.index[nodeID]
	if !ok || len(c.ssh) == 0 {
		return nil
	}
	if r := c.sshCache[i].Load(); r != nil {
		return r.pol
	}
	pol := c.sshFor(i)
	c.sshCache[i].CompareAndSwap(nil, &sshResult{pol: pol})
	return c.sshCache[i].Load().pol
}

func (c *Compiled) sshFor(i int) *tailcfg.SSHPolicy {
	w := c.w
	nd := &w.nodes[i]
	var rules []*tailcfg.SSHRule
	for ri := range c.ssh {
		sc := &c.ssh[ri]
		if sc.src.empty() {
			continue
		}
		emit := func(ps []*tailcfg.SSHPrincipal, uid uint64, hasUID bool) {
			rules = append(rules, &tailcfg.SSHRule{Principals: ps, SSHUsers: sc.users, Action: sc.action, AcceptEnv: sc.acceptEnv})
			if hasUID {
				if lp, ok := sc.localparts[uid]; ok {
					rules = append(rules, &tailcfg.SSHRule{Principals: ps, SSHUsers: map[string]string{lp: lp}, Action: sc.action, AcceptEnv: sc.acceptEnv})
				}
			}
		}
		if sc.self && !nd.tagged() {
			if ps := sc.byUser[nd.UserID]; len(ps) > 0 {
				emit(ps, nd.UserID, true)
			}
		}
		switch {
		case sc.dst.has(i):
			if sc.localparts != nil {
				for _, uid := range sc.userIDs {
					emit(sc.byUser[uid], uid, true)
				}
				if len(sc.tagged) > 0 {
					emit(sc.tagged, 0, false)
				}
				continue
			}
			var all []*tailcfg.SSHPrincipal
			for _, uid := range sc.userIDs {
				all = append(all, sc.byUser[uid]...)
			}
			all = append(all, sc.tagged...)
			if len(all) > 0 {
				emit(all, 0, false)
			}
		case sc.localparts != nil && sc.src.has(i) && sc.hasOther:
			// A source that is not a destination still gets its own
			// user's localpart mapping (Tailscale does this).
			if nd.tagged() {
				var ps []*tailcfg.SSHPrincipal
				for _, ip := range w.ipStrs[i] {
					ps = append(ps, &tailcfg.SSHPrincipal{NodeIP: ip})
				}
				if len(ps) > 0 {
					emit(ps, 0, false)
				}
			} else if ps := sc.byUser[nd.UserID]; len(ps) > 0 {
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
