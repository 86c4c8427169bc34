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
	// Method is the node's register method: "" is "authkey";
	// RegisterInteractive passes "cli" or "oidc".
	Method string
}

// method is p's register method.
func (p RegisterParams) method() string {
	if p.Method == "" {
		return "authkey"
	}
	return p.Method
}

// RegisterWithKey creates a node, or re-registers the machine's existing
// node, with a validated pre-auth key. It returns only after the node is
// durable in the store; a single-use key is marked used, and an imported
// key's bcrypt hash replaced (p.Rehash), in the same transaction.
//
// New nodes registering with a reusable key are written in batches: the
// registrations that queue while one batch is written are written
// together by whichever of them takes regMu next (one statement and one
// commit for the lot; see registerBatchLocked). Everything else is
// written on its own, in the order it took regMu.
func (s *State) RegisterWithKey(ctx context.Context, p RegisterParams) (*Node, error) {
	if !p.Key.Reusable || p.Rehash.Key != 0 {
		s.regMu.Lock()
		defer s.regMu.Unlock()
		release, err := s.lockRegistration(ctx)
		if err != nil {
			return nil, err
		}
		defer release()
		return s.registerLocked(ctx, p)
	}
	req := &pendingReg{ctx: ctx, p: p, done: make(chan regResult, 1)}
	s.regQMu.Lock()
	s.regQ = append(s.regQ, req)
	s.regQMu.Unlock()

	s.regMu.Lock()
	select {
	case r := <-req.done: // written by the batch before
		s.regMu.Unlock()
		return r.n, r.err
	default:
	}
	s.regQMu.Lock()
	batch := s.regQ // req among them: only regMu's holder takes the queue
	s.regQ = nil
	s.regQMu.Unlock()
	if release, err := s.lockRegistration(context.WithoutCancel(ctx)); err != nil {
		for _, r := range batch {
			r.done <- regResult{err: err}
		}
	} else {
		s.registerBatchLocked(ctx, batch)
		release()
	}
	s.regMu.Unlock()
	r := <-req.done
	return r.n, r.err
}

// pendingReg is a registration waiting for registerBatchLocked.
type pendingReg struct {
	ctx  context.Context
	p    RegisterParams
	done chan regResult // buffered: the writer never waits on it
}

// regResult is a registration's outcome.
type regResult struct {
	n   *Node
	err error
}

// maxBatchWait bounds the batch's store write: it runs for every
// registration in it, so no one client's context may cancel it.
const maxBatchWait = time.Minute

// registerBatchLocked registers the queued registrations (regMu held).
// New machines are prepared in order and written with one
// store.RegisterNodes; if that fails, each is written on its own instead
// so that every registration gets its own answer. Machines already known,
// or twice in the batch, are registered one by one after it.
func (s *State) registerBatchLocked(ctx context.Context, batch []*pendingReg) {
	var (
		fresh []*pendingReg
		nodes []*Node
		auto  [][]netip.Prefix
		later []*pendingReg
		seen  = make(map[key.MachinePublic]bool, len(batch))
		taken = make(map[string]bool, len(batch))
	)
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.done <- regResult{err: fmt.Errorf("storing node: %w", err)}
			continue
		}
		if s.MachineKnown(r.p.Machine) || seen[r.p.Machine] {
			later = append(later, r)
			continue
		}
		seen[r.p.Machine] = true
		plan, err := s.planRegistration(r.p)
		if err != nil {
			r.done <- regResult{err: err}
			continue
		}
		n, err := s.newNode(r.p, plan, taken)
		if err != nil {
			r.done <- regResult{err: err}
			continue
		}
		taken[n.GivenName] = true
		fresh = append(fresh, r)
		nodes = append(nodes, n)
		auto = append(auto, s.applyAutoApprovals(n))
	}
	if len(fresh) > 0 {
		rows := make([]store.Node, len(nodes))
		for i, n := range nodes {
			rows[i] = nodeToStore(n)
		}
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), maxBatchWait)
		stored, err := s.st.RegisterNodes(wctx, rows)
		cancel()
		if err != nil {
			for _, n := range nodes {
				s.opts.Alloc.Release(n.IPv4, n.IPv6)
			}
			if len(fresh) > 1 {
				s.log.Debug("batch of registrations failed; writing them one by one", "nodes", len(fresh), "err", err)
			}
			later = append(fresh, later...)
		} else {
			s.mu.Lock()
			for i, n := range nodes {
				n.ID = stored[i].ID
				n.CreatedAt = stored[i].CreatedAt
				n.Version = stored[i].Version
				s.addRegisteredLocked(n, fresh[i].p, auto[i])
				fresh[i].done <- regResult{n: n}
			}
			s.emitPolicyLocked()
			s.mu.Unlock()
		}
	}
	for _, r := range later {
		n, err := s.registerLocked(r.ctx, r.p)
		r.done <- regResult{n, err}
	}
}

// regPlan is what a registration decides before it touches a node.
type regPlan struct {
	userID    ids.UserID
	tags      []string
	expiry    time.Time
	singleUse ids.PreAuthKeyID
	hostname  string
}

// planRegistration checks p's tags and works out owner, expiry and host
// name.
func (s *State) planRegistration(p RegisterParams) (regPlan, error) {
	var pl regPlan
	if p.Key.UserID != nil {
		pl.userID = *p.Key.UserID
	}
	pl.tags = slices.Clone(p.Key.Tags)
	if err := s.checkTagsDefined(pl.tags); err != nil {
		return regPlan{}, err
	}
	if len(pl.tags) == 0 && p.Hostinfo != nil && len(p.Hostinfo.RequestTags) > 0 {
		// `tailscale up --advertise-tags`: the key's user must own them.
		req := slices.Compact(slices.Sorted(slices.Values(p.Hostinfo.RequestTags)))
		if err := ValidateTags(req); err != nil {
			return regPlan{}, fmt.Errorf("requested tags %v are invalid or not permitted: %w", req, err)
		}
		if err := s.CheckTagOwners(pl.userID, nil, req); err != nil {
			return regPlan{}, fmt.Errorf("requested tags %v are invalid or not permitted: %w", req, err)
		}
		pl.tags = req
	}
	if len(pl.tags) > 0 {
		pl.userID = 0
	}
	pl.expiry = p.Expiry
	if pl.expiry.IsZero() && s.opts.NodeExpiry > 0 && len(pl.tags) == 0 {
		pl.expiry = s.now().Add(s.opts.NodeExpiry)
	}
	if len(pl.tags) > 0 {
		pl.expiry = time.Time{} // tagged nodes do not expire
	}
	if !p.Key.Reusable {
		pl.singleUse = p.Key.ID
	}
	pl.hostname = "node"
	if p.Hostinfo != nil && p.Hostinfo.Hostname != "" {
		pl.hostname = p.Hostinfo.Hostname
	}
	return pl, nil
}

// newNode builds the node a registration of a new machine creates, with
// addresses allocated and a MagicDNS name free in memory and not in taken
// (names given earlier in the same batch). The caller stores it, or
// releases its addresses.
func (s *State) newNode(p RegisterParams, pl regPlan, taken map[string]bool) (*Node, error) {
	v4, v6, err := s.opts.Alloc.Next()
	if err != nil {
		return nil, fmt.Errorf("allocating addresses: %w", err)
	}
	s.mu.Lock()
	given := dnsname.Unique(dnsname.Sanitize(pl.hostname), func(c string) bool {
		_, t := s.names[c]
		return t || taken[c]
	})
	s.mu.Unlock()
	return &Node{
		MachineKey:     p.Machine,
		NodeKey:        p.NodeKey,
		Hostinfo:       p.Hostinfo,
		IPv4:           v4,
		IPv6:           v6,
		Hostname:       pl.hostname,
		GivenName:      given,
		UserID:         pl.userID,
		Tags:           pl.tags,
		Ephemeral:      p.Key.Ephemeral,
		AuthKeyID:      p.Key.ID,
		RegisterMethod: p.method(),
		Cap:            p.Cap,
		CreatedAt:      s.now(),
		Expiry:         pl.expiry,
		// node.require_approval: tagged pre-auth keys provision servers
		// and skip it.
		PendingApproval: s.opts.RequireApproval && len(p.Key.Tags) == 0,
	}, nil
}

// addRegisteredLocked puts a newly stored node in memory and tells of it
// (s.mu held); the caller emits the policy change.
func (s *State) addRegisteredLocked(n *Node, p RegisterParams, autoApproved []netip.Prefix) {
	s.addNodeLocked(n)
	s.log.Info("node registered", "node", n.ID, "name", n.GivenName, "user", n.UserID, "tags", n.Tags, "ephemeral", n.Ephemeral, "machine", p.Machine.ShortString())
	if len(autoApproved) > 0 {
		s.log.Info("routes approved by the policy's autoApprovers", "node", n.ID, "name", n.GivenName, "routes", autoApproved)
	}
}

// ErrAmbiguousMachine means a tagged pre-auth key was used on a machine
// that has nodes of several users: which one to make tagged is unclear.
var ErrAmbiguousMachine = errors.New("this machine has nodes of several users; delete all but one (`headscale nodes delete`) before registering it with a tagged pre-auth key")

// ErrNodeKeyInUse means a registration that creates a new node came with
// the node key of another node of the machine.
var ErrNodeKeyInUse = errors.New("node key is in use by another node of this machine: log in with a new one (`tailscale up --force-reauth`)")

// reregisterTarget picks which of the machine's nodes a registration with
// key k re-registers in place; nil means it creates a new node. As in
// Headscale (hscontrol/state: HandleNodeFromAuthPath,
// HandleNodeFromPreAuthKey), a machine has a node per user:
//   - with a user's key (or an interactive login, approved for a user):
//     that user's node of the machine; else the machine's tagged node,
//     which becomes the user's; else none. Another user's node is left
//     as it is, and the user gets a new node.
//   - with a tagged key: the machine's tagged node; else its one
//     user-owned node, which becomes tagged; with several user-owned
//     nodes, ErrAmbiguousMachine.
//
// Of several candidates the newest (highest ID) is taken.
func (s *State) reregisterTarget(machine key.MachinePublic, k store.PreAuthKey) (*Node, error) {
	var own, tagged, userOwned []*Node
	for _, n := range s.NodesByMachineKey(machine) {
		switch {
		case n.Tagged():
			tagged = append(tagged, n)
		default:
			userOwned = append(userOwned, n)
			if k.UserID != nil && n.UserID == *k.UserID {
				own = append(own, n)
			}
		}
	}
	newest := func(ns []*Node) *Node {
		if len(ns) == 0 {
			return nil
		}
		return ns[len(ns)-1]
	}
	if len(k.Tags) > 0 {
		switch {
		case len(tagged) > 0:
			return newest(tagged), nil
		case len(userOwned) > 1:
			return nil, ErrAmbiguousMachine
		}
		return newest(userOwned), nil
	}
	if len(own) > 0 {
		return newest(own), nil
	}
	return newest(tagged), nil
}

// registerLocked is RegisterWithKey for one registration (regMu held).
func (s *State) registerLocked(ctx context.Context, p RegisterParams) (*Node, error) {
	pl, err := s.planRegistration(p)
	if err != nil {
		return nil, err
	}
	existing, err := s.reregisterTarget(p.Machine, p.Key)
	if err != nil {
		return nil, err
	}
	if held, ok := s.NodeByNodeKey(p.NodeKey); ok && held.MachineKey == p.Machine && (existing == nil || held.ID != existing.ID) {
		return nil, fmt.Errorf("%w (node %d)", ErrNodeKeyInUse, held.ID)
	}
	if existing != nil {
		n := existing.clone()
		n.NodeKey = p.NodeKey
		n.UserID = pl.userID
		n.Tags = pl.tags
		n.Ephemeral = p.Key.Ephemeral
		n.AuthKeyID = p.Key.ID
		n.RegisterMethod = p.method()
		n.Expiry = pl.expiry
		n.Cap = p.Cap
		// A tagged key's admin vouches for the machine, as at a first
		// registration; otherwise the node stays as it was.
		n.PendingApproval = n.PendingApproval && len(p.Key.Tags) == 0
		if p.Hostinfo != nil {
			n.Hostinfo = p.Hostinfo
			n.Hostname = pl.hostname
		}
		autoApproved := s.applyAutoApprovals(n)
		stored, err := s.st.UpdateNodeWithKey(ctx, nodeToStore(n), pl.singleUse, p.Rehash)
		if err != nil {
			return nil, mapKeyErr(err)
		}
		if s.clustered() {
			n.Version = stored.Version
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		held, recompile := s.replaceNodeLocked(existing, n, true)
		if held == nil {
			// Deleted while we wrote: it is gone for good.
			return nil, ErrNodeNotFound
		}
		n = held
		if recompile {
			s.emitPolicyLocked()
		}
		s.log.Info("node re-registered", "node", n.ID, "name", n.GivenName, "user", n.UserID, "machine", p.Machine.ShortString())
		if len(autoApproved) > 0 {
			s.log.Info("routes approved by the policy's autoApprovers", "node", n.ID, "name", n.GivenName, "routes", autoApproved)
		}
		return n, nil
	}

	if others := s.NodesByMachineKey(p.Machine); len(others) > 0 {
		// Logged before the new node's own line, which has its ID.
		s.log.Info("machine logs in as another user: it gets a new node, its other node stays", "other_node", others[len(others)-1].ID, "other_user", others[len(others)-1].UserID, "user", pl.userID, "machine", p.Machine.ShortString())
	}
	n, err := s.newNode(p, pl, nil)
	if err != nil {
		return nil, err
	}
	autoApproved := s.applyAutoApprovals(n)
	sn, err := s.st.RegisterNodeWithKey(ctx, nodeToStore(n), pl.singleUse, p.Rehash)
	if err != nil {
		s.opts.Alloc.Release(n.IPv4, n.IPv6)
		return nil, mapKeyErr(err)
	}
	n.ID = sn.ID
	n.CreatedAt = sn.CreatedAt
	n.Version = sn.Version
	s.mu.Lock()
	defer s.mu.Unlock()
	s.addRegisteredLocked(n, p, autoApproved)
	s.emitPolicyLocked()
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

// ErrUnknownUser means an interactive registration named a user that does
// not exist.
var ErrUnknownUser = errors.New("unknown user")

// InteractiveParams is a registration without a pre-auth key that an
// admin (CLI or API) or an identity provider (OIDC) approved for a user:
// what the client sent with its RegisterRequest, and who approved it.
type InteractiveParams struct {
	Machine  key.MachinePublic
	NodeKey  key.NodePublic
	Hostinfo *tailcfg.Hostinfo // RequestTags: `tailscale up --advertise-tags`
	Cap      tailcfg.CapabilityVersion
	// User owns the node (unless it advertises tags its user owns: then
	// the node belongs to its tags, as on the pre-auth key path).
	User ids.UserID
	// Expiry of the node's key; zero uses the configured node.expiry.
	Expiry time.Time
	// Method is the node's register method: "cli" (CLI or API approval)
	// or "oidc".
	Method string
}

// RegisterInteractive registers the machine's node for p.User without a
// pre-auth key, once the registration is approved. Advertised tags are
// checked against the policy's tagOwners for p.User, as on the key path.
//
// A machine that already has a node (its key expired, it logged out, or
// `tailscale up --force-reauth`) re-logs in as Headscale has it (see
// reregisterTarget):
//   - as the same user, or to a tagged node: the node is kept (ID,
//     addresses, approved routes, and its tags when it advertises them
//     again), with the new node key and expiry;
//   - as another user: the new user gets a new node (new ID, addresses
//     and name; nothing approved for the other node carried over). The
//     other user's node is left untouched: it keeps its old node key and
//     is offline from then on, listed until it is deleted or expires.
func (s *State) RegisterInteractive(ctx context.Context, p InteractiveParams) (*Node, error) {
	if _, ok := s.User(p.User); !ok {
		return nil, fmt.Errorf("%w: %d", ErrUnknownUser, p.User)
	}
	if p.Method == "" {
		p.Method = "cli"
	}
	uid := p.User
	rp := RegisterParams{
		Machine:  p.Machine,
		NodeKey:  p.NodeKey,
		Hostinfo: p.Hostinfo,
		Cap:      p.Cap,
		Key:      store.PreAuthKey{UserID: &uid, Reusable: true},
		Expiry:   p.Expiry,
		Method:   p.Method,
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	release, err := s.lockRegistration(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	return s.registerLocked(ctx, rp)
}

// lockRegistration, with several servers (Options.LockRegistrations),
// makes this server the only one registering nodes until release and
// applies what the others stored before: the addresses and names they
// gave and the machines they registered are then known here, so none is
// given twice and a client that retried through another server finds the
// node it already has. A single server needs neither (regMu suffices).
func (s *State) lockRegistration(ctx context.Context) (release func(), err error) {
	if !s.clustered() || s.opts.LockRegistrations == nil {
		return func() {}, nil
	}
	release, err = s.opts.LockRegistrations(ctx)
	if err != nil {
		return nil, fmt.Errorf("waiting for other servers' registrations: %w", err)
	}
	if err := s.catchUp(ctx); err != nil {
		release()
		return nil, fmt.Errorf("reading other servers' registrations: %w", err)
	}
	return release, nil
}
