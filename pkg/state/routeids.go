package state

// Routes by ID, for the routes verbs of Headscale 0.23–0.25 (`headscale
// routes list|enable|disable|delete`, /api/v1/routes). Headscale kept a
// row per (node, prefix) then; here a node's announced routes are in its
// host info, its approved ones in ApprovedRoutes and its primaries in the
// route table, and the store's route_ids table only gives each pair a
// stable ID. Enabling a route approves its prefix, disabling takes the
// approval back; an exit route enables and disables both default routes,
// as in Headscale.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
)

// ErrRouteNotFound reports a route ID that names no current route.
var ErrRouteNotFound = errors.New("route not found")

// Route is one prefix of one node, as Headscale 0.23–0.25 listed routes.
type Route struct {
	ID     ids.RouteID
	Node   *Node
	Prefix netip.Prefix
	// Advertised: the node announces the prefix (host info).
	Advertised bool
	// Enabled: the prefix is approved for the node.
	Enabled bool
	// Primary: the node is the primary router peers use for the prefix
	// (subnet routes only; exit routes are served by every exit node).
	Primary   bool
	CreatedAt time.Time
}

// Routes lists every route of every node (of node only, when not zero):
// each prefix a node announces or has approved, by node and prefix. Pairs
// seen for the first time get their ID here, in one write.
func (s *State) Routes(ctx context.Context, only ids.NodeID) ([]Route, error) {
	var nodes []*Node
	if only != 0 {
		n, ok := s.Node(only)
		if !ok {
			return nil, ErrNodeNotFound
		}
		nodes = []*Node{n}
	} else {
		nodes = s.Nodes()
	}
	known, err := s.routeIDs(ctx)
	if err != nil {
		return nil, err
	}
	var missing []store.RouteKey
	for _, n := range nodes {
		for _, p := range routePrefixes(n) {
			if _, ok := known[store.RouteKey{NodeID: n.ID, Prefix: p}]; !ok {
				missing = append(missing, store.RouteKey{NodeID: n.ID, Prefix: p})
			}
		}
	}
	if len(missing) > 0 {
		if err := s.st.AddRouteIDs(ctx, missing); err != nil && !errors.Is(err, store.ErrNotFound) {
			return nil, fmt.Errorf("numbering routes: %w", err)
		} else if err != nil {
			// A node was deleted meanwhile: number the others.
			var kept []store.RouteKey
			for _, k := range missing {
				if _, ok := s.Node(k.NodeID); ok {
					kept = append(kept, k)
				}
			}
			if err := s.st.AddRouteIDs(ctx, kept); err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, fmt.Errorf("numbering routes: %w", err)
			}
		}
		if known, err = s.routeIDs(ctx); err != nil {
			return nil, err
		}
	}
	var out []Route
	for _, n := range nodes {
		announced := n.AnnouncedRoutes()
		for _, p := range routePrefixes(n) {
			r, ok := known[store.RouteKey{NodeID: n.ID, Prefix: p}]
			if !ok {
				continue // its node was deleted while we numbered
			}
			out = append(out, Route{
				ID: r.ID, Node: n, Prefix: p, CreatedAt: r.CreatedAt,
				Advertised: slices.Contains(announced, p),
				Enabled:    slices.Contains(n.ApprovedRoutes, p),
				Primary:    slices.Contains(n.PrimaryRoutes, p),
			})
		}
	}
	return out, nil
}

// routePrefixes is what a node has routes for: announced ∪ approved,
// sorted.
func routePrefixes(n *Node) []netip.Prefix {
	return sortRoutes(append(n.AnnouncedRoutes(), n.ApprovedRoutes...))
}

func (s *State) routeIDs(ctx context.Context) (map[store.RouteKey]store.RouteID, error) {
	rows, err := s.st.ListRouteIDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading route IDs: %w", err)
	}
	out := make(map[store.RouteKey]store.RouteID, len(rows))
	for _, r := range rows {
		out[store.RouteKey{NodeID: r.NodeID, Prefix: r.Prefix}] = r
	}
	return out, nil
}

// route resolves a route ID to its node and prefix; an ID whose pair is
// no longer announced or approved is not found, as a deleted route was in
// Headscale.
func (s *State) route(ctx context.Context, id ids.RouteID) (*Node, netip.Prefix, error) {
	r, err := s.st.GetRouteID(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, netip.Prefix{}, fmt.Errorf("%w: %d (list routes with `headscale routes list`)", ErrRouteNotFound, id)
	}
	if err != nil {
		return nil, netip.Prefix{}, fmt.Errorf("looking up route %d: %w", id, err)
	}
	n, ok := s.Node(r.NodeID)
	if !ok || !slices.Contains(routePrefixes(n), r.Prefix) {
		return nil, netip.Prefix{}, fmt.Errorf("%w: %d (list routes with `headscale routes list`)", ErrRouteNotFound, id)
	}
	return n, r.Prefix, nil
}

// EnableRoute approves route id's prefix for its node (an exit route
// approves both default routes).
func (s *State) EnableRoute(ctx context.Context, id ids.RouteID) (*Node, error) {
	n, p, err := s.route(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.SetApprovedRoutes(ctx, n.ID, append(slices.Clone(n.ApprovedRoutes), p))
}

// DisableRoute takes back the approval of route id's prefix (an exit
// route takes back both default routes).
func (s *State) DisableRoute(ctx context.Context, id ids.RouteID) (*Node, error) {
	n, p, err := s.route(ctx, id)
	if err != nil {
		return nil, err
	}
	return s.SetApprovedRoutes(ctx, n.ID, withoutRoute(n.ApprovedRoutes, p))
}

// DeleteRoute takes back the approval of route id's prefix and forgets its
// ID (an exit route: both default routes). A prefix the node still
// announces gets a new ID when routes are next listed, as a route the node
// advertised again did in Headscale.
func (s *State) DeleteRoute(ctx context.Context, id ids.RouteID) error {
	n, p, err := s.route(ctx, id)
	if err != nil {
		return err
	}
	if _, err := s.SetApprovedRoutes(ctx, n.ID, withoutRoute(n.ApprovedRoutes, p)); err != nil {
		return err
	}
	forget := []store.RouteKey{{NodeID: n.ID, Prefix: p}}
	if IsExitRoute(p) {
		forget = []store.RouteKey{{NodeID: n.ID, Prefix: exitRouteV4}, {NodeID: n.ID, Prefix: exitRouteV6}}
	}
	if err := s.st.DeleteRouteIDs(ctx, forget); err != nil {
		return fmt.Errorf("forgetting route %d: %w", id, err)
	}
	s.log.Info("route deleted", "node", n.ID, "route", p)
	return nil
}

// withoutRoute returns routes without p (without both default routes when
// p is one).
func withoutRoute(routes []netip.Prefix, p netip.Prefix) []netip.Prefix {
	return slices.DeleteFunc(slices.Clone(routes), func(r netip.Prefix) bool {
		return r == p || (IsExitRoute(p) && IsExitRoute(r))
	})
}
