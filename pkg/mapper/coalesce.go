package mapper

import (
	"bytes"
	"encoding/binary"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
)

// A delivery round coalesces the node and user changes recorded since the
// last round: per node only the outcome matters (gone, a new peer view, or
// one merged patch), so a node that changed ten times is sent once, and
// all sessions with the same view of the round share one encoded frame.

// nodeAgg is what a round says about one node.
type nodeAgg struct {
	node    *state.Node // newest snapshot
	user    *state.User // owner, for its profile, when the whole node is sent
	full    bool        // send the whole node (PeersChanged)
	removed bool
	self    bool // the node's own sessions get a new self node
	patch   *tailcfg.PeerChange
}

// roundAgg is the coalesced content of a run of events.
type roundAgg struct {
	order []ids.NodeID // node IDs in first-seen order
	nodes map[ids.NodeID]*nodeAgg
	users []*state.User // renamed users, in order
	// user is the newest version of every user a change of the round
	// carried: a profile sent is never older than one the round saw.
	user   map[ids.UserID]*state.User
	bcasts []*tailcfg.MapResponse
	pol    *policy.Compiled // policy in force after the newest change
	at     time.Time        // oldest change
}

func aggregate(evs []event) *roundAgg {
	a := &roundAgg{nodes: make(map[ids.NodeID]*nodeAgg), user: make(map[ids.UserID]*state.User)}
	for _, e := range evs {
		c := e.c
		if a.at.IsZero() || (!c.At.IsZero() && c.At.Before(a.at)) {
			a.at = c.At
		}
		if e.bcast != nil {
			a.bcasts = append(a.bcasts, e.bcast)
			continue
		}
		a.pol = c.Policy
		if c.User != nil {
			a.user[c.User.ID] = c.User
		}
		if c.Kind == state.UserUpdated {
			if c.User != nil {
				a.users = append(a.users, c.User)
			}
			continue
		}
		if c.Node == nil {
			continue
		}
		id := c.Node.ID
		n := a.nodes[id]
		if n == nil {
			n = &nodeAgg{}
			a.nodes[id] = n
			a.order = append(a.order, id)
		}
		n.node = c.Node
		switch c.Kind {
		case state.NodeAdded, state.NodeUpdated:
			n.full, n.removed, n.patch = true, false, nil
			n.self = n.self || c.Self
			if c.User != nil {
				n.user = c.User
			}
		case state.NodePatched:
			if !n.full && !n.removed && c.Patch != nil {
				n.patch = mergePatch(n.patch, c.Patch)
			}
		case state.NodeRemoved:
			n.removed, n.full, n.patch, n.self = true, false, nil, false
		}
	}
	return a
}

// mergePatch folds b (newer) into a.
func mergePatch(a, b *tailcfg.PeerChange) *tailcfg.PeerChange {
	if a == nil {
		c := *b
		return &c
	}
	c := *a
	if b.DERPRegion != 0 {
		c.DERPRegion = b.DERPRegion
	}
	if b.Cap != 0 {
		c.Cap = b.Cap
	}
	if b.CapMap != nil {
		c.CapMap = b.CapMap
	}
	if b.Endpoints != nil {
		c.Endpoints = b.Endpoints
	}
	if b.Key != nil {
		c.Key = b.Key
	}
	if b.KeySignature != nil {
		c.KeySignature = b.KeySignature
	}
	if b.DiscoKey != nil {
		c.DiscoKey = b.DiscoKey
	}
	if b.Online != nil {
		c.Online = b.Online
	}
	if b.LastSeen != nil {
		c.LastSeen = b.LastSeen
	}
	if b.KeyExpiry != nil {
		c.KeyExpiry = b.KeyExpiry
	}
	return &c
}

// view returns which of the round's nodes session node sid hears of, as a
// bitmask over a.order appended to key, and whether it gets its own self
// node (then the key also names sid). Removals go to everyone (dropping an unknown peer is harmless).
func (a *roundAgg) view(sid ids.NodeID, key []byte) ([]byte, bool) {
	var word uint64
	self := false
	for i, id := range a.order {
		n := a.nodes[id]
		in := false
		switch {
		case id == sid:
			self = n.self
		case n.removed:
			in = true
		default:
			in = a.pol == nil || a.pol.CanSee(sid, id)
		}
		if in {
			word |= 1 << (i % 64)
		}
		if i%64 == 63 || i == len(a.order)-1 {
			key = binary.LittleEndian.AppendUint64(key, word)
			word = 0
		}
	}
	if self {
		// Its own self node: no other session shares this frame, however
		// alike their views of the other nodes.
		key = append(key, 's')
		key = binary.LittleEndian.AppendUint64(key, uint64(sid))
	}
	return key, self
}

// build encodes the frame for a view (nil when the view is empty).
func (h *Hub) build(a *roundAgg, mask []byte, self *state.Node, now time.Time) *frame {
	resp := &tailcfg.MapResponse{}
	var peers [][]byte
	seenUser := map[tailcfg.UserID]bool{}
	addProfile := func(p tailcfg.UserProfile) {
		if !seenUser[p.ID] {
			seenUser[p.ID] = true
			resp.UserProfiles = append(resp.UserProfiles, p)
		}
	}
	for i, id := range a.order {
		if mask[i/8]&(1<<(i%8)) == 0 {
			continue
		}
		n := a.nodes[id]
		switch {
		case n.removed:
			resp.PeersRemoved = append(resp.PeersRemoved, tailcfg.NodeID(id))
		case n.full:
			peers = append(peers, h.peerJSON(n.node, now))
			if n.node.Tagged() {
				addProfile(Profile(nil))
			} else if n.user != nil {
				addProfile(Profile(a.user[n.user.ID]))
			}
		case n.patch != nil:
			resp.PeersChangedPatch = append(resp.PeersChangedPatch, n.patch)
		}
	}
	for _, u := range a.users {
		addProfile(Profile(a.user[u.ID]))
	}
	if self != nil {
		resp.Node = h.m.SelfNode(self, now, a.pol)
		if d := h.m.CertDomain(self); d != "" {
			// Its name may have changed: the certificate domain with it.
			resp.DNSConfig = h.m.DNSFor(self)
		}
		// Its owner may have changed (or it was tagged): the client shows
		// itself by the profile of its User.
		if self.Tagged() {
			addProfile(Profile(nil))
		} else if u := a.nodes[self.ID].user; u != nil {
			addProfile(Profile(a.user[u.ID]))
		}
	}
	if peers == nil && resp.PeersRemoved == nil && resp.PeersChangedPatch == nil && resp.UserProfiles == nil && resp.Node == nil {
		return nil
	}
	f := h.encode(KindDelta, a.at, resp)
	if peers != nil {
		f.json = spliceArray(f.json, "PeersChanged", peers)
	}
	return f
}

// spliceArray adds "field":[items...] to the JSON object obj.
func spliceArray(obj []byte, field string, items [][]byte) []byte {
	size := len(obj) + len(field) + 8
	for _, it := range items {
		size += len(it) + 1
	}
	var b bytes.Buffer
	b.Grow(size)
	b.Write(obj[:len(obj)-1])
	if len(obj) > 2 {
		b.WriteByte(',')
	}
	b.WriteByte('"')
	b.WriteString(field)
	b.WriteString(`":[`)
	for i, it := range items {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(it)
	}
	b.WriteString("]}")
	return b.Bytes()
}

// deliver runs one round over the events recorded since the last one.
// Node and user changes between policy changes are coalesced; a session
// that attached in the middle of such a run gets only what came after its
// snapshot.
func (h *Hub) deliver(batch []event) {
	now := h.opts.Now()
	var seg []event
	type mark struct {
		s   *Session
		pos int
		gen uint64
	}
	var marks []mark
	flush := func() {
		if len(seg) > 0 {
			h.deliverSeg(seg, nil, now)
		}
		// Sessions that attached within the run: the changes after their
		// snapshot, then they join. A session that took a new snapshot
		// within the run counts from its last one; one that took a new
		// snapshot the hub has not reached yet (a resync, or a lazy
		// first snapshot, racing this round) stays held: every change
		// of this run is in that snapshot, and it gets the changes after
		// it when the hub reaches its attach.
		last := make(map[*Session]int, len(marks))
		for i, m := range marks {
			last[m.s] = i
		}
		h.mu.Lock()
		for _, m := range marks {
			h.addLocked(m.s)
		}
		h.mu.Unlock()
		byPos := map[int][]*Session{}
		for i, m := range marks {
			if last[m.s] != i {
				continue
			}
			m.s.mu.Lock()
			current := m.gen == m.s.gen
			if current {
				m.s.held.Store(false)
			}
			m.s.mu.Unlock()
			if current && m.pos < len(seg) {
				byPos[m.pos] = append(byPos[m.pos], m.s)
			}
		}
		for pos, ss := range byPos {
			h.deliverSeg(seg[pos:], ss, now)
		}
		seg, marks = seg[:0], marks[:0]
	}
	for _, e := range batch {
		switch {
		case e.synced != nil:
			flush()
			close(e.synced)
		case e.attach != nil:
			// A re-attach (resync) of a registered session must not get
			// this run's earlier changes: leave it out of the shared pass.
			marks = append(marks, mark{e.attach, len(seg), e.gen})
			h.mu.Lock()
			if set := h.sessions[e.attach.NodeID]; set != nil {
				if _, ok := set[e.attach]; ok {
					e.attach.held.Store(true)
				}
			}
			h.mu.Unlock()
		case e.c.Kind == state.PolicyChanged:
			flush()
			h.applyPolicy(e.c, now)
		default:
			seg = append(seg, e)
		}
	}
	flush()
}

// deliverSeg queues the coalesced frames of evs on every registered
// session (only), or on the given sessions.
func (h *Hub) deliverSeg(evs []event, only []*Session, now time.Time) {
	a := aggregate(evs)
	var bframes []*frame
	for _, b := range a.bcasts {
		bframes = append(bframes, h.encode(KindDelta, a.at, b))
	}
	frames := map[string]*frame{}
	var key []byte
	one := func(s *Session) {
		if s.held.Load() && only == nil {
			return
		}
		if n := a.nodes[s.NodeID]; n != nil && n.removed {
			s.end("node deleted")
			return
		}
		for i, f := range bframes {
			if d := s.certDomain.Load(); d != nil && a.bcasts[i].DNSConfig != nil {
				// The DNS configuration carries the node's own
				// certificate domain: a frame of its own.
				b := *a.bcasts[i]
				b.DNSConfig = h.m.withCertDomain(b.DNSConfig, *d)
				f = h.encode(KindDelta, a.at, &b)
			}
			s.push(f)
		}
		if len(a.order) == 0 && len(a.users) == 0 {
			return
		}
		var self bool
		key, self = a.view(s.NodeID, key[:0])
		f, ok := frames[string(key)]
		if !ok {
			var selfNode *state.Node
			if self {
				selfNode = a.nodes[s.NodeID].node
			}
			f = h.build(a, key, selfNode, now)
			frames[string(key)] = f
		}
		if self {
			s.noteSelf(a.nodes[s.NodeID].node)
		}
		if f != nil {
			s.push(f)
		}
	}
	// Under the lock, so no session is detached while frames are pushed
	// on it (its behind count would outlive it).
	h.mu.Lock()
	defer h.mu.Unlock()
	if only != nil {
		for _, s := range only {
			if !s.detached {
				one(s)
			}
		}
		return
	}
	for _, set := range h.sessions {
		for s := range set {
			one(s)
		}
	}
}
