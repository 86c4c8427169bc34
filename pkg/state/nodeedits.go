package state

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/dnsname"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/types/key"
)

// Edits to registered nodes, by an admin through the API or CLI (expire,
// rename, tags, routes, owner, delete) or by the client (key rotation,
// logout). All but DeleteNode go through update.

// update applies fn to a copy of node id, stores it, swaps it in and emits
// a NodeUpdated change. It is the one path for admin edits.
func (s *State) update(ctx context.Context, id ids.NodeID, fn func(n *Node) error) (*Node, error) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	var (
		old, n       *Node
		autoApproved []netip.Prefix
	)
	for attempt := 1; ; attempt++ {
		var ok bool
		if old, ok = s.Node(id); !ok {
			return nil, ErrNodeNotFound
		}
		n = old.clone()
		if err := fn(n); err != nil {
			return nil, err
		}
		if membership := old.UserID != n.UserID || !slices.Equal(old.Tags, n.Tags); membership {
			// A new owner or tags may be allowed to have more routes approved.
			autoApproved = s.applyAutoApprovals(n)
		}
		if !s.clustered() {
			if _, err := s.st.UpdateNode(ctx, nodeToStore(n), 0); err != nil {
				return nil, fmt.Errorf("storing node %d: %w", id, err)
			}
			break
		}
		// Another server may have changed the node since this one last
		// heard: write only over the version edited, else catch up and
		// edit again.
		stored, err := s.st.UpdateNodeIfVersion(ctx, nodeToStore(n))
		if errors.Is(err, store.ErrStale) && attempt < maxEditAttempts {
			if err := s.catchUp(ctx); err != nil {
				return nil, fmt.Errorf("storing node %d: %w", id, err)
			}
			continue
		}
		if errors.Is(err, store.ErrNotFound) {
			return nil, ErrNodeNotFound
		}
		if err != nil {
			return nil, fmt.Errorf("storing node %d: %w", id, err)
		}
		n.Version = stored.Version
		break
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n, recompile := s.replaceNodeLocked(old, n, false)
	if n == nil {
		return nil, ErrNodeNotFound
	}
	if recompile {
		s.emitPolicyLocked()
	}
	if len(autoApproved) > 0 {
		s.log.Info("routes approved by the policy's autoApprovers", "node", n.ID, "name", n.GivenName, "routes", autoApproved)
	}
	return n, nil
}

// maxEditAttempts bounds how often update edits a node another server
// keeps changing.
const maxEditAttempts = 5

// catchUp applies what other servers stored before now
// (Options.CatchUp); nothing for a single server.
func (s *State) catchUp(ctx context.Context) error {
	if s.opts.CatchUp == nil {
		return nil
	}
	return s.opts.CatchUp(ctx)
}

// ExpireNode sets the node's key expiry to at (now when zero); a zero
// time with disable set removes expiry.
func (s *State) ExpireNode(ctx context.Context, id ids.NodeID, at time.Time, disable bool) (*Node, error) {
	if at.IsZero() && !disable {
		at = s.now()
	}
	n, err := s.update(ctx, id, func(n *Node) error {
		if disable {
			n.Expiry = time.Time{}
		} else {
			n.Expiry = at
		}
		return nil
	})
	if err == nil {
		s.log.Info("node expiry set", "node", id, "expiry", n.Expiry)
	}
	return n, err
}

// RequireApproval reports whether node.require_approval is on: nodes
// registered now wait for ApproveNode.
func (s *State) RequireApproval() bool { return s.opts.RequireApproval }

// ApproveNode approves a node waiting for approval (node.require_approval):
// it gets its peers and becomes a peer of the nodes the policy lets see it,
// as one node's change. Approving an approved node changes nothing.
func (s *State) ApproveNode(ctx context.Context, id ids.NodeID) (*Node, error) {
	n, ok := s.Node(id)
	if !ok {
		return nil, ErrNodeNotFound
	}
	if !n.PendingApproval {
		return n, nil
	}
	n, err := s.update(ctx, id, func(n *Node) error {
		n.PendingApproval = false
		return nil
	})
	if err == nil {
		s.log.Info("node approved", "node", id, "name", n.GivenName)
	}
	return n, err
}

// RenameNode sets a node's MagicDNS name.
func (s *State) RenameNode(ctx context.Context, id ids.NodeID, name string) (*Node, error) {
	name = strings.ToLower(strings.TrimSpace(name))
	if !dnsname.Valid(name) {
		return nil, fmt.Errorf("%w: %q is not a DNS label (lowercase letters, digits, hyphens, at most 63)", ErrInvalidName, name)
	}
	return s.update(ctx, id, func(n *Node) error {
		s.mu.Lock()
		owner, taken := s.names[name]
		s.mu.Unlock()
		if taken && owner != id {
			return fmt.Errorf("%w: %q is used by node %d", store.ErrConflict, name, owner)
		}
		n.GivenName = name
		return nil
	})
}

// SetTags replaces a node's tags; a tagged node loses its user owner and
// its key expiry, as in Tailscale.
func (s *State) SetTags(ctx context.Context, id ids.NodeID, tags []string) (*Node, error) {
	if err := ValidateTags(tags); err != nil {
		return nil, err
	}
	if err := s.checkTagsDefined(tags); err != nil {
		return nil, err
	}
	return s.update(ctx, id, func(n *Node) error {
		n.Tags = slices.Compact(slices.Sorted(slices.Values(tags)))
		if len(n.Tags) > 0 {
			n.UserID = 0
			n.Expiry = time.Time{}
		}
		return nil
	})
}

// ValidateTags checks that every tag looks like tag:name (lowercase, no
// spaces or commas); pre-auth keys and admin tagging share this rule.
func ValidateTags(tags []string) error {
	for _, t := range tags {
		if !strings.HasPrefix(t, "tag:") || len(t) < 5 || strings.ContainsAny(t, " \t,") || strings.ToLower(t) != t {
			return fmt.Errorf("%w: tag %q must look like tag:name (lowercase, no spaces)", ErrInvalidName, t)
		}
	}
	return nil
}

// RotateNodeKey replaces a node's node key (the client rotates it on
// re-authentication).
func (s *State) RotateNodeKey(ctx context.Context, id ids.NodeID, nk key.NodePublic) (*Node, error) {
	return s.update(ctx, id, func(n *Node) error {
		n.NodeKey = nk
		return nil
	})
}

// Logout ends a node's login: an ephemeral node is deleted, any other node
// has its key expired now.
func (s *State) Logout(ctx context.Context, id ids.NodeID) error {
	n, ok := s.Node(id)
	if !ok {
		return ErrNodeNotFound
	}
	if n.Ephemeral {
		return s.DeleteNode(ctx, id)
	}
	_, err := s.ExpireNode(ctx, id, time.Time{}, false)
	return err
}

// DeleteNode removes a node; its peers drop it and its sessions end.
func (s *State) DeleteNode(ctx context.Context, id ids.NodeID) error {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	n, ok := s.Node(id)
	if !ok {
		return ErrNodeNotFound
	}
	return s.deleteNodeLocked(ctx, n)
}

// deleteNodeLocked is DeleteNode of node n (regMu held).
func (s *State) deleteNodeLocked(ctx context.Context, n *Node) error {
	id := n.ID
	if err := s.st.DeleteNode(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("deleting node %d: %w", id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeNodeLocked(n)
	s.emitPolicyLocked()
	s.log.Info("node deleted", "node", id, "name", n.GivenName)
	return nil
}

// replaceNodeLocked puts n, a new version of node old that is already
// stored, in memory and tells of it (s.mu held): runtime fields and what
// the client reports are kept from the version in memory (registered: the
// client re-registered, and its host info and capability are n's), the
// policy is recompiled for the node when what it depends on changed,
// primary routers are re-elected, and NodeUpdated goes to the node's
// sessions and peers. The caller emits the policy change
// (emitPolicyLocked). It returns the node as now held, or nil when the
// node is not in memory (deleted meanwhile).
//
// Local edits (update), re-registration in place and nodes stored by
// another server (ApplyRemote) all end here, so a change costs the same
// work whoever made it.
func (s *State) replaceNodeLocked(old, n *Node, registered bool) (*Node, bool) {
	cur, ok := s.nodes[n.ID]
	if !ok {
		return nil, false
	}
	if s.clustered() && cur.Version > n.Version {
		return cur, false // a newer version arrived first: n is stale
	}
	// Runtime fields and what the client reports may have moved on
	// while the row was written; edits do not touch them.
	keepLiveFields(n, cur, registered)
	s.index(n)
	// Approved routes are part of the compiled policy: subnet routers
	// receive the rules for their subnets and peers see them.
	recompile := old.UserID != n.UserID || !slices.Equal(old.Tags, n.Tags) || !slices.Equal(old.ApprovedRoutes, n.ApprovedRoutes) ||
		old.IPv4 != n.IPv4 || old.IPv6 != n.IPv6 || old.PendingApproval != n.PendingApproval
	if recompile {
		s.recompileForLocked(n)
	}
	changed := s.refreshRoutesLocked(n.ID)
	n = s.nodes[n.ID]
	c := Change{Kind: NodeUpdated, Node: n, Self: true}
	if registered {
		c.User = s.users[n.UserID]
	}
	s.emitLocked(c)
	s.emitRouteChangesLocked(changed, n.ID)
	return n, recompile
}

// addNodeLocked puts n, a node just stored whose addresses are already
// taken from the allocator, in memory and tells of it (s.mu held): the
// policy is recompiled for it and NodeAdded goes to its peers. The caller
// emits the policy change.
func (s *State) addNodeLocked(n *Node) {
	s.index(n)
	s.recompileForLocked(n)
	s.emitLocked(Change{Kind: NodeAdded, Node: n, User: s.users[n.UserID]})
}

// removeNodeLocked takes node n, already deleted from the store, out of
// memory (s.mu held): its addresses go back to the allocator, the policy
// is recompiled without it, its subnet routes fail over, and NodeRemoved
// goes to its peers and ends its sessions. The caller emits the policy
// change.
func (s *State) removeNodeLocked(n *Node) {
	s.unindex(n)
	s.opts.Alloc.Release(n.IPv4, n.IPv6)
	s.recompileForLocked(n)
	changed := s.refreshRoutesLocked(n.ID) // its subnet routes fail over
	s.emitLocked(Change{Kind: NodeRemoved, Node: n})
	s.emitRouteChangesLocked(changed, n.ID)
}

// SetApprovedRoutes replaces the routes an admin approved for a node (an
// empty list clears them). Routes the node also advertises are served to
// peers: exit routes from the node itself, each subnet route from its
// primary router. Either exit route approves both, as in Headscale.
// autoApprovers are not applied here, so an admin can take back a route
// they approved; they apply again when the node's advertised routes change
// or a policy is set.
func (s *State) SetApprovedRoutes(ctx context.Context, id ids.NodeID, routes []netip.Prefix) (*Node, error) {
	routes = NormalizeRoutes(routes)
	if len(routes) == 0 {
		routes = nil
	}
	return s.update(ctx, id, func(n *Node) error {
		n.ApprovedRoutes = routes
		return nil
	})
}

// SetOwner gives a user-owned node to another user. Tagged nodes have no
// user owner and are refused.
func (s *State) SetOwner(ctx context.Context, id ids.NodeID, userID ids.UserID) (*Node, error) {
	if _, ok := s.User(userID); !ok {
		return nil, fmt.Errorf("%w: user %d", store.ErrNotFound, userID)
	}
	return s.update(ctx, id, func(n *Node) error {
		if n.Tagged() {
			return fmt.Errorf("%w: node %d is tagged (%s): a tagged node belongs to its tags, not to a user, and cannot be moved", ErrInvalidName, id, strings.Join(n.Tags, ","))
		}
		n.UserID = userID
		return nil
	})
}

// DeletePreAuthKey deletes a pre-auth key. Nodes registered with it keep
// working: the database forgets their link to the key (ON DELETE SET NULL)
// and so does memory, or the next edit of such a node would write the
// deleted key's ID back and be refused.
func (s *State) DeletePreAuthKey(ctx context.Context, id ids.PreAuthKeyID) error {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	if err := s.st.DeletePreAuthKey(ctx, id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.sorted {
		if n.AuthKeyID == id {
			c := n.clone()
			c.AuthKeyID = 0
			s.setNode(c)
		}
	}
	return nil
}
