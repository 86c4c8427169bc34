package state

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/dnsname"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Pre-auth key errors. Their text reaches the user through `tailscale up`.
var (
	ErrAuthKeyInvalid = errors.New("invalid authkey: unknown or malformed pre-auth key")
	ErrAuthKeyExpired = errors.New("authkey expired: create a new pre-auth key")
	ErrAuthKeyUsed    = errors.New("authkey already used: single-use pre-auth keys work once; create a new one or use --reusable")
)

// ValidateAuthKey checks a pre-auth key the way registration needs: known,
// not expired, not used up.
func (s *State) ValidateAuthKey(ctx context.Context, full string) (store.PreAuthKey, error) {
	prefix, secret, err := authkey.Parse(authkey.KindAuth, full)
	if err != nil {
		return store.PreAuthKey{}, ErrAuthKeyInvalid
	}
	k, err := s.st.GetPreAuthKeyByPrefix(ctx, prefix)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !authkey.Verify(k.Hash, secret)) {
		return store.PreAuthKey{}, ErrAuthKeyInvalid
	}
	if err != nil {
		return store.PreAuthKey{}, fmt.Errorf("looking up pre-auth key: %w", err)
	}
	if !k.Expiration.IsZero() && !s.now().Before(k.Expiration) {
		return store.PreAuthKey{}, ErrAuthKeyExpired
	}
	if k.Used && !k.Reusable {
		return store.PreAuthKey{}, ErrAuthKeyUsed
	}
	return k, nil
}

// RegisterParams is a validated registration by pre-auth key.
type RegisterParams struct {
	Machine  key.MachinePublic
	NodeKey  key.NodePublic
	Hostinfo *tailcfg.Hostinfo
	Cap      tailcfg.CapabilityVersion
	Key      store.PreAuthKey
	// Expiry the client asked for; zero uses the configured node.expiry.
	Expiry time.Time
}

// RegisterWithKey creates a node, or re-registers the machine's existing
// node, with a validated pre-auth key. It returns only after the node is
// durable in the store; a single-use key is marked used in the same
// transaction.
func (s *State) RegisterWithKey(ctx context.Context, p RegisterParams) (*Node, error) {
	s.regMu.Lock()
	defer s.regMu.Unlock()

	now := s.now()
	var userID ids.UserID
	if p.Key.UserID != nil {
		userID = *p.Key.UserID
	}
	tags := slices.Clone(p.Key.Tags)
	if err := s.checkTagsDefined(tags); err != nil {
		return nil, err
	}
	if len(tags) == 0 && p.Hostinfo != nil && len(p.Hostinfo.RequestTags) > 0 {
		// `tailscale up --advertise-tags`: the key's user must own them.
		req := slices.Compact(slices.Sorted(slices.Values(p.Hostinfo.RequestTags)))
		if err := ValidateTags(req); err != nil {
			return nil, fmt.Errorf("requested tags %v are invalid or not permitted: %w", req, err)
		}
		if err := s.CheckTagOwners(userID, nil, req); err != nil {
			return nil, fmt.Errorf("requested tags %v are invalid or not permitted: %w", req, err)
		}
		tags = req
	}
	if len(tags) > 0 {
		userID = 0
	}
	expiry := p.Expiry
	if expiry.IsZero() && s.opts.NodeExpiry > 0 && len(tags) == 0 {
		expiry = now.Add(s.opts.NodeExpiry)
	}
	if len(tags) > 0 {
		expiry = time.Time{} // tagged nodes do not expire
	}
	singleUse := ids.PreAuthKeyID(0)
	if !p.Key.Reusable {
		singleUse = p.Key.ID
	}
	hostname := "node"
	if p.Hostinfo != nil && p.Hostinfo.Hostname != "" {
		hostname = p.Hostinfo.Hostname
	}

	if existing, ok := s.NodeByMachineKey(p.Machine); ok {
		n := existing.clone()
		n.NodeKey = p.NodeKey
		n.UserID = userID
		n.Tags = tags
		n.Ephemeral = p.Key.Ephemeral
		n.AuthKeyID = p.Key.ID
		n.RegisterMethod = "authkey"
		n.Expiry = expiry
		n.Cap = p.Cap
		if p.Hostinfo != nil {
			n.Hostinfo = p.Hostinfo
			n.Hostname = hostname
		}
		autoApproved := s.applyAutoApprovals(n)
		if err := s.st.UpdateNode(ctx, nodeToStore(n), singleUse); err != nil {
			return nil, mapKeyErr(err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if cur, ok := s.nodes[n.ID]; ok {
			// Session state may have moved on while we wrote.
			keepLiveFields(n, cur, true)
		}
		s.index(n)
		recompile := existing.UserID != n.UserID || !slices.Equal(existing.Tags, n.Tags) || !slices.Equal(existing.ApprovedRoutes, n.ApprovedRoutes)
		if recompile {
			s.recompileForLocked(n)
		}
		changed := s.refreshRoutesLocked(n.ID)
		n = s.nodes[n.ID]
		s.emitLocked(Change{Kind: NodeUpdated, Node: n, Self: true, User: s.users[n.UserID]})
		s.emitRouteChangesLocked(changed, n.ID)
		if recompile {
			s.emitPolicyLocked()
		}
		s.log.Info("node re-registered", "node", n.ID, "name", n.GivenName, "user", n.UserID, "machine", p.Machine.ShortString())
		if len(autoApproved) > 0 {
			s.log.Info("routes approved by the policy's autoApprovers", "node", n.ID, "name", n.GivenName, "routes", autoApproved)
		}
		return n, nil
	}

	v4, v6, err := s.opts.Alloc.Next()
	if err != nil {
		return nil, fmt.Errorf("allocating addresses: %w", err)
	}
	s.mu.Lock()
	given := dnsname.Unique(dnsname.Sanitize(hostname), func(c string) bool { _, t := s.names[c]; return t })
	s.mu.Unlock()
	n := &Node{
		MachineKey:     p.Machine,
		NodeKey:        p.NodeKey,
		Hostinfo:       p.Hostinfo,
		IPv4:           v4,
		IPv6:           v6,
		Hostname:       hostname,
		GivenName:      given,
		UserID:         userID,
		Tags:           tags,
		Ephemeral:      p.Key.Ephemeral,
		AuthKeyID:      p.Key.ID,
		RegisterMethod: "authkey",
		Cap:            p.Cap,
		CreatedAt:      now,
		Expiry:         expiry,
	}
	autoApproved := s.applyAutoApprovals(n)
	sn, err := s.st.RegisterNode(ctx, nodeToStore(n), singleUse)
	if err != nil {
		s.opts.Alloc.Release(v4, v6)
		return nil, mapKeyErr(err)
	}
	n.ID = sn.ID
	n.CreatedAt = sn.CreatedAt
	s.mu.Lock()
	defer s.mu.Unlock()
	s.index(n)
	s.recompileForLocked(n)
	s.emitLocked(Change{Kind: NodeAdded, Node: n, User: s.users[n.UserID]})
	s.emitPolicyLocked()
	s.log.Info("node registered", "node", n.ID, "name", n.GivenName, "user", n.UserID, "tags", n.Tags, "ephemeral", n.Ephemeral, "machine", p.Machine.ShortString())
	if len(autoApproved) > 0 {
		s.log.Info("routes approved by the policy's autoApprovers", "node", n.ID, "name", n.GivenName, "routes", autoApproved)
	}
	return n, nil
}

// applyAutoApprovals adds to n (not yet in memory) the advertised routes
// the policy's autoApprovers approve for it, and returns those it added.
func (s *State) applyAutoApprovals(n *Node) []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	routes, ok := s.autoApprovedLocked(n, nil)
	if !ok {
		return nil
	}
	added := addedRoutes(n.ApprovedRoutes, routes)
	n.ApprovedRoutes = routes
	return added
}

func mapKeyErr(err error) error {
	if errors.Is(err, store.ErrKeyUsed) {
		return ErrAuthKeyUsed
	}
	return fmt.Errorf("storing node: %w", err)
}

// update applies fn to a copy of node id, stores it, swaps it in and emits
// a NodeUpdated change. It is the one path for admin edits.
func (s *State) update(ctx context.Context, id ids.NodeID, fn func(n *Node) error) (*Node, error) {
	s.regMu.Lock()
	defer s.regMu.Unlock()
	old, ok := s.Node(id)
	if !ok {
		return nil, ErrNodeNotFound
	}
	n := old.clone()
	if err := fn(n); err != nil {
		return nil, err
	}
	membership := old.UserID != n.UserID || !slices.Equal(old.Tags, n.Tags)
	var autoApproved []netip.Prefix
	if membership {
		// A new owner or tags may be allowed to have more routes approved.
		autoApproved = s.applyAutoApprovals(n)
	}
	if err := s.st.UpdateNode(ctx, nodeToStore(n), 0); err != nil {
		return nil, fmt.Errorf("storing node %d: %w", id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.nodes[id]; ok {
		// Runtime fields and what the client reports may have moved on
		// while we wrote; admin edits do not touch them.
		keepLiveFields(n, cur, false)
	} else {
		return nil, ErrNodeNotFound
	}
	s.index(n)
	// Approved routes are part of the compiled policy: subnet routers
	// receive the rules for their subnets and peers see them.
	recompile := membership || !slices.Equal(old.ApprovedRoutes, n.ApprovedRoutes)
	if recompile {
		s.recompileForLocked(n)
	}
	changed := s.refreshRoutesLocked(id)
	n = s.nodes[id]
	s.emitLocked(Change{Kind: NodeUpdated, Node: n, Self: true})
	s.emitRouteChangesLocked(changed, id)
	if recompile {
		s.emitPolicyLocked()
	}
	if len(autoApproved) > 0 {
		s.log.Info("routes approved by the policy's autoApprovers", "node", n.ID, "name", n.GivenName, "routes", autoApproved)
	}
	return n, nil
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
	if err := s.st.DeleteNode(ctx, id); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("deleting node %d: %w", id, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unindex(n)
	s.opts.Alloc.Release(n.IPv4, n.IPv6)
	s.recompileForLocked(n)
	changed := s.refreshRoutesLocked(id) // its subnet routes fail over
	s.emitLocked(Change{Kind: NodeRemoved, Node: n})
	s.emitRouteChangesLocked(changed, id)
	s.emitPolicyLocked()
	s.log.Info("node deleted", "node", id, "name", n.GivenName)
	return nil
}

// CreateUser adds a user.
func (s *State) CreateUser(ctx context.Context, u store.User) (*User, error) {
	u.Name = strings.TrimSpace(u.Name)
	if u.Name == "" {
		return nil, fmt.Errorf("%w: user name must not be empty", ErrInvalidName)
	}
	created, err := s.st.CreateUser(ctx, u)
	if err != nil {
		return nil, err
	}
	nu := userFromStore(created)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users = withUser(s.users, nu)
	s.recompileForLocked(nil)
	s.emitPolicyLocked()
	return nu, nil
}

// RenameUser renames a user; nodes' peers see the new login name.
func (s *State) RenameUser(ctx context.Context, id ids.UserID, name string) (*User, error) {
	name = strings.TrimSpace(name)
	if name == "" {
		return nil, fmt.Errorf("%w: user name must not be empty", ErrInvalidName)
	}
	u, err := s.st.RenameUser(ctx, id, name)
	if err != nil {
		return nil, err
	}
	nu := userFromStore(u)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users = withUser(s.users, nu)
	s.recompileForLocked(nil)
	s.emitLocked(Change{Kind: UserUpdated, User: nu})
	s.emitPolicyLocked()
	return nu, nil
}

// DeleteUser removes a user that owns no nodes.
func (s *State) DeleteUser(ctx context.Context, id ids.UserID) error {
	if err := s.st.DeleteUser(ctx, id); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(map[ids.UserID]*User, len(s.users))
	for k, v := range s.users {
		if k != id {
			m[k] = v
		}
	}
	s.users = m
	s.recompileForLocked(nil)
	s.emitPolicyLocked()
	return nil
}

// Users returns all users ordered by ID.
func (s *State) Users() []*User {
	s.mu.Lock()
	users := s.users
	s.mu.Unlock()
	out := make([]*User, 0, len(users))
	for _, u := range users {
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b *User) int { return int(a.ID) - int(b.ID) })
	return out
}

func withUser(m map[ids.UserID]*User, u *User) map[ids.UserID]*User {
	out := make(map[ids.UserID]*User, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	out[u.ID] = u
	return out
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
			return fmt.Errorf("%w: node %d is tagged and has no user owner", ErrInvalidName, id)
		}
		n.UserID = userID
		return nil
	})
}
