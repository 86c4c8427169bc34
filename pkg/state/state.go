// Package state is the single owner of the tailnet's live state: nodes, their
// online status, users. Every mutation goes through it: it writes the change
// to the store, replaces the node's immutable snapshot in memory, and emits
// one Change to its Sink while still holding its lock, so sessions see
// changes in the order they happened and a session's full map (taken under
// the same lock) is never missing a change nor sees one twice.
package state

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Errors callers map to client-visible messages.
var (
	ErrNodeNotFound = errors.New("node not found")
	ErrInvalidName  = errors.New("invalid name")
)

// Options configures a State.
type Options struct {
	Store *store.Store
	Alloc *ipalloc.Allocator
	// NodeExpiry is the key lifetime given to user-owned nodes at
	// registration; 0 means keys never expire.
	NodeExpiry time.Duration
	// EphemeralTimeout is how long an ephemeral node may stay disconnected
	// before it is deleted.
	EphemeralTimeout time.Duration
	// FlushInterval is how often endpoint, host info and last-seen changes
	// are written to the store in one batch (they are not worth a write
	// each). Default 5s.
	FlushInterval time.Duration
	// ExpiryInterval is how often key expiry is checked. Default 5s.
	ExpiryInterval time.Duration
	// RequireApproval (node.require_approval): nodes registered from now
	// on, except with a tagged pre-auth key, wait for ApproveNode before
	// they get peers or are anyone's peer.
	RequireApproval bool
	// ServerURL is the base of SSH "check" action URLs.
	ServerURL string
	// Publish, when set, makes this State one of several serving the
	// tailnet from one database (see remote.go): it receives what this
	// server's clients report and when their sessions here begin and end,
	// under the state lock, and must not block (cluster.LiveWriter
	// queues it and stores it). Flush then writes nothing: the
	// publisher stores the reported fields.
	Publish func(LiveFact)
	// Snapshot, when set, is what the state is loaded from instead of
	// reading users and nodes itself (several servers: the snapshot's
	// change-log position is where following starts). With Publish, its
	// sessions (nodes online on other servers) and primary routers are
	// loaded too.
	Snapshot *store.Snapshot
	// RunsJobs, when set (several servers), says whether this server now
	// runs the tailnet's once-only jobs: only then does an inactive
	// ephemeral node's timer delete it. Every server keeps the timers, so
	// the next holder of the jobs lease has them.
	RunsJobs func() bool
	// PublishPrimary, with RunsJobs, receives this server's decisions of
	// primary subnet routers while it runs the jobs (under the state
	// lock; it must not block), for the other servers, which apply them
	// as RemoteChange.Primary. Primaries, when set, are the decisions in
	// force come from Snapshot.
	PublishPrimary func(p netip.Prefix, node ids.NodeID)
	// CatchUp, when set (several servers), applies every change other
	// servers committed before it was called; an edit that finds the
	// node changed by another server catches up and edits again.
	CatchUp func(ctx context.Context) error
	// LockRegistrations, with several servers, waits until no other
	// server registers nodes and keeps them out until release is called
	// (store.LockRegistrations).
	LockRegistrations func(ctx context.Context) (release func(), err error)
	Logger            *slog.Logger
	Now               func() time.Time
}

// State owns nodes and users in memory. Create it with New.
type State struct {
	opts Options
	st   *store.Store
	log  *slog.Logger
	now  func() time.Time

	// regMu serialises operations that write the store and then memory
	// (registration, admin edits, the periodic flush), so a flush never
	// writes a snapshot older than what an admin edit already stored.
	regMu sync.Mutex
	// regQ holds registrations waiting to be written in one batch by
	// whichever of them takes regMu next (RegisterWithKey); regQMu
	// guards it and is never held while waiting for regMu.
	regQMu sync.Mutex
	regQ   []*pendingReg

	// loginMu serialises UpsertOIDCUser, so two logins of one identity
	// at once (two browser tabs) find or create one user.
	loginMu sync.Mutex

	// policyChangeMu serialises changes of the policy in force and of
	// the one stored (see policy.go); taken before mu.
	policyChangeMu sync.Mutex
	// afterPolicyWrite, when set (tests), runs in StorePolicy between the
	// database write and putting the policy in force.
	afterPolicyWrite func()

	mu        sync.Mutex
	sink      Sink
	nodes     map[ids.NodeID]*Node
	sorted    []*Node // the same nodes by ID: snapshots list peers in order
	byNodeKey map[key.NodePublic]ids.NodeID
	// byMachine lists each machine's nodes by ID: a machine has a node
	// per user it logged in as (as in Headscale).
	byMachine map[key.MachinePublic][]ids.NodeID
	names     map[string]ids.NodeID
	users     map[ids.UserID]*User // replaced, never mutated, on change (setUsersLocked)
	// policyUsers is users as the policy sees them, built on first use
	// after each change (policyUsersLocked).
	policyUsers []policy.User
	sessions    map[ids.NodeID]int
	// remote holds, per node, the other servers (by ID) holding a map
	// session of it (Options.Publish set). A node is online while it has a
	// session here or there.
	remote map[ids.NodeID]map[string]bool
	// reportedAt is, per node, when the report held was made (by its
	// server's clock; Options.Publish set): a report made earlier,
	// arriving later from the server the node left, is not applied.
	reportedAt map[ids.NodeID]time.Time
	dirty      map[ids.NodeID]bool
	ephemeral  map[ids.NodeID]*time.Timer
	lastScan   time.Time

	pol             *policy.Policy // in force; nil: every node may reach every other
	policyText      string         // pol's text ("" for none or set by SetPolicy)
	policyUpdatedAt time.Time      // when policyText was stored or its file changed
	// policyInputsGen counts changes to what a compilation depends on
	// (nodes' policy-relevant fields, users); StorePolicy compares it to
	// know whether its compilation is still current.
	policyInputsGen uint64
	compiled        *policy.Compiled // pol compiled against nodes and users
	// gated: nodes may be waiting for approval (RequireApproval, or such
	// nodes were loaded), so a compilation is kept even without a policy
	// (allow-all among approved nodes): it is what leaves them out.
	gated      bool
	pendingOld *policy.Compiled // compilation replaced but not yet announced
	pendingAff []*policy.Affected
	pendingIDs []ids.NodeID // nodes whose changes the pending recompiles applied
	pendingAll bool         // a full recompile is pending: every node may be affected

	routes routeTable // primary subnet routers (runtime); see routes.go

	// beats carries watchdog heartbeats into Run's loop.
	beats chan chan struct{}
}

// New loads users and nodes from the store.
func New(ctx context.Context, opts Options) (*State, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = 5 * time.Second
	}
	if opts.ExpiryInterval <= 0 {
		opts.ExpiryInterval = 5 * time.Second
	}
	s := &State{
		opts:       opts,
		st:         opts.Store,
		log:        opts.Logger,
		now:        opts.Now,
		nodes:      make(map[ids.NodeID]*Node),
		byNodeKey:  make(map[key.NodePublic]ids.NodeID),
		byMachine:  make(map[key.MachinePublic][]ids.NodeID),
		names:      make(map[string]ids.NodeID),
		users:      make(map[ids.UserID]*User),
		sessions:   make(map[ids.NodeID]int),
		remote:     make(map[ids.NodeID]map[string]bool),
		reportedAt: make(map[ids.NodeID]time.Time),
		dirty:      make(map[ids.NodeID]bool),
		ephemeral:  make(map[ids.NodeID]*time.Timer),
		routes:     newRouteTable(),
		beats:      make(chan chan struct{}),
	}
	var (
		users    []store.User
		nodes    []store.Node
		err      error
		sessions = make(map[ids.NodeID][]string)
	)
	if snap := opts.Snapshot; snap != nil {
		users, nodes = snap.Users, snap.Nodes
		if opts.Publish != nil {
			for _, ns := range snap.Sessions {
				sessions[ns.NodeID] = append(sessions[ns.NodeID], ns.ServerID)
			}
			for _, p := range snap.Primaries {
				s.routes.primary[p.Prefix] = p.NodeID
			}
		}
	} else {
		if users, err = s.st.ListUsers(ctx); err != nil {
			return nil, fmt.Errorf("loading users: %w", err)
		}
		if nodes, err = s.st.ListNodes(ctx); err != nil {
			return nil, fmt.Errorf("loading nodes: %w", err)
		}
	}
	for _, u := range users {
		s.users[u.ID] = userFromStore(u)
	}
	for _, sn := range nodes {
		n, err := nodeFromStore(sn)
		if err != nil {
			s.log.Warn("skipping unreadable node", "node", sn.ID, "err", err)
			continue
		}
		if srvs := sessions[n.ID]; len(srvs) > 0 {
			set := make(map[string]bool, len(srvs))
			for _, id := range srvs {
				set[id] = true
			}
			s.remote[n.ID] = set
			n.Online = true
		}
		s.index(n)
		opts.Alloc.Reserve(n.IPv4, n.IPv6)
	}
	for id := range s.remote {
		if _, ok := s.nodes[id]; ok {
			s.refreshRoutesLocked(id) // online elsewhere: it may serve routes
		}
	}
	s.gated = opts.RequireApproval
	for _, n := range s.nodes {
		s.gated = s.gated || n.PendingApproval
	}
	if s.gated {
		s.compiled, _, err = s.compileLocked(nil, false)
		if err != nil {
			return nil, err
		}
	}
	s.lastScan = s.now()
	for _, n := range s.nodes {
		if n.Ephemeral && !n.Online {
			s.scheduleEphemeralLocked(n.ID)
		}
	}
	return s, nil
}

// SetSink connects the state to the component that delivers changes.
func (s *State) SetSink(k Sink) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sink = k
}

func (s *State) emitLocked(c Change) {
	if c.At.IsZero() {
		c.At = s.now()
	}
	if c.Kind != PolicyChanged {
		c.Policy = s.compiled
	}
	if (c.Kind == NodeAdded || c.Kind == NodeUpdated) && c.User == nil && c.Node != nil && !c.Node.Tagged() {
		// Whoever receives the node (its peers, and its own sessions when
		// its owner changed) needs its owner's profile.
		c.User = s.users[c.Node.UserID]
	}
	if s.sink != nil {
		s.sink.Apply(c)
	}
}

func (s *State) index(n *Node) {
	if old, ok := s.nodes[n.ID]; ok {
		if old.NodeKey != n.NodeKey {
			delete(s.byNodeKey, old.NodeKey)
		}
		if old.GivenName != n.GivenName {
			delete(s.names, old.GivenName)
		}
		if old.MachineKey != n.MachineKey {
			s.unindexMachine(old)
		}
	}
	s.setNode(n)
	s.byNodeKey[n.NodeKey] = n.ID
	if ms := s.byMachine[n.MachineKey]; !slices.Contains(ms, n.ID) {
		i, _ := slices.BinarySearch(ms, n.ID)
		s.byMachine[n.MachineKey] = slices.Insert(ms, i, n.ID)
	}
	s.names[n.GivenName] = n.ID
}

// setNode stores n (new, or a new version of a node), keeping s.sorted
// in step.
func (s *State) setNode(n *Node) {
	s.nodes[n.ID] = n
	i, found := slices.BinarySearchFunc(s.sorted, n.ID, byID)
	if found {
		s.sorted[i] = n
	} else {
		s.sorted = slices.Insert(s.sorted, i, n)
	}
}

func byID(n *Node, id ids.NodeID) int { return cmp.Compare(n.ID, id) }

func (s *State) unindex(n *Node) {
	delete(s.nodes, n.ID)
	if i, found := slices.BinarySearchFunc(s.sorted, n.ID, byID); found {
		s.sorted = slices.Delete(s.sorted, i, i+1)
	}
	delete(s.byNodeKey, n.NodeKey)
	s.unindexMachine(n)
	if s.names[n.GivenName] == n.ID {
		delete(s.names, n.GivenName)
	}
	delete(s.sessions, n.ID)
	delete(s.dirty, n.ID)
	delete(s.remote, n.ID)
	delete(s.reportedAt, n.ID)
	if t := s.ephemeral[n.ID]; t != nil {
		t.Stop()
		delete(s.ephemeral, n.ID)
	}
}

// unindexMachine takes n out of its machine's list of nodes.
func (s *State) unindexMachine(n *Node) {
	ms := slices.DeleteFunc(s.byMachine[n.MachineKey], func(id ids.NodeID) bool { return id == n.ID })
	if len(ms) == 0 {
		delete(s.byMachine, n.MachineKey)
		return
	}
	s.byMachine[n.MachineKey] = ms
}

// Node returns the current snapshot of a node.
func (s *State) Node(id ids.NodeID) (*Node, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[id]
	return n, ok
}

// NodeByNodeKey finds a node by its current node key.
func (s *State) NodeByNodeKey(k key.NodePublic) (*Node, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[s.byNodeKey[k]]
	return n, ok
}

// NodeByMachineKey returns the machine's newest node (the one it
// registered last, highest ID). A machine has a node per user it logged
// in as; NodesByMachineKey returns them all.
func (s *State) NodeByMachineKey(k key.MachinePublic) (*Node, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ms := s.byMachine[k]
	if len(ms) == 0 {
		return nil, false
	}
	n, ok := s.nodes[ms[len(ms)-1]]
	return n, ok
}

// NodesByMachineKey returns every node of a machine, by ID: one per user
// it logged in as (and its tagged node), as in Headscale.
func (s *State) NodesByMachineKey(k key.MachinePublic) []*Node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodesOfMachineLocked(k)
}

// nodesOfMachineLocked is NodesByMachineKey with s.mu held.
func (s *State) nodesOfMachineLocked(k key.MachinePublic) []*Node {
	ms := s.byMachine[k]
	out := make([]*Node, 0, len(ms))
	for _, id := range ms {
		if n, ok := s.nodes[id]; ok {
			out = append(out, n)
		}
	}
	return out
}

// MachineKnown reports whether the machine has a node.
func (s *State) MachineKnown(k key.MachinePublic) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byMachine[k]) > 0
}

// Nodes returns every node, ordered by ID.
func (s *State) Nodes() []*Node {
	s.mu.Lock()
	out := make([]*Node, 0, len(s.nodes))
	for _, n := range s.nodes {
		out = append(out, n)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Counts returns how many nodes exist and how many are online.
func (s *State) Counts() (total, online int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.nodes {
		if n.Online {
			online++
		}
	}
	return len(s.nodes), online
}

// User returns a user by ID.
func (s *State) User(id ids.UserID) (*User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[id]
	return u, ok
}

// snapshotLocked builds the picture a session of node id starts from.
func (s *State) snapshotLocked(id ids.NodeID) Snapshot {
	snap := Snapshot{Self: s.nodes[id], Users: s.users, Peers: make([]*Node, 0, len(s.nodes)), Policy: s.compiled}
	for _, p := range s.sorted {
		if p.ID != id && (s.compiled == nil || s.compiled.CanSee(id, p.ID)) {
			snap.Peers = append(snap.Peers, p)
		}
	}
	return snap
}

// Connect records a new streaming session of node id, marks the node online
// and calls attach with a consistent snapshot while changes are held back,
// so the caller can register its session without missing a change.
func (s *State) Connect(id ids.NodeID, attach func(Snapshot)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[id]
	if !ok {
		return ErrNodeNotFound
	}
	s.sessions[id]++
	if t := s.ephemeral[id]; t != nil {
		t.Stop()
		delete(s.ephemeral, id)
	}
	if !n.Online {
		s.setOnlineLocked(n, true, s.now())
	}
	if s.sessions[id] == 1 {
		online := true
		s.publishLocked(id, &online)
	}
	attach(s.snapshotLocked(id))
	return nil
}

// setOnlineLocked marks n online (or offline) since at and tells its
// peers: a patch, or the whole node when its primary routes moved (a
// router coming online may take prefixes nobody serves; one going offline
// fails its prefixes over).
func (s *State) setOnlineLocked(n *Node, online bool, at time.Time) {
	id := n.ID
	n = n.clone()
	n.Online = online
	n.LastSeen = at
	s.setNode(n)
	changed := s.refreshRoutesLocked(id)
	if slices.Contains(changed, id) {
		s.emitLocked(Change{Kind: NodeUpdated, Node: s.nodes[id], Self: true})
	} else {
		patch := &tailcfg.PeerChange{NodeID: tailcfg.NodeID(id), Online: &online}
		if !online {
			patch.LastSeen = &at
		}
		s.emitLocked(Change{Kind: NodePatched, Node: n, Patch: patch})
	}
	s.emitRouteChangesLocked(changed, id)
}

// Resync calls attach with a fresh snapshot of node id while changes are
// held back; a session that fell behind uses it to start over.
func (s *State) Resync(id ids.NodeID, attach func(Snapshot)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.nodes[id]; !ok {
		return ErrNodeNotFound
	}
	attach(s.snapshotLocked(id))
	return nil
}

// Disconnect records the end of a streaming session. The node goes offline
// when its last session ends; an ephemeral node is then scheduled for
// deletion.
func (s *State) Disconnect(id ids.NodeID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := s.nodes[id]
	if !ok {
		return
	}
	if s.sessions[id] > 1 {
		s.sessions[id]--
		return
	}
	delete(s.sessions, id)
	now := s.now()
	offline := false
	s.publishLocked(id, &offline)
	if len(s.remote[id]) > 0 {
		return // still connected to another server
	}
	s.setOnlineLocked(n, false, now)
	if !s.clustered() {
		s.dirty[id] = true
	}
	if n.Ephemeral {
		s.scheduleEphemeralLocked(id)
	}
}

func (s *State) scheduleEphemeralLocked(id ids.NodeID) {
	if t := s.ephemeral[id]; t != nil {
		t.Stop()
	}
	var t *time.Timer
	t = time.AfterFunc(s.opts.EphemeralTimeout, func() {
		s.mu.Lock()
		current := s.ephemeral[id] == t && s.sessions[id] == 0 && len(s.remote[id]) == 0
		if current && s.opts.RunsJobs != nil && !s.opts.RunsJobs() {
			// Another server deletes it; if that server goes away
			// first, this one may hold the jobs by the next try.
			s.scheduleEphemeralLocked(id)
			current = false
		} else if current {
			delete(s.ephemeral, id)
		}
		s.mu.Unlock()
		if !current {
			return
		}
		if err := s.DeleteNode(context.Background(), id); err != nil && !errors.Is(err, ErrNodeNotFound) {
			// Tried again after another timeout (the database may be
			// away), unless the node came back meanwhile.
			s.mu.Lock()
			_, exists := s.nodes[id]
			retry := exists && s.ephemeral[id] == nil && s.sessions[id] == 0
			if retry {
				s.scheduleEphemeralLocked(id)
			}
			s.mu.Unlock()
			s.log.Error("deleting inactive ephemeral node failed", "node", id, "retry", retry, "retry_in", s.opts.EphemeralTimeout, "err", err)
			return
		}
		s.log.Info("deleted inactive ephemeral node", "node", id, "timeout", s.opts.EphemeralTimeout)
	})
	s.ephemeral[id] = t
}

// flushTimeout bounds one flush, so that a database that stopped answering
// holds the registration lock no longer than this.
const flushTimeout = 15 * time.Second

// Run flushes batched writes and checks key expiry until ctx ends, then
// flushes once more.
func (s *State) Run(ctx context.Context) {
	flush := time.NewTicker(s.opts.FlushInterval)
	defer flush.Stop()
	expiry := time.NewTicker(s.opts.ExpiryInterval)
	defer expiry.Stop()
	failing := false // the last flush failed: repeats are logged at debug
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
			if err := s.Flush(fctx); err != nil {
				s.log.Error("final flush of node state failed; endpoint, host info and last-seen changes since the last flush are not saved",
					"nodes", s.Pending(), "err", err)
			}
			cancel()
			return
		case <-flush.C:
			fctx, cancel := context.WithTimeout(ctx, flushTimeout)
			err := s.Flush(fctx)
			cancel()
			switch {
			case err != nil && !failing:
				failing = true
				s.log.Error("flushing node state failed; the changes are kept and retried every flush interval",
					"nodes", s.Pending(), "interval", s.opts.FlushInterval, "err", err)
			case err != nil:
				s.log.Debug("flushing node state failed again; retrying", "nodes", s.Pending(), "err", err)
			case failing:
				failing = false
				s.log.Info("flushing node state works again; the kept changes are saved")
			}
		case <-expiry.C:
			s.checkExpiry()
		case done := <-s.beats:
			s.mu.Lock()
			s.emitLocked(Change{Kind: Heartbeat})
			s.mu.Unlock()
			close(done)
		}
	}
}

// Heartbeat sends a no-op change through Run's loop, the state lock and the
// sink, and returns once it came out the other side. It fails when ctx ends
// first: the loop, the lock or the delivery path is stuck (or Run is not
// running). The service watchdog calls it.
func (s *State) Heartbeat(ctx context.Context) error {
	done := make(chan struct{})
	select {
	case s.beats <- done:
	case <-ctx.Done():
		return fmt.Errorf("state loop did not take a heartbeat: %w", ctx.Err())
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("heartbeat not delivered: %w", ctx.Err())
	}
}

// Flush writes every node with unsaved endpoint, host info or last-seen
// changes to the store.
func (s *State) Flush(ctx context.Context) error {
	if s.clustered() {
		return nil // the publisher stores them (Options.Publish)
	}
	s.regMu.Lock()
	defer s.regMu.Unlock()
	s.mu.Lock()
	var batch []*Node
	for id := range s.dirty {
		if n, ok := s.nodes[id]; ok {
			batch = append(batch, n)
		}
	}
	clear(s.dirty)
	s.mu.Unlock()
	rows := make([]store.Node, len(batch))
	for i, n := range batch {
		rows[i] = nodeToStore(n)
	}
	err := s.st.UpdateNodes(ctx, rows)
	if err != nil {
		// Nothing is dropped: the nodes stay dirty and the next flush
		// writes their then current state (a node deleted meanwhile is
		// not written back).
		s.mu.Lock()
		for _, n := range batch {
			if _, ok := s.nodes[n.ID]; ok {
				s.dirty[n.ID] = true
			}
		}
		s.mu.Unlock()
	}
	return err
}

// Pending is how many nodes have endpoint, host info or last-seen changes
// not yet written to the store.
func (s *State) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.dirty)
}

// checkExpiry tells nodes whose key expired since the last check, and their
// peers.
func (s *State) checkExpiry() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	for _, n := range s.nodes {
		if !n.Expiry.IsZero() && n.Expiry.After(s.lastScan) && !n.Expiry.After(now) {
			s.log.Info("node key expired", "node", n.ID, "name", n.GivenName)
			s.emitLocked(Change{Kind: NodeUpdated, Node: n, Self: true})
		}
	}
	s.lastScan = now
}

// MapUpdate is what a client reports in a map request.
type MapUpdate struct {
	Version   tailcfg.CapabilityVersion
	DiscoKey  key.DiscoPublic
	Endpoints []netip.AddrPort
	Hostinfo  *tailcfg.Hostinfo
}

// ApplyMapUpdate records endpoints, disco key, home DERP and host info a
// client sent. Peers get a patch for what a patch can carry and the whole
// node only when other host info changed. When the advertised routes
// changed, the policy's autoApprovers are applied to them (see
// AutoApproveAll) and primary routers are re-elected.
func (s *State) ApplyMapUpdate(id ids.NodeID, u MapUpdate) error {
	approve, err := s.applyMapUpdate(id, u)
	if err != nil || !approve {
		return err
	}
	if err := s.autoApprove(context.Background(), []ids.NodeID{id}); err != nil {
		// The client's update itself is recorded; the approval is
		// retried on its next route change or policy reload.
		s.log.Error("auto-approving advertised routes", "node", id, "err", err)
	}
	return nil
}

// applyMapUpdate is ApplyMapUpdate under the state lock. It reports
// whether the node now advertises routes that autoApprovers may approve.
func (s *State) applyMapUpdate(id ids.NodeID, u MapUpdate) (approve bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.clustered() {
		s.reportedAt[id] = s.now()
	}
	return s.applyReportLocked(id, u, true)
}

// applyReportLocked applies what node id's client reported (s.mu held):
// to this server (local: it is marked for the next flush, or published
// to the other servers) or to another server (the publisher's fact).
func (s *State) applyReportLocked(id ids.NodeID, u MapUpdate, local bool) (approve bool, err error) {
	old, ok := s.nodes[id]
	if !ok {
		return false, ErrNodeNotFound
	}
	n := old.clone()
	patch := &tailcfg.PeerChange{NodeID: tailcfg.NodeID(id)}
	patched, updated := false, false
	if u.Version != 0 && u.Version != n.Cap {
		n.Cap = u.Version
		patch.Cap = u.Version
		patched = true
	}
	if !u.DiscoKey.IsZero() && u.DiscoKey != n.DiscoKey {
		n.DiscoKey = u.DiscoKey
		dk := u.DiscoKey
		patch.DiscoKey = &dk
		patched = true
	}
	if u.Endpoints != nil && !slices.Equal(u.Endpoints, n.Endpoints) {
		n.Endpoints = slices.Clone(u.Endpoints)
		patch.Endpoints = n.Endpoints
		patched = true
	}
	if hi := u.Hostinfo; hi != nil {
		if hi.NetInfo != nil && hi.NetInfo.PreferredDERP != 0 && hi.NetInfo.PreferredDERP != n.HomeDERP {
			n.HomeDERP = hi.NetInfo.PreferredDERP
			patch.DERPRegion = n.HomeDERP
			patched = true
		}
		if !hostinfoEqualIgnoringNetInfo(n.Hostinfo, hi) {
			updated = true
		}
		n.Hostinfo = hi
		if hi.Hostname != "" {
			n.Hostname = hi.Hostname
		}
	}
	if !patched && !updated {
		if n.Hostinfo != old.Hostinfo {
			s.setNode(n) // keep the newest NetInfo; peers don't need it
		}
		return false, nil
	}
	s.setNode(n)
	if local {
		if s.clustered() {
			s.publishLocked(id, nil)
		} else {
			s.dirty[id] = true
		}
	}
	if !updated {
		s.emitLocked(Change{Kind: NodePatched, Node: n, Patch: patch})
		return false, nil
	}
	routesChanged := !slices.Equal(old.AnnouncedRoutes(), n.AnnouncedRoutes())
	var changed []ids.NodeID
	if routesChanged {
		changed = s.refreshRoutesLocked(id)
	}
	// The node's own AllowedIPs and PrimaryRoutes follow its routes, and
	// the policy sees its served routes.
	if routesChanged || old.Hostname != n.Hostname {
		s.recompileForLocked(s.nodes[id])
	}
	s.emitLocked(Change{Kind: NodeUpdated, Node: s.nodes[id], Self: routesChanged})
	s.emitRouteChangesLocked(changed, id)
	s.emitPolicyLocked()
	if local && routesChanged && s.pol != nil {
		for _, r := range n.AnnouncedRoutes() {
			if !slices.Contains(n.ApprovedRoutes, r) {
				return true, nil
			}
		}
	}
	return false, nil
}

func hostinfoEqualIgnoringNetInfo(a, b *tailcfg.Hostinfo) bool {
	if a == nil || b == nil {
		return a == b
	}
	ac, bc := *a, *b
	ac.NetInfo, bc.NetInfo = nil, nil
	return ac.Equal(&bc)
}
