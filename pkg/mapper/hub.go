package mapper

import (
	"bytes"
	"encoding/json"
	"github.com/hsctl/headscale/pkg/policy"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/state"
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
	at   time.Time // when the change it carries happened
	json []byte

	zOnce sync.Once
	z     []byte
}

func (f *frame) bytes(compress bool) []byte {
	if !compress {
		return f.json
	}
	f.zOnce.Do(func() { f.z = zstdframe.AppendEncode(nil, f.json, zstdframe.FastestCompression) })
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
	// whose queue overflows is resynchronised. Default 256.
	QueueSize int
	// FullMapBuilds bounds how many full maps are built and compressed at
	// once, so a reconnect storm does not hold thousands of them in memory
	// together. Default 2 × GOMAXPROCS.
	FullMapBuilds int
	Observer      Observer
	Now           func() time.Time
}

// Hub is the state owner's Sink: it turns each Change into one encoded
// frame and queues it on the sessions the change concerns.
type Hub struct {
	m    *Mapper
	opts HubOptions

	builds chan struct{} // semaphore for full-map builds

	mu       sync.Mutex
	sessions map[uint64]map[*Session]struct{}
	open     int

	// peers caches each node's encoded peer view, keyed by node ID; an
	// entry is valid while its snapshot pointer is the current one.
	peers sync.Map // uint64 -> *encodedPeer
}

type encodedPeer struct {
	snap *state.Node
	json []byte
}

// NewHub returns a Hub delivering maps built by m.
func NewHub(m *Mapper, opts HubOptions) *Hub {
	if opts.QueueSize <= 0 {
		opts.QueueSize = 256
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
	return &Hub{m: m, opts: opts, sessions: make(map[uint64]map[*Session]struct{}), builds: make(chan struct{}, opts.FullMapBuilds)}
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

// Apply implements state.Sink. It runs under the state lock: it encodes
// the change once and queues it without blocking.
func (h *Hub) Apply(c state.Change) {
	now := h.opts.Now()
	var toPeers, toSelf *frame
	switch c.Kind {
	case state.NodeAdded, state.NodeUpdated:
		resp := &tailcfg.MapResponse{PeersChanged: []*tailcfg.Node{h.m.PeerNode(c.Node, now)}}
		if c.Node.Tagged() {
			resp.UserProfiles = []tailcfg.UserProfile{Profile(nil)}
		} else if c.User != nil {
			resp.UserProfiles = []tailcfg.UserProfile{Profile(c.User)}
		}
		toPeers = h.encode(KindDelta, c.At, resp)
		if c.Self {
			toSelf = h.encode(KindDelta, c.At, &tailcfg.MapResponse{Node: h.m.SelfNode(c.Node, now, c.Policy)})
		}
	case state.NodePatched:
		toPeers = h.encode(KindDelta, c.At, &tailcfg.MapResponse{PeersChangedPatch: []*tailcfg.PeerChange{c.Patch}})
	case state.NodeRemoved:
		h.peers.Delete(c.Node.ID)
		toPeers = h.encode(KindDelta, c.At, &tailcfg.MapResponse{PeersRemoved: []tailcfg.NodeID{tailcfg.NodeID(c.Node.ID)}})
	case state.UserUpdated:
		toPeers = h.encode(KindDelta, c.At, &tailcfg.MapResponse{UserProfiles: []tailcfg.UserProfile{Profile(c.User)}})
	case state.PolicyChanged:
		h.applyPolicy(c, now)
		return
	case state.Heartbeat:
		// Passing the delivery lock is the proof of life.
		h.mu.Lock()
		h.mu.Unlock()
		return
	default:
		return
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	var self uint64
	if c.Node != nil {
		self = c.Node.ID
	}
	for id, set := range h.sessions {
		if id == self && c.Node != nil {
			if c.Kind == state.NodeRemoved {
				for s := range set {
					s.end("node deleted")
				}
				continue
			}
			if toSelf != nil {
				for s := range set {
					s.push(toSelf)
				}
			}
			continue
		}
		// A peer learns of a node only if the policy lets it see it. A
		// removal goes to everyone: dropping an unknown ID is harmless.
		if c.Kind != state.NodeRemoved && c.Node != nil && !c.CanSee(id, self) {
			continue
		}
		for s := range set {
			s.push(toPeers)
		}
	}
}

func capMap(c *policy.Compiled, id uint64) tailcfg.NodeCapMap {
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
	byID := make(map[uint64]*state.Node, len(c.Nodes))
	all := make([]uint64, 0, len(c.Nodes))
	for _, n := range c.Nodes {
		byID[n.ID] = n
		all = append(all, n.ID)
	}
	slices.Sort(all)
	peersOf := func(p *policy.Compiled, id uint64, buf []uint64) []uint64 {
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
	var oldBuf, newBuf []uint64
	h.mu.Lock()
	defer h.mu.Unlock()
	for id, set := range h.sessions {
		self, ok := byID[id]
		if !ok {
			continue
		}
		resp := &tailcfg.MapResponse{}
		if !reflect.DeepEqual(capMap(c.OldPolicy, id), capMap(c.Policy, id)) {
			resp.Node = h.m.SelfNode(self, now, c.Policy)
		}
		oldBuf = peersOf(c.OldPolicy, id, oldBuf[:0])
		newBuf = peersOf(c.Policy, id, newBuf[:0])
		seenUsers := map[uint64]bool{}
		i, j := 0, 0
		for i < len(oldBuf) || j < len(newBuf) {
			switch {
			case j == len(newBuf) || (i < len(oldBuf) && oldBuf[i] < newBuf[j]):
				resp.PeersRemoved = append(resp.PeersRemoved, tailcfg.NodeID(oldBuf[i]))
				i++
			case i == len(oldBuf) || newBuf[j] < oldBuf[i]:
				if n := byID[newBuf[j]]; n != nil {
					resp.PeersChanged = append(resp.PeersChanged, h.m.PeerNode(n, now))
					if !seenUsers[n.UserID] {
						seenUsers[n.UserID] = true
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
func sameFilter(a, b *policy.Compiled, id uint64) bool {
	switch {
	case a == nil && b == nil:
		return true
	case a != nil && b != nil:
		return a.FilterKey(id) == b.FilterKey(id)
	}
	return reflect.DeepEqual(Filter(a, id), Filter(b, id))
}

// Broadcast sends the same response to every session: DERP map or DNS
// changes that concern the whole tailnet.
func (h *Hub) Broadcast(resp *tailcfg.MapResponse) {
	f := h.encode(KindDelta, h.opts.Now(), resp)
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, set := range h.sessions {
		for s := range set {
			s.push(f)
		}
	}
}

// Sessions is the number of open map sessions.
func (h *Hub) Sessions() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open
}

// NewSession prepares a session for node id; attach it with
// state.Connect(id, sess.Attach).
func (h *Hub) NewSession(id uint64, compress, keepAlive bool) *Session {
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

func (h *Hub) add(s *Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.sessions[s.NodeID]
	if set == nil {
		set = make(map[*Session]struct{})
		h.sessions[s.NodeID] = set
	}
	set[s] = struct{}{}
	h.open++
	h.opts.Observer.SessionsChanged(h.open)
}

// Detach removes a session; call it when the session's stream ends.
func (h *Hub) Detach(s *Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	set := h.sessions[s.NodeID]
	if _, ok := set[s]; !ok {
		return
	}
	delete(set, s)
	if len(set) == 0 {
		delete(h.sessions, s.NodeID)
	}
	h.open--
	h.opts.Observer.SessionsChanged(h.open)
}

// Close ends every session (server shutdown).
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, set := range h.sessions {
		for s := range set {
			s.end("server shutting down")
		}
	}
}

// FullMapJSON encodes a full map for snap, splicing in the shared peer
// encodings instead of re-encoding every peer for every session.
func (h *Hub) FullMapJSON(snap state.Snapshot) []byte {
	now := h.opts.Now()
	resp := h.m.fullResponse(snap, now)
	head, err := json.Marshal(resp)
	if err != nil {
		panic("mapper: encoding map response: " + err.Error())
	}
	peers := slices.Clone(snap.Peers)
	slices.SortFunc(peers, func(a, b *state.Node) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	var buf bytes.Buffer
	buf.Grow(len(head) + len(peers)*600)
	buf.Write(head[:len(head)-1]) // drop the closing brace
	buf.WriteString(`,"Peers":[`)
	for i, p := range peers {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(h.peerJSON(p, now))
	}
	buf.WriteString("]}")
	return buf.Bytes()
}

// Session is one streaming map request. Frames are queued by the hub and
// written by the request's goroutine in Serve.
type Session struct {
	hub       *Hub
	NodeID    uint64
	compress  bool
	keepAlive bool

	queue    chan *frame
	resync   atomic.Bool
	resyncCh chan struct{}

	initial state.Snapshot // set by Attach, consumed by Serve

	doneOnce sync.Once
	done     chan struct{}
	reason   atomic.Value // string
}

// Attach is the callback for state.Connect: it records the snapshot the
// session starts from and registers the session, both under the state lock.
func (s *Session) Attach(snap state.Snapshot) {
	s.initial = snap
	s.hub.add(s)
}

// push queues f without blocking; on overflow the session is marked for
// resync and later frames are dropped until the resync snapshot is taken,
// since that snapshot will contain them.
func (s *Session) push(f *frame) {
	if s.resync.Load() {
		return
	}
	select {
	case s.queue <- f:
	default:
		if s.resync.CompareAndSwap(false, true) {
			select {
			case s.resyncCh <- struct{}{}:
			default:
			}
		}
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
// discards queued frames and takes the new starting snapshot.
func (s *Session) resyncAttach(snap state.Snapshot) {
	for {
		select {
		case <-s.queue:
			continue
		default:
		}
		break
	}
	s.initial = snap
	s.resync.Store(false)
}
