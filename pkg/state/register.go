package state

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
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

// AuthKey is a pre-auth key ValidateAuthKey accepted.
type AuthKey struct {
	store.PreAuthKey
	// Rehash, when its Key is set, replaces the key's bcrypt hash (copied
	// from Headscale) by the server's SHA-256 of the secret just checked;
	// pass it on in RegisterParams so it is written with the registration.
	Rehash store.Rehash
}

// ValidateAuthKey checks a pre-auth key the way registration needs: known,
// not expired, not used up. It accepts every form authkey.Parse does, so
// keys handed out by Headscale keep working after an import.
func (s *State) ValidateAuthKey(ctx context.Context, full string) (AuthKey, error) {
	prefix, secret, err := authkey.Parse(authkey.KindAuth, full)
	if err != nil {
		return AuthKey{}, ErrAuthKeyInvalid
	}
	k, err := s.st.GetPreAuthKeyByPrefix(ctx, prefix)
	if errors.Is(err, store.ErrNotFound) || (err == nil && !authkey.Verify(k.Hash, secret)) {
		return AuthKey{}, ErrAuthKeyInvalid
	}
	if err != nil {
		return AuthKey{}, fmt.Errorf("looking up pre-auth key: %w", err)
	}
	if !k.Expiration.IsZero() && !s.now().Before(k.Expiration) {
		return AuthKey{}, ErrAuthKeyExpired
	}
	if k.Used && !k.Reusable {
		return AuthKey{}, ErrAuthKeyUsed
	}
	out := AuthKey{PreAuthKey: k}
	if authkey.NeedsRehash(k.Hash) {
		out.Rehash = store.Rehash{Key: k.ID, From: k.Hash, To: authkey.Hash(secret)}
	}
	return out, nil
}

// RegisterParams is a validated registration by pre-auth key.
type RegisterParams struct {
	Machine  key.MachinePublic
	NodeKey  key.NodePublic
	Hostinfo *tailcfg.Hostinfo
	Cap      tailcfg.CapabilityVersion
	Key      store.PreAuthKey
	// Rehash is AuthKey.Rehash of the validated key, written in the
	// registration's transaction; zero for none.
	Rehash store.Rehash
	// Expiry the client asked for; zero uses the configured node.expiry.
	Expiry time.Time
}

// RegisterWithKey creates a node, or re-registers the machine's existing
// node, with a validated pre-auth key. It returns only after the node is
// durable in the store; a single-use key is marked used, and an imported
// key's bcrypt hash replaced (p.Rehash), in the same transaction.
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
		if err := s.st.UpdateNodeWithKey(ctx, nodeToStore(n), singleUse, p.Rehash); err != nil {
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
	sn, err := s.st.RegisterNodeWithKey(ctx, nodeToStore(n), singleUse, p.Rehash)
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
