package state

// Subnet routes and exit nodes.
//
// A node advertises routes in Hostinfo.RoutableIPs; an admin (or the
// policy's autoApprovers) approves them into Node.ApprovedRoutes. The
// routes a node serves are those both advertised and approved. Exit routes
// (0.0.0.0/0, ::/0) go to peers from every node that serves them; each
// subnet prefix goes to peers from one primary router only, chosen among
// the online nodes serving it. The choice is sticky: a primary keeps the
// prefix while it stays online and keeps serving it; when it goes offline
// (its last map session closed) or stops serving, the online server with
// the lowest node ID takes over. The primaries are runtime state kept
// here, re-elected only for the prefixes a change touches, and published
// in each node's snapshot as Node.PrimaryRoutes, so a moved primary is an
// ordinary NodeUpdated for both routers.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/store"
)

// routeTable is the runtime HA routing state. Only online nodes appear in
// it.
type routeTable struct {
	// serving holds the subnet routes each online node serves, sorted.
	serving map[ids.NodeID][]netip.Prefix
	// servers holds the online nodes serving each subnet route, by
	// ascending ID.
	servers map[netip.Prefix][]ids.NodeID
	// primary is the router peers use for each subnet route.
	primary map[netip.Prefix]ids.NodeID
}

func newRouteTable() routeTable {
	return routeTable{
		serving: make(map[ids.NodeID][]netip.Prefix),
		servers: make(map[netip.Prefix][]ids.NodeID),
		primary: make(map[netip.Prefix]ids.NodeID),
	}
}

// refreshRoutesLocked brings the route table in line with node id's
// current snapshot (a missing node serves nothing), re-elects the primary
// of every prefix the node started or stopped serving, and updates the
// PrimaryRoutes of the nodes that gained or lost a prefix. It returns
// those nodes, by ascending ID; the caller emits their changes (see
// emitRouteChangesLocked).
func (s *State) refreshRoutesLocked(id ids.NodeID) []ids.NodeID {
	var want []netip.Prefix
	if n, ok := s.nodes[id]; ok && n.Online && !n.PendingApproval {
		want = n.SubnetRoutes()
	}
	have := s.routes.serving[id]
	if len(have) == 0 && len(want) == 0 {
		if n, ok := s.nodes[id]; !ok || len(n.PrimaryRoutes) == 0 {
			return nil // not a router: the common case
		}
	}
	affected := map[ids.NodeID]bool{id: true}
	if !slices.Equal(have, want) {
		if len(want) == 0 {
			delete(s.routes.serving, id)
		} else {
			s.routes.serving[id] = want
		}
		for _, p := range have {
			if !slices.Contains(want, p) {
				ids := slices.DeleteFunc(slices.Clone(s.routes.servers[p]), func(x ids.NodeID) bool { return x == id })
				if len(ids) == 0 {
					delete(s.routes.servers, p)
				} else {
					s.routes.servers[p] = ids
				}
				s.electLocked(p, affected)
			}
		}
		for _, p := range want {
			if !slices.Contains(have, p) {
				ids := s.routes.servers[p]
				if i, found := slices.BinarySearch(ids, id); !found {
					s.routes.servers[p] = slices.Insert(slices.Clone(ids), i, id)
				}
				s.electLocked(p, affected)
			}
		}
	}
	return s.updatePrimaryRoutesLocked(affected)
}

// updatePrimaryRoutesLocked brings the PrimaryRoutes of the nodes in
// affected in line with the route table and returns those that changed,
// by ascending ID.
func (s *State) updatePrimaryRoutesLocked(affected map[ids.NodeID]bool) []ids.NodeID {
	var changed []ids.NodeID
	for x := range affected {
		n, ok := s.nodes[x]
		if !ok {
			continue
		}
		var prim []netip.Prefix
		for _, p := range s.routes.serving[x] {
			if s.routes.primary[p] == x {
				prim = append(prim, p)
			}
		}
		if slices.Equal(n.PrimaryRoutes, prim) {
			continue
		}
		c := n.clone()
		c.PrimaryRoutes = prim
		s.setNode(c)
		changed = append(changed, x)
	}
	slices.Sort(changed)
	return changed
}

// electLocked keeps prefix p's primary while it still serves p, or else
// hands p to the server with the lowest ID (or to nobody). Nodes that
// gain or lose p are added to affected.
func (s *State) electLocked(p netip.Prefix, affected map[ids.NodeID]bool) {
	servers := s.routes.servers[p]
	cur, had := s.routes.primary[p]
	if had && slices.Contains(servers, cur) {
		return
	}
	if s.clustered() && !s.runsJobs() {
		// The server running the jobs decides, and its decision comes
		// as a RemoteChange.Primary; until then p has no primary here
		// if its router stopped serving it.
		return
	}
	if had {
		affected[cur] = true
	}
	if len(servers) == 0 {
		delete(s.routes.primary, p)
		s.publishPrimaryLocked(p, 0)
		if had {
			s.log.Info("subnet route has no online router", "route", p, "previous", cur)
		}
		return
	}
	next := servers[0]
	s.routes.primary[p] = next
	s.publishPrimaryLocked(p, next)
	affected[next] = true
	if had {
		s.log.Info("subnet route failed over", "route", p, "node", next, "previous", cur)
	} else {
		s.log.Debug("subnet route primary chosen", "route", p, "node", next)
	}
}

// runsJobs says this server decides what once-only jobs decide (always
// when it is the only one).
func (s *State) runsJobs() bool { return s.opts.RunsJobs == nil || s.opts.RunsJobs() }

// publishPrimaryLocked tells the other servers that p's primary router
// is now node (0: none).
func (s *State) publishPrimaryLocked(p netip.Prefix, node ids.NodeID) {
	if s.opts.PublishPrimary != nil {
		s.opts.PublishPrimary(p, node)
	}
}

// applyPrimaryLocked puts the jobs server's decision that p's primary
// router is node (0: none) in force and tells the routers that gained
// or lost p.
func (s *State) applyPrimaryLocked(p netip.Prefix, node ids.NodeID) {
	cur, had := s.routes.primary[p]
	if had && cur == node || !had && node == 0 {
		return
	}
	affected := make(map[ids.NodeID]bool, 2)
	if had {
		affected[cur] = true
	}
	if node == 0 {
		delete(s.routes.primary, p)
	} else {
		s.routes.primary[p] = node
		affected[node] = true
	}
	s.emitRouteChangesLocked(s.updatePrimaryRoutesLocked(affected), 0)
}

// ElectAll re-elects every subnet route whose primary no longer serves
// it. The server that takes over the once-only jobs calls it: its
// predecessor may have died before deciding.
func (s *State) ElectAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	affected := make(map[ids.NodeID]bool)
	for p := range s.routes.servers {
		s.electLocked(p, affected)
	}
	for p, cur := range s.routes.primary {
		if _, served := s.routes.servers[p]; !served {
			affected[cur] = true
			s.electLocked(p, affected)
		}
	}
	s.emitRouteChangesLocked(s.updatePrimaryRoutesLocked(affected), 0)
}

// emitRouteChangesLocked tells every node in changed except skip, and its
// peers, that its primary routes changed.
func (s *State) emitRouteChangesLocked(changed []ids.NodeID, skip ids.NodeID) {
	for _, x := range changed {
		if x == skip {
			continue
		}
		if n, ok := s.nodes[x]; ok {
			s.emitLocked(Change{Kind: NodeUpdated, Node: n, Self: true})
		}
	}
}

// PrimaryRoutes returns, for every subnet route with an online router, the
// ID of the node peers route it through.
func (s *State) PrimaryRoutes() map[netip.Prefix]ids.NodeID {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[netip.Prefix]ids.NodeID, len(s.routes.primary))
	for p, id := range s.routes.primary {
		out[p] = id
	}
	return out
}

// autoApprovedLocked returns n's approved routes extended by the routes it
// advertises that the policy's autoApprovers approve for it, and whether
// that added anything. users is built on first need when nil.
func (s *State) autoApprovedLocked(n *Node, users []policy.User) ([]netip.Prefix, bool) {
	if s.pol == nil {
		return nil, false
	}
	var add []netip.Prefix
	var pn policy.Node
	prepared := false
	for _, r := range n.AnnouncedRoutes() {
		if slices.Contains(n.ApprovedRoutes, r) {
			continue
		}
		if !prepared {
			if users == nil {
				users = s.policyUsersLocked()
			}
			pn = policyNode(n)
			prepared = true
		}
		var ok bool
		if IsExitRoute(r) {
			ok = s.pol.AutoApproveExitNode(pn, users)
		} else {
			ok = s.pol.AutoApproveRoute(r, pn, users)
		}
		if ok {
			add = append(add, r)
		}
	}
	if len(add) == 0 {
		return nil, false
	}
	return NormalizeRoutes(append(slices.Clone(n.ApprovedRoutes), add...)), true
}

// addedRoutes returns the routes in after that are not in before.
func addedRoutes(before, after []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range after {
		if !slices.Contains(before, r) {
			out = append(out, r)
		}
	}
	return out
}

// AutoApproveAll applies the policy's autoApprovers to every node: each
// advertised route they approve for its node is added to the node's
// approved routes and stored, as an admin approval would be. Routes
// already approved are never removed. Call it after a new policy is put in
// force (SetPolicy); it does nothing without a policy.
func (s *State) AutoApproveAll(ctx context.Context) error {
	return s.autoApprove(ctx, nil)
}

// autoApprove applies autoApprovers to the nodes in only (every node when
// only is nil).
func (s *State) autoApprove(ctx context.Context, only []ids.NodeID) error {
	s.regMu.Lock()
	defer s.regMu.Unlock()

	s.mu.Lock()
	var todo []*Node
	if s.pol != nil {
		users := s.policyUsersLocked()
		consider := func(n *Node) {
			if routes, ok := s.autoApprovedLocked(n, users); ok {
				c := n.clone()
				c.ApprovedRoutes = routes
				todo = append(todo, c)
			}
		}
		if only == nil {
			for _, n := range s.nodes {
				consider(n)
			}
		} else {
			for _, id := range only {
				if n, ok := s.nodes[id]; ok {
					consider(n)
				}
			}
		}
	}
	s.mu.Unlock()
	if len(todo) == 0 {
		return nil
	}
	slices.SortFunc(todo, func(a, b *Node) int { return compareIDs(a.ID, b.ID) })

	// regMu keeps every other writer of ApprovedRoutes out until the
	// results are in memory, so the snapshots taken above stay current
	// for that field.
	var errs []error
	stored := todo[:0]
	for _, n := range todo {
		sn, err := s.st.UpdateNode(ctx, nodeToStore(n), 0)
		if err != nil {
			if !errors.Is(err, store.ErrNotFound) {
				errs = append(errs, fmt.Errorf("storing auto-approved routes of node %d: %w", n.ID, err))
			}
			continue
		}
		if s.clustered() {
			n.Version = sn.Version
		}
		stored = append(stored, n)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	type applied struct {
		n     *Node
		added []netip.Prefix
	}
	var done []applied
	for _, w := range stored {
		cur, ok := s.nodes[w.ID]
		if !ok {
			continue
		}
		c := cur.clone()
		c.ApprovedRoutes = w.ApprovedRoutes
		s.setNode(c)
		done = append(done, applied{c, addedRoutes(cur.ApprovedRoutes, c.ApprovedRoutes)})
	}
	if len(done) == 0 {
		return errors.Join(errs...)
	}
	// Approved routes are part of the compiled policy (subnet routers
	// receive the rules for their subnets).
	s.recompileForLocked(nil)
	for _, d := range done {
		changed := s.refreshRoutesLocked(d.n.ID)
		s.emitLocked(Change{Kind: NodeUpdated, Node: s.nodes[d.n.ID], Self: true})
		s.emitRouteChangesLocked(changed, d.n.ID)
		s.log.Info("routes approved by the policy's autoApprovers", "node", d.n.ID, "name", d.n.GivenName, "routes", d.added)
	}
	s.emitPolicyLocked()
	return errors.Join(errs...)
}

func compareIDs(a, b ids.NodeID) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
