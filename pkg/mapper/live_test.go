package mapper

// Live equals fresh: a session's view of the tailnet, accumulated from
// every frame its stream received and merged the way tailscaled merges
// them, must equal the full map a new session of the same node would get.
// liveWorld drives the real state owner (real SQLite store) and a real hub
// with sessions served the same way pkg/control serves them.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
	"tailscale.com/types/opt"
	"tailscale.com/util/zstdframe"
)

// netView is what a client knows after applying map responses, merged as
// tailscale.com/control/controlclient's mapSession merges them: Peers (when
// not empty) replaces every peer, otherwise PeersRemoved, PeersChanged,
// PeerSeenChange, OnlineChange and PeersChangedPatch apply in that order
// (a patch for an unknown peer is dropped); a nil field means "unchanged";
// packet filters are named chunks ("*": nil clears all, a nil chunk
// deletes it) concatenated in name order.
type netView struct {
	self     *tailcfg.Node
	peers    map[tailcfg.NodeID]*tailcfg.Node
	profiles map[tailcfg.UserID]tailcfg.UserProfile
	filters  map[string][]tailcfg.FilterRule
	ssh      *tailcfg.SSHPolicy
	dns      *tailcfg.DNSConfig
	derp     *tailcfg.DERPMap
	domain   string
	collect  opt.Bool
	frames   int
	// marker is the newest test marker received (see liveWorld.check).
	marker int
}

func newNetView() *netView {
	return &netView{peers: map[tailcfg.NodeID]*tailcfg.Node{}, profiles: map[tailcfg.UserID]tailcfg.UserProfile{}}
}

func (v *netView) apply(r *tailcfg.MapResponse) {
	v.frames++
	if len(r.Health) == 1 && strings.HasPrefix(r.Health[0], markerPrefix) {
		v.marker, _ = strconv.Atoi(strings.TrimPrefix(r.Health[0], markerPrefix))
		return
	}
	if len(r.Peers) > 0 {
		clear(v.peers)
		for _, n := range r.Peers {
			v.peers[n.ID] = n
		}
	} else {
		for _, id := range r.PeersRemoved {
			delete(v.peers, id)
		}
		for _, n := range r.PeersChanged {
			v.peers[n.ID] = n
		}
		for id, seen := range r.PeerSeenChange {
			if n, ok := v.peers[id]; ok {
				c := *n
				if seen {
					t := time.Now()
					c.LastSeen = &t
				} else {
					c.LastSeen = nil
				}
				v.peers[id] = &c
			}
		}
		for id, online := range r.OnlineChange {
			if n, ok := v.peers[id]; ok {
				c := *n
				c.Online = &online
				v.peers[id] = &c
			}
		}
		for _, pc := range r.PeersChangedPatch {
			n, ok := v.peers[pc.NodeID]
			if !ok {
				continue
			}
			c := *n
			if pc.DERPRegion != 0 {
				c.HomeDERP = pc.DERPRegion
			}
			if pc.Cap != 0 {
				c.Cap = pc.Cap
			}
			if pc.Endpoints != nil {
				c.Endpoints = pc.Endpoints
			}
			if pc.Key != nil {
				c.Key = *pc.Key
			}
			if pc.DiscoKey != nil {
				c.DiscoKey = *pc.DiscoKey
			}
			if pc.Online != nil {
				o := *pc.Online
				c.Online = &o
			}
			if pc.LastSeen != nil {
				t := *pc.LastSeen
				c.LastSeen = &t
			}
			if pc.KeyExpiry != nil {
				c.KeyExpiry = *pc.KeyExpiry
			}
			if pc.KeySignature != nil {
				c.KeySignature = pc.KeySignature
			}
			if pc.CapMap != nil {
				c.CapMap = pc.CapMap
			}
			v.peers[pc.NodeID] = &c
		}
	}
	if r.Node != nil {
		v.self = r.Node
	}
	for _, p := range r.UserProfiles {
		v.profiles[p.ID] = p
	}
	if r.DERPMap != nil {
		v.derp = r.DERPMap
	}
	if r.PacketFilter != nil {
		if v.filters == nil {
			v.filters = map[string][]tailcfg.FilterRule{}
		}
		v.filters["base"] = r.PacketFilter
	}
	if r.PacketFilters != nil {
		if f, ok := r.PacketFilters["*"]; ok && f == nil {
			v.filters = nil
		}
		for k, f := range r.PacketFilters {
			if k == "*" {
				continue
			}
			if f != nil {
				if v.filters == nil {
					v.filters = map[string][]tailcfg.FilterRule{}
				}
				v.filters[k] = f
			} else {
				delete(v.filters, k)
			}
		}
	}
	if r.DNSConfig != nil {
		v.dns = r.DNSConfig
	}
	if r.SSHPolicy != nil {
		v.ssh = r.SSHPolicy
	}
	if r.Domain != "" {
		v.domain = r.Domain
	}
	if _, ok := r.CollectServices.Get(); ok {
		v.collect = r.CollectServices
	}
}

// normPeer drops what legitimately differs between a patched peer and a
// fresh one: LastSeen of an online peer (a fresh map omits it; the online
// patch leaves the old one).
func normPeer(n *tailcfg.Node) *tailcfg.Node {
	c := *n
	if c.Online != nil && *c.Online {
		c.LastSeen = nil
	}
	return &c
}

// normSelf drops from the self node what the node reported itself and its
// peers are told by patch (endpoints, DERP, disco key, capability version,
// host info, online status): the client knows those better than control,
// and the server does not echo them back.
func normSelf(n *tailcfg.Node) *tailcfg.Node {
	if n == nil {
		return nil
	}
	c := *normPeer(n)
	c.Endpoints, c.HomeDERP, c.DiscoKey, c.Cap = nil, 0, key.DiscoPublic{}, 0
	c.Hostinfo = tailcfg.HostinfoView{}
	c.Online, c.LastSeen = nil, nil
	return &c
}

func jsonOf(x any) string {
	b, err := json.Marshal(x)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// diff describes how live differs from fresh ("" when it does not).
func (live *netView) diff(fresh *netView) string {
	var out []string
	add := func(what string, l, f any) {
		if ls, fs := jsonOf(l), jsonOf(f); ls != fs {
			out = append(out, fmt.Sprintf("%s:\n  live:  %s\n  fresh: %s", what, ls, fs))
		}
	}
	add("self node", normSelf(live.self), normSelf(fresh.self))
	ids := map[tailcfg.NodeID]bool{}
	for id := range live.peers {
		ids[id] = true
	}
	for id := range fresh.peers {
		ids[id] = true
	}
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		l, f := live.peers[id], fresh.peers[id]
		switch {
		case l == nil:
			out = append(out, fmt.Sprintf("peer %d: missing from the live view", id))
		case f == nil:
			out = append(out, fmt.Sprintf("peer %d: in the live view, not in a fresh map", id))
		default:
			add(fmt.Sprintf("peer %d", id), normPeer(l), normPeer(f))
		}
	}
	users := map[tailcfg.UserID]bool{}
	if fresh.self != nil {
		users[fresh.self.User] = true
	}
	for _, n := range fresh.peers {
		users[n.User] = true
	}
	for _, u := range slices.Sorted(maps.Keys(users)) {
		lp, lok := live.profiles[u]
		fp, fok := fresh.profiles[u]
		if lok != fok || jsonOf(lp) != jsonOf(fp) {
			add(fmt.Sprintf("user profile %d", u), lp, fp)
		}
	}
	add("packet filter", concatFilters(live.filters), concatFilters(fresh.filters))
	add("SSH policy", normSSH(live.ssh), normSSH(fresh.ssh))
	add("DNS config", live.dns, fresh.dns)
	add("DERP map", live.derp, fresh.derp)
	add("domain", live.domain, fresh.domain)
	return strings.Join(out, "\n")
}

func concatFilters(m map[string][]tailcfg.FilterRule) []tailcfg.FilterRule {
	out := []tailcfg.FilterRule{}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, m[k]...)
	}
	return out
}

func normSSH(p *tailcfg.SSHPolicy) *tailcfg.SSHPolicy {
	if p == nil || len(p.Rules) == 0 {
		return nil
	}
	return p
}

// viewWriter is a session's stream: it decodes every frame and applies it
// to the session's view. While blocked, writes wait (a client that stopped
// reading).
type viewWriter struct {
	zstd bool
	mu   sync.Mutex
	cond *sync.Cond
	buf  []byte
	view *netView
	err  error
	// last holds the newest frames, for failure reports.
	last []string

	blocked bool
}

func newViewWriter(zstd bool) *viewWriter {
	w := &viewWriter{zstd: zstd, view: newNetView()}
	w.cond = sync.NewCond(&w.mu)
	return w
}

func (w *viewWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.blocked {
		w.cond.Wait()
	}
	w.buf = append(w.buf, b...)
	for len(w.buf) >= 4 {
		n := int(binary.LittleEndian.Uint32(w.buf))
		if len(w.buf) < 4+n {
			break
		}
		payload := w.buf[4 : 4+n]
		if w.zstd {
			var err error
			if payload, err = zstdframe.AppendDecode(nil, payload); err != nil {
				w.err = fmt.Errorf("decompressing a frame: %w", err)
				return 0, w.err
			}
		}
		var m tailcfg.MapResponse
		if err := json.Unmarshal(payload, &m); err != nil {
			w.err = fmt.Errorf("decoding a frame: %w", err)
			return 0, w.err
		}
		w.buf = w.buf[4+n:]
		if len(w.last) == 8 {
			w.last = w.last[1:]
		}
		w.last = append(w.last, trimFrame(payload))
		if !m.KeepAlive {
			w.view.apply(&m)
		}
	}
	return len(b), nil
}
func (w *viewWriter) Flush() error                     { return nil }
func (w *viewWriter) SetWriteDeadline(time.Time) error { return nil }

func (w *viewWriter) setBlocked(b bool) {
	w.mu.Lock()
	w.blocked = b
	w.mu.Unlock()
	w.cond.Broadcast()
}

// liveSession is one open map stream of the world.
type liveSession struct {
	id     ids.NodeID
	sess   *Session
	w      *viewWriter
	cancel context.CancelFunc
	done   chan struct{}
	err    error
	// slowFor counts the steps its writer stays blocked.
	slowFor int
}

// liveWorld is a tailnet on the real state owner and hub.
type liveWorld struct {
	t     testing.TB
	ctx   context.Context
	st    *state.State
	hub   *Hub
	m     *Mapper
	users map[string]ids.UserID
	dns   atomic.Pointer[tailcfg.DNSConfig]
	sess  []*liveSession
	steps int
	// marker numbers the markers check broadcasts.
	marker int
}

// markerPrefix starts the Health message of a marker frame.
const markerPrefix = "live-marker "

// settle waits until every session that is reading has written every
// frame queued for it before now: a marker broadcast after the hub
// delivered everything has reached it (frames are written in order). A
// session that was between a resync snapshot and its attach drops the
// marker, so it is sent again until every session has one.
func (w *liveWorld) settle(what string) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	if err := w.hub.Sync(ctx); err != nil {
		w.t.Fatalf("step %d (%s): hub sync: %v", w.steps, what, err)
	}
	w.marker++
	want := w.marker
	for attempt := 0; ; attempt++ {
		w.hub.Broadcast(&tailcfg.MapResponse{Health: []string{markerPrefix + strconv.Itoa(w.marker)}})
		// Longer than a round can take (MaxRoundGap and its rest): sent
		// again while the last one is on its way, markers would pile up
		// in one round and overflow queues.
		deadline := time.Now().Add(time.Second)
		for {
			missing := 0
			for _, s := range w.sess {
				s.w.mu.Lock()
				got := s.w.view.marker
				s.w.mu.Unlock()
				select {
				case <-s.done:
					continue
				default:
				}
				if s.slowFor == 0 && got < want {
					missing++
				}
			}
			if missing == 0 {
				return
			}
			if time.Now().After(deadline) {
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
		if attempt == 10 {
			var stuck []string
			for _, s := range w.sess {
				s.w.mu.Lock()
				got, frames, blocked := s.w.view.marker, s.w.view.frames, s.w.blocked
				s.w.mu.Unlock()
				if s.slowFor == 0 && got < want {
					w.hub.mu.Lock()
					_, registered := w.hub.sessions[s.id][s.sess]
					w.hub.mu.Unlock()
					s.sess.mu.Lock()
					gen := s.sess.gen
					s.sess.mu.Unlock()
					stuck = append(stuck, fmt.Sprintf("node %d gen %d (frames %d, blocked %v, held %v, resync %v, queued %d, registered %v)",
						s.id, gen, frames, blocked, s.sess.held.Load(), s.sess.resync.Load(), len(s.sess.queue), registered))
				}
			}
			w.hub.pmu.Lock()
			var pend []string
			for _, e := range w.hub.pending {
				switch {
				case e.attach != nil:
					pend = append(pend, fmt.Sprintf("attach %d gen %d", e.attach.NodeID, e.gen))
				case e.bcast != nil:
					pend = append(pend, "bcast")
				case e.synced != nil:
					pend = append(pend, "sync")
				default:
					pend = append(pend, e.c.Kind.String())
				}
			}
			w.hub.pmu.Unlock()
			w.t.Logf("pending: %v", pend)
			w.t.Fatalf("step %d (%s): sessions stopped taking frames: %s", w.steps, what, strings.Join(stuck, "; "))
		}
		w.marker++
	}
}

type liveOptions struct {
	queueSize int
	lazyPeers int
	// requireApproval is node.require_approval.
	requireApproval bool
}

func newLiveWorld(t testing.TB, o liveOptions) *liveWorld {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &liveWorld{t: t, ctx: ctx, users: map[string]ids.UserID{}}
	st, err := store.Open(ctx, store.Options{Path: filepath.Join(t.TempDir(), "db.sqlite"), WAL: true})
	if err != nil {
		t.Fatal(err)
	}
	alloc := ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), ipalloc.Sequential)
	w.st, err = state.New(ctx, state.Options{Store: st, Alloc: alloc, ServerURL: "https://hs.test", RequireApproval: o.requireApproval})
	if err != nil {
		t.Fatal(err)
	}
	w.dns.Store(DNSConfig(DNSSettings{MagicDNS: true, BaseDomain: "ts.test", Global: []string{"1.1.1.1"}}))
	derp := &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{
		1: {RegionID: 1, RegionCode: "a", Nodes: []*tailcfg.DERPNode{{Name: "1a", RegionID: 1, HostName: "127.0.0.1"}}},
	}}
	w.m = New(Options{BaseDomain: "ts.test", DNS: w.dns.Load, DERPMap: func() *tailcfg.DERPMap { return derp }})
	w.hub = NewHub(w.m, HubOptions{QueueSize: o.queueSize, LazySnapshotPeers: o.lazyPeers, MinRoundGap: 50 * time.Microsecond, RoundCost: time.Microsecond, MaxRoundGap: 5 * time.Millisecond})
	w.st.SetSink(w.hub)
	t.Cleanup(func() {
		for _, s := range w.sess {
			s.w.setBlocked(false)
			s.cancel()
			<-s.done
		}
		w.hub.Close()
		cancel()
		st.Close()
	})
	for _, u := range []store.User{
		{Name: "alice", Email: "alice@example.com"}, {Name: "bob", Email: "bob@example.com"},
		{Name: "carol", Email: "carol@example.org"}, {Name: "dave"},
	} {
		nu, err := w.st.CreateUser(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		w.users[u.Name] = nu.ID
	}
	return w
}

// register adds a node owned by user, or tagged when tags are given,
// advertising routes.
func (w *liveWorld) register(name, user string, tags []string, routes ...string) (*state.Node, error) {
	k := store.PreAuthKey{Reusable: true, Tags: tags}
	if len(tags) == 0 {
		uid := w.users[user]
		k.UserID = &uid
	}
	var rs []netip.Prefix
	for _, r := range routes {
		rs = append(rs, netip.MustParsePrefix(r))
	}
	return w.st.RegisterWithKey(w.ctx, state.RegisterParams{
		Machine:  key.NewMachine().Public(),
		NodeKey:  key.NewNode().Public(),
		Hostinfo: &tailcfg.Hostinfo{Hostname: name, RoutableIPs: rs},
		Cap:      tailcfg.CurrentCapabilityVersion,
		Key:      k,
	})
}

// connect opens a map stream for node id, as pkg/control does.
func (w *liveWorld) connect(id ids.NodeID, zstd bool) error {
	sess := w.hub.NewSession(id, zstd, false)
	if err := w.st.Connect(id, sess.Attach); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(w.ctx)
	ls := &liveSession{id: id, sess: sess, w: newViewWriter(zstd), cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(ls.done)
		ls.err = sess.Serve(ctx, ls.w, ServeOptions{Resync: w.st.Resync})
		w.hub.Detach(sess)
		w.st.Disconnect(id)
	}()
	w.sess = append(w.sess, ls)
	return nil
}

// disconnect ends session i the way a client closing its stream does.
func (w *liveWorld) disconnect(i int) {
	s := w.sess[i]
	s.w.setBlocked(false)
	s.cancel()
	<-s.done
	w.sess = slices.Delete(w.sess, i, i+1)
}

// reap forgets sessions the server ended (their node was deleted) and
// fails on any other end.
func (w *liveWorld) reap() {
	w.t.Helper()
	var restart []*liveSession
	kept := w.sess[:0]
	for _, s := range w.sess {
		select {
		case <-s.done:
			if errors.Is(s.err, errNoPeersResync) {
				restart = append(restart, s)
				continue
			}
			// A deleted node's stream ends: by the hub, or by a resync
			// that finds the node gone.
			if !errors.Is(s.err, ErrEnded) && !errors.Is(s.err, state.ErrNodeNotFound) {
				w.t.Fatalf("step %d: session of node %d ended: %v", w.steps, s.id, s.err)
			}
			if _, ok := w.st.Node(s.id); ok {
				w.t.Fatalf("step %d: session of node %d ended though the node exists (%s)", w.steps, s.id, s.sess.Reason())
			}
			continue
		default:
		}
		kept = append(kept, s)
	}
	w.sess = kept
	// A client whose stream the server ended for a resync without peers
	// starts over, as tailscaled does.
	for _, s := range restart {
		if err := w.connect(s.id, s.w.zstd); err != nil && !errors.Is(err, state.ErrNodeNotFound) {
			w.t.Fatalf("step %d: reconnecting node %d: %v", w.steps, s.id, err)
		}
	}
}

// fresh is the view a new session of node id would start from.
func (w *liveWorld) fresh(id ids.NodeID) (*netView, bool) {
	var snap state.Snapshot
	if err := w.st.Resync(id, func(s state.Snapshot) { snap = s }); err != nil {
		return nil, false
	}
	now := time.Now()
	resp := w.m.fullResponse(snap, now)
	for _, p := range snap.Peers {
		resp.Peers = append(resp.Peers, w.m.PeerNode(p, now))
	}
	// Through JSON, as a client receives it.
	b, err := json.Marshal(resp)
	if err != nil {
		w.t.Fatal(err)
	}
	var dec tailcfg.MapResponse
	if err := json.Unmarshal(b, &dec); err != nil {
		w.t.Fatal(err)
	}
	v := newNetView()
	v.apply(&dec)
	return v, true
}

// check waits until every session that is reading has received what was
// changed so far (settle) and fails, with the differences, unless its view
// equals a fresh map of its node.
func (w *liveWorld) check(what string) {
	w.t.Helper()
	// A stream the server ends during settle (a resync with no peers)
	// is restarted by reap, and the new one settles too.
	for {
		w.reap()
		w.settle(what)
		ended := false
		for _, s := range w.sess {
			select {
			case <-s.done:
				ended = true
			default:
			}
		}
		if !ended {
			break
		}
	}
	fresh := map[ids.NodeID]*netView{}
	for _, s := range w.sess {
		if s.slowFor > 0 {
			continue
		}
		f, ok := fresh[s.id]
		if !ok {
			if f, ok = w.fresh(s.id); !ok {
				continue // deleted; its session ends
			}
			fresh[s.id] = f
		}
		s.w.mu.Lock()
		d, err, last := s.w.view.diff(f), s.w.err, strings.Join(s.w.last, "\n  ")
		s.w.mu.Unlock()
		if err != nil {
			w.t.Fatalf("step %d (%s): node %d's stream: %v", w.steps, what, s.id, err)
		}
		if d != "" {
			w.t.Fatalf("step %d (%s): node %d's live view differs from a fresh map:\n%s\nits newest frames:\n  %s", w.steps, what, s.id, d, last)
		}
	}
}

// liveIDs is every node ID, in order.
func (w *liveWorld) liveIDs() []ids.NodeID {
	var out []ids.NodeID
	for _, n := range w.st.Nodes() {
		out = append(out, n.ID)
	}
	return out
}

func mustPolicy(t testing.TB, src string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse([]byte(src))
	if err != nil {
		t.Fatalf("policy: %v\n%s", err, src)
	}
	return p
}

// setPolicy puts p in force the way the server's policy reload does:
// SetPolicy, then autoApprovers for every node.
func (w *liveWorld) setPolicy(p *policy.Policy) error {
	if _, err := w.st.SetPolicy(p, true); err != nil {
		return err
	}
	return w.st.AutoApproveAll(w.ctx)
}

// trimFrame shortens a frame for a failure report.
func trimFrame(b []byte) string {
	const most = 1500
	if len(b) > most {
		return string(b[:most]) + "…"
	}
	return string(b)
}

// compact returns s with its indentation removed, for error messages.
func compact(s string) string {
	var b bytes.Buffer
	if json.Compact(&b, []byte(s)) != nil {
		return s
	}
	return b.String()
}
