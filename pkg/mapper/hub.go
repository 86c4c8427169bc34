package mapper

import (
	"context"
	"encoding/json"
	"maps"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/state"
	"golang.org/x/sync/semaphore"
	"tailscale.com/tailcfg"
	"tailscale.com/util/zstdframe"
)

// Frame kinds, used as metric labels.
const (
	KindFull      = "full"
	KindDelta     = "delta"
	KindKeepAlive = "keepalive"
)

// frame is one encoded map response shared by every session it goes to.
type frame struct {
	kind string
	at   time.Time // when the oldest change it carries happened
	json []byte

	zOnce sync.Once
	z     []byte

	// parts, when set, is the compressed frame in pieces (a full map):
	// z is then nil and size their total length.
	parts [][]byte
	size  int
}

func (f *frame) bytes(compress bool) []byte {
	if !compress {
		return f.json
	}
	f.zOnce.Do(func() {
		switch {
		case f.z != nil:
		case f.parts != nil:
			f.z = make([]byte, 0, f.size)
			for _, p := range f.parts {
				f.z = append(f.z, p...)
			}
		default:
			f.z = zstdframe.AppendEncode(nil, f.json, zstdOpts...)
		}
	})
	return f.z
}

// Observer receives delivery statistics; metrics implement it.
type Observer interface {
	FrameSent(kind string, bytes int, latency time.Duration)
	SessionResynced()
	SessionsChanged(open int)
}

type nopObserver struct{}

func (nopObserver) FrameSent(string, int, time.Duration) {}
func (nopObserver) SessionResynced()                     {}
func (nopObserver) SessionsChanged(int)                  {}

// HubOptions configures a Hub.
type HubOptions struct {
	// QueueSize bounds each session's queue of undelivered frames; a session
	// whose queue overflows is resynchronised. Default 64 (each frame is
	// a whole delivery round, so that is many seconds of backlog).
	QueueSize int
	// FullMapBuilds bounds how many full maps are built and compressed at
	// once, so a reconnect storm does not hold thousands of them in memory
	// together. Default 2 × GOMAXPROCS.
	FullMapBuilds int
	// FullMapBytes bounds the estimated bytes of full maps built and not
	// yet written to their clients. Default 64 MiB.
	FullMapBytes int64
	// RoundCost is the least pause, per open session, after a delivery
	// round that carried several changes: changes arriving meanwhile are
	// coalesced into the next round's frames, so the number of frames
	// each session receives per second is bounded however fast changes
	// come, while a change arriving when the hub is idle goes out at once.
	// Default 50µs (50 ms at 1,000 sessions, 0.5 s at 10,000).
	RoundCost time.Duration
	// MinRoundGap is the least pause between rounds. Default 2ms.
	MinRoundGap time.Duration
	// MaxRoundGap bounds the wait for sessions to drain (see run).
	// Default 1s.
	MaxRoundGap time.Duration
	// LazySnapshotPeers is the tailnet size above which a session drops
	// its starting snapshot while it waits for room to build its full map
	// and takes a fresh one then. Default 256.
	LazySnapshotPeers int
	Observer          Observer
	Now               func() time.Time
}

// Hub is the state owner's Sink. Apply only records a change (it runs
// under the state lock); the hub's delivery goroutine then coalesces every
// change recorded since its last round into as few shared frames as the
// sessions' views allow and queues them on the sessions. Sessions are
// registered through the same ordered stream, so a session never receives
// a change its starting snapshot already holds.
type Hub struct {
	m    *Mapper
	opts HubOptions

	builds    chan struct{}       // semaphore for full-map builds
	fullBytes *semaphore.Weighted // budget for full maps in flight

	pmu     sync.Mutex
	pending []event
	wake    chan struct{}
	hurry   chan struct{} // Sync cuts the pause between rounds short
	stop    chan struct{}
	stopped chan struct{}

	mu       sync.Mutex
	sessions map[ids.NodeID]map[*Session]struct{}
	open     int
	// behind counts registered sessions with frames not yet taken by
	// their writer (see Session.pending).
	behind atomic.Int64

	// peers caches each node's encoded peer view, keyed by node ID; an
	// entry is valid while its snapshot pointer is the current one.
	peers sync.Map // ids.NodeID -> *encodedPeer
	// chunks caches compressed runs of peers for full maps.
	chunks chunkCache

	// roundHook, when set (tests only), runs after a round's events are
	// taken and before they are delivered.
	roundHook atomic.Pointer[func()]
}

type encodedPeer struct {
	snap *state.Node
	json []byte
}

// event is one entry of the hub's ordered input: a change, a session
// (re)attaching, a broadcast, or a sync marker.
type event struct {
	c      state.Change
	attach *Session
	gen    uint64 // with attach: which of the session's snapshots
	bcast  *tailcfg.MapResponse
	synced chan struct{}
}

// NewHub returns a Hub delivering maps built by m. Its delivery goroutine
// runs until Close.
func NewHub(m *Mapper, opts HubOptions) *Hub {
	if opts.QueueSize <= 0 {
		opts.QueueSize = 64
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.FullMapBuilds <= 0 {
		opts.FullMapBuilds = 2 * runtime.GOMAXPROCS(0)
	}
	if opts.FullMapBytes <= 0 {
		opts.FullMapBytes = 64 << 20
	}
	if opts.RoundCost <= 0 {
		opts.RoundCost = 50 * time.Microsecond
	}
	if opts.MinRoundGap <= 0 {
		opts.MinRoundGap = 2 * time.Millisecond
	}
	if opts.MaxRoundGap <= 0 {
		opts.MaxRoundGap = time.Second
	}
	if opts.LazySnapshotPeers <= 0 {
		opts.LazySnapshotPeers = lazySnapshotPeers
	}
	h := &Hub{
		m: m, opts: opts,
		sessions:  make(map[ids.NodeID]map[*Session]struct{}),
		builds:    make(chan struct{}, opts.FullMapBuilds),
		fullBytes: semaphore.NewWeighted(opts.FullMapBytes),
		wake:      make(chan struct{}, 1),
		hurry:     make(chan struct{}, 1),
		stop:      make(chan struct{}),
		stopped:   make(chan struct{}),
	}
	go h.run()
	return h
}

func (h *Hub) enqueue(e event) {
	h.pmu.Lock()
	h.pending = append(h.pending, e)
	h.pmu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// run is the delivery goroutine: it takes everything recorded since the
// last round, delivers it, and pauses in proportion to the number of open
// sessions before the next round.
func (h *Hub) run() {
	defer close(h.stopped)
	var batch []event
	for {
		select {
		case <-h.stop:
			return
		case <-h.wake:
		}
		h.pmu.Lock()
		batch, h.pending = h.pending, batch[:0]
		h.pmu.Unlock()
		if len(batch) == 0 {
			continue
		}
		if hook := h.roundHook.Load(); hook != nil {
			(*hook)()
		}
		start := time.Now()
		h.deliver(batch)
		busyRound := len(batch) > 2
		clear(batch)
		if !h.pause(start, busyRound) {
			return
		}
	}
}

// pause waits before the next round: until no more than one session in
// sixteen still has frames queued (or MaxRoundGap passed), then, after a
// round that carried several changes, for a quarter as long again and in
// all at least RoundCost per open session. While the sessions' writers keep
// up, rounds follow each other closely; when writing a round takes long
// (many sessions, a busy machine), rounds spread out, delivery leaves
// some time free, and each round carries more changes: the work per
// change falls as load rises instead of the backlog (and every change's
// latency) growing. A lone change is not held back by a rest. It reports
// false when the hub stops.
func (h *Hub) pause(start time.Time, rest bool) bool {
	h.mu.Lock()
	least := max(time.Duration(h.open)*h.opts.RoundCost, h.opts.MinRoundGap)
	h.mu.Unlock()
	t := time.NewTimer(h.opts.MinRoundGap)
	defer t.Stop()
	var next time.Time
	for {
		select {
		case <-h.stop:
			return false
		case <-h.hurry:
			if h.syncPending() {
				return true
			}
			// A stale signal: its Sync was served by the last round.
			continue
		case <-t.C:
		}
		now := time.Now()
		if next.IsZero() {
			if busy := now.Sub(start); busy < h.opts.MaxRoundGap && !h.drained() {
				t.Reset(h.opts.MinRoundGap)
				continue
			}
			busy := now.Sub(start)
			if rest {
				next = start.Add(max(least, busy+busy/4))
			} else {
				next = now
			}
		}
		if !now.Before(next) {
			return true
		}
		t.Reset(next.Sub(now))
	}
}

// drained reports whether at most one open session in sixteen has frames
// waiting to be written.
func (h *Hub) drained() bool {
	h.mu.Lock()
	open := h.open
	h.mu.Unlock()
	return h.behind.Load() <= int64(open/16)
}

// fullMapCost estimates a full map's size in memory for the in-flight
// budget: about 150 bytes per peer compressed, 600 uncompressed, capped at
// the whole budget so one huge map can still go out alone.
func (h *Hub) fullMapCost(peers int, compress bool) int64 {
	per := int64(600)
	if compress {
		per = 150
	}
	return min(int64(peers)*per+64<<10, h.opts.FullMapBytes)
}

// Sync starts a round now and waits until every change applied before it
// has been queued on its sessions. The watchdog uses it as proof that
// delivery moves; tests use it to observe queues.
func (h *Hub) Sync(ctx context.Context) error {
	done := make(chan struct{})
	h.enqueue(event{synced: done})
	select {
	case h.hurry <- struct{}{}:
	default:
	}
	select {
	case <-done:
		return nil
	case <-h.stopped:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// syncPending reports whether a Sync waits for the next round.
func (h *Hub) syncPending() bool {
	h.pmu.Lock()
	defer h.pmu.Unlock()
	for _, e := range h.pending {
		if e.synced != nil {
			return true
		}
	}
	return false
}

func (h *Hub) encode(kind string, at time.Time, resp *tailcfg.MapResponse) *frame {
	b, err := json.Marshal(resp)
	if err != nil {
		// tailcfg types always marshal; this would be a programming error.
		panic("mapper: encoding map response: " + err.Error())
	}
	return &frame{kind: kind, at: at, json: b}
}

// peerJSON returns the shared encoding of n's peer view.
func (h *Hub) peerJSON(n *state.Node, now time.Time) []byte {
	if v, ok := h.peers.Load(n.ID); ok {
		if e := v.(*encodedPeer); e.snap == n {
			return e.json
		}
	}
	b, err := json.Marshal(h.m.PeerNode(n, now))
	if err != nil {
		panic("mapper: encoding node: " + err.Error())
	}
	h.peers.Store(n.ID, &encodedPeer{snap: n, json: b})
	return b
}

// Apply implements state.Sink. It runs under the state lock, so it only
// records the change; the delivery goroutine does the rest.
func (h *Hub) Apply(c state.Change) {
	switch c.Kind {
	case state.NodeAdded, state.NodeUpdated, state.NodePatched, state.NodeRemoved, state.UserUpdated, state.PolicyChanged:
		h.enqueue(event{c: c})
	case state.Heartbeat:
		// Passing the pending lock proves Apply cannot block; Sync proves
		// the delivery goroutine moves.
		h.pmu.Lock()
		h.pmu.Unlock() //nolint:staticcheck // an empty critical section is the point
	}
}

// Broadcast sends the same response to every session: DERP map or DNS
// changes that concern the whole tailnet.
func (h *Hub) Broadcast(resp *tailcfg.MapResponse) {
	h.enqueue(event{bcast: resp, c: state.Change{At: h.opts.Now()}})
}

// Sessions is the number of open map sessions.
func (h *Hub) Sessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open
}

// NewSession prepares a session for node id; attach it with
// state.Connect(id, sess.Attach).
func (h *Hub) NewSession(id ids.NodeID, compress, keepAlive bool) *Session {
	return &Session{
		hub:       h,
		NodeID:    id,
		compress:  compress,
		keepAlive: keepAlive,
		queue:     make(chan *frame, h.opts.QueueSize),
		resyncCh:  make(chan struct{}, 1),
		done:      make(chan struct{}),
	}
}

// addLocked registers s; h.mu is held.
func (h *Hub) addLocked(s *Session) {
	if s.detached {
		return
	}
	set := h.sessions[s.NodeID]
	if set == nil {
		set = make(map[*Session]struct{})
		h.sessions[s.NodeID] = set
	}
	if _, ok := set[s]; ok {
		return
	}
	set[s] = struct{}{}
	h.open++
	h.opts.Observer.SessionsChanged(h.open)
}

// Detach removes a session; call it when the session's stream ends.
func (h *Hub) Detach(s *Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s.detached = true
	set := h.sessions[s.NodeID]
	if _, ok := set[s]; !ok {
		return
	}
	delete(set, s)
	if len(set) == 0 {
		delete(h.sessions, s.NodeID)
	}
	if s.pending.Swap(0) > 0 {
		h.behind.Add(-1)
	}
	h.open--
	h.opts.Observer.SessionsChanged(h.open)
}

// Close ends every session (server shutdown) and stops delivery.
func (h *Hub) Close() {
	h.mu.Lock()
	for _, set := range h.sessions {
		for s := range set {
			s.end("server shutting down")
		}
	}
	h.mu.Unlock()
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.stopped
	// Sessions attached but not yet registered end too.
	h.pmu.Lock()
	for _, e := range h.pending {
		if e.attach != nil {
			e.attach.end("server shutting down")
		}
		if e.synced != nil {
			close(e.synced)
		}
	}
	h.pending = nil
	h.pmu.Unlock()
}

// Session is one streaming map request. Frames are queued by the hub and
// written by the request's goroutine in Serve.
type Session struct {
	hub       *Hub
	NodeID    ids.NodeID
	compress  bool
	keepAlive bool

	queue    chan *frame
	resync   atomic.Bool
	resyncCh chan struct{}
	// held drops frames between a resync snapshot and the hub reaching
	// that point of its input: the snapshot already holds those changes.
	held atomic.Bool
	// mu makes a push (check held, then queue) and a resync's hold and
	// drain of the queue exclusive, so no frame taken before the new
	// snapshot is left queued behind it. gen numbers the session's
	// snapshots; the hub lets a session's frames through again only on
	// reaching the attach of its newest one.
	mu  sync.Mutex
	gen uint64
	// pending counts frames queued and not yet taken by the writer; the
	// hub's behind counter follows its moves between zero and non-zero.
	pending atomic.Int32

	initial state.Snapshot // set by Attach, consumed by Serve
	// certDomain is the node's certificate domain as last sent to it
	// (Mapper.CertDomain), for DNS broadcasts; "" when off.
	certDomain atomic.Pointer[string]
	deadline   time.Time // the stream's write deadline (Serve only)

	detached bool // under hub.mu

	doneOnce sync.Once
	done     chan struct{}
	reason   atomic.Value // string
}

// Attach is the callback for state.Connect: under the state lock it
// records the snapshot the session starts from and places the session in
// the hub's ordered input, so it receives exactly the changes after the
// snapshot.
func (s *Session) Attach(snap state.Snapshot) {
	s.mu.Lock()
	s.gen++
	gen := s.gen
	s.initial = snap
	s.mu.Unlock()
	s.noteSelf(snap.Self)
	s.hub.enqueue(event{attach: s, gen: gen})
}

// noteSelf records what of the node's own state broadcasts depend on.
func (s *Session) noteSelf(self *state.Node) {
	if d := s.hub.m.CertDomain(self); d != "" {
		s.certDomain.Store(&d)
	}
}

// push queues f without blocking; on overflow the session is marked for
// resync and later frames are dropped until the resync snapshot is taken,
// since that snapshot will contain them.
func (s *Session) push(f *frame) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.resync.Load() || s.held.Load() {
		return
	}
	// Count the frame before the writer can take it: counted after, a
	// writer that took it (and the one before) first would see the count
	// pass zero unnoticed, and the hub's behind counter would drift up
	// for good.
	if s.pending.Add(1) == 1 {
		s.hub.behind.Add(1)
	}
	select {
	case s.queue <- f:
	default:
		s.took(1)
		if s.resync.CompareAndSwap(false, true) {
			select {
			case s.resyncCh <- struct{}{}:
			default:
			}
		}
	}
}

// took records that the writer (or a resync) removed n frames from the
// queue.
func (s *Session) took(n int) {
	if s.pending.Add(-int32(n)) == 0 {
		s.hub.behind.Add(-1)
	}
}

func (s *Session) end(reason string) {
	s.doneOnce.Do(func() {
		s.reason.Store(reason)
		close(s.done)
	})
}

// Done is closed when the server ends the session.
func (s *Session) Done() <-chan struct{} { return s.done }

// Reason says why the server ended the session.
func (s *Session) Reason() string {
	r, _ := s.reason.Load().(string)
	return r
}

// resyncAttach is the callback for state.Resync: under the state lock it
// discards queued frames and takes the new starting snapshot; frames for
// earlier changes are held back until the hub reaches this point.
func (s *Session) resyncAttach(snap state.Snapshot) {
	s.mu.Lock()
	s.gen++
	gen := s.gen
	s.held.Store(true)
	for {
		select {
		case <-s.queue:
			s.took(1)
			continue
		default:
		}
		break
	}
	s.initial = snap
	s.resync.Store(false)
	s.mu.Unlock()
	s.noteSelf(snap.Self)
	s.hub.enqueue(event{attach: s, gen: gen})
}

func capMap(c *policy.Compiled, id ids.NodeID) tailcfg.NodeCapMap {
	if c == nil {
		return nil
	}
	return c.NodeCapMap(id)
}

// applyPolicy updates every session whose node's view changed between
// c.OldPolicy and c.Policy: peers that became visible are sent, peers that
// are no longer visible are removed, and a changed packet filter, SSH
// policy or node capability set is replaced. Sessions whose view is
// unchanged get nothing. Peer sets are compared as sorted ID lists, so the
// cost per session is linear in its peers, with no allocation per session.
func (h *Hub) applyPolicy(c state.Change, now time.Time) {
	byID := make(map[ids.NodeID]*state.Node, len(c.Nodes))
	for _, n := range c.Nodes {
		byID[n.ID] = n
	}
	// Every node's ID in order, needed only when one side has no policy.
	var all []ids.NodeID
	if c.OldPolicy == nil || c.Policy == nil {
		all = slices.Sorted(maps.Keys(byID))
	}
	peersOf := func(p *policy.Compiled, id ids.NodeID, buf []ids.NodeID) []ids.NodeID {
		if p == nil {
			for _, x := range all {
				if x != id {
					buf = append(buf, x)
				}
			}
			return buf
		}
		return p.AppendPeers(buf, id)
	}
	var oldBuf, newBuf []ids.NodeID
	h.mu.Lock()
	defer h.mu.Unlock()
	// A change that came from node changes names the nodes whose view may
	// differ; only their sessions are compared.
	targets := h.sessions
	if c.Affected != nil {
		targets = make(map[ids.NodeID]map[*Session]struct{})
		for _, a := range c.Affected {
			for id := range a.IDs() {
				if set, ok := h.sessions[id]; ok {
					targets[id] = set
				}
			}
		}
	}
	for id, set := range targets {
		self, ok := byID[id]
		if !ok {
			continue
		}
		resp := &tailcfg.MapResponse{}
		if !reflect.DeepEqual(capMap(c.OldPolicy, id), capMap(c.Policy, id)) {
			resp.Node = h.m.SelfNode(self, now, c.Policy)
		}
		if c.ChangedNodes != nil && !slices.Contains(c.ChangedNodes, id) {
			// Only these nodes' visibility can have changed, and each was
			// sent as a node change to the sessions that may see it now:
			// what is left is removing it where it is no longer visible.
			// (A changed node's own peers may all differ: its sessions
			// compare whole peer lists below.)
			for _, m := range c.ChangedNodes {
				if m != id && c.OldPolicy != nil && c.OldPolicy.CanSee(id, m) && (c.Policy == nil || !c.Policy.CanSee(id, m)) && byID[m] != nil {
					resp.PeersRemoved = append(resp.PeersRemoved, tailcfg.NodeID(m))
				}
			}
			oldBuf, newBuf = oldBuf[:0], newBuf[:0]
		} else {
			oldBuf = peersOf(c.OldPolicy, id, oldBuf[:0])
			newBuf = peersOf(c.Policy, id, newBuf[:0])
		}
		seenUsers := map[ids.UserID]bool{}
		i, j := 0, 0
		for i < len(oldBuf) || j < len(newBuf) {
			switch {
			case j == len(newBuf) || (i < len(oldBuf) && oldBuf[i] < newBuf[j]):
				resp.PeersRemoved = append(resp.PeersRemoved, tailcfg.NodeID(oldBuf[i]))
				i++
			case i == len(oldBuf) || newBuf[j] < oldBuf[i]:
				if n := byID[newBuf[j]]; n != nil {
					resp.PeersChanged = append(resp.PeersChanged, h.m.PeerNode(n, now))
					// Tagged nodes share one profile whatever their
					// UserID (0 for most).
					uid := n.UserID
					if n.Tagged() {
						uid = ids.UserID(TaggedDevicesUserID)
					}
					if !seenUsers[uid] {
						seenUsers[uid] = true
						if n.Tagged() {
							resp.UserProfiles = append(resp.UserProfiles, Profile(nil))
						} else if u := c.Users[n.UserID]; u != nil {
							resp.UserProfiles = append(resp.UserProfiles, Profile(u))
						}
					}
				}
				j++
			default:
				i++
				j++
			}
		}
		if !sameFilter(c.OldPolicy, c.Policy, id) {
			resp.PacketFilters = map[string][]tailcfg.FilterRule{"base": Filter(c.Policy, id)}
		}
		oldSSH, newSSH := SSHPolicy(c.OldPolicy, id), SSHPolicy(c.Policy, id)
		if oldSSH != newSSH && !reflect.DeepEqual(oldSSH, newSSH) {
			if newSSH == nil {
				newSSH = &tailcfg.SSHPolicy{} // nil would mean "unchanged"
			}
			resp.SSHPolicy = newSSH
		}
		if resp.Node == nil && resp.PeersChanged == nil && resp.PeersRemoved == nil && resp.PacketFilters == nil && resp.SSHPolicy == nil {
			continue
		}
		f := h.encode(KindDelta, c.At, resp)
		for s := range set {
			s.push(f)
		}
	}
}

// sameFilter compares node id's filter under two compilations, by content
// hash when both exist.
func sameFilter(a, b *policy.Compiled, id ids.NodeID) bool {
	switch {
	case a == nil && b == nil:
		return true
	case a != nil && b != nil:
		return a.FilterKey(id) == b.FilterKey(id)
	}
	return reflect.DeepEqual(Filter(a, id), Filter(b, id))
}
