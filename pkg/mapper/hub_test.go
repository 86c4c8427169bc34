package mapper

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
	"tailscale.com/util/zstdframe"
)

// recorder is a FrameWriter that decodes every frame it is given.
type recorder struct {
	zstd   bool
	mu     sync.Mutex
	buf    []byte
	frames []tailcfg.MapResponse
}

func (r *recorder) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf = append(r.buf, b...)
	for len(r.buf) >= 4 {
		n := int(binary.LittleEndian.Uint32(r.buf))
		if len(r.buf) < 4+n {
			break
		}
		payload := r.buf[4 : 4+n]
		if r.zstd {
			var err error
			if payload, err = zstdframe.AppendDecode(nil, payload); err != nil {
				panic(err)
			}
		}
		var m tailcfg.MapResponse
		if err := json.Unmarshal(payload, &m); err != nil {
			panic(err)
		}
		r.frames = append(r.frames, m)
		r.buf = r.buf[4+n:]
	}
	return len(b), nil
}
func (r *recorder) Flush() error                     { return nil }
func (r *recorder) SetWriteDeadline(time.Time) error { return nil }

func (r *recorder) snapshot() []tailcfg.MapResponse {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]tailcfg.MapResponse(nil), r.frames...)
}

func testNode(id ids.NodeID) *state.Node {
	return &state.Node{
		ID: id, NodeKey: key.NewNode().Public(), MachineKey: key.NewMachine().Public(),
		GivenName: "n" + string(rune('0'+id)), UserID: 1,
		IPv4: netip.AddrFrom4([4]byte{100, 64, 0, byte(id)}),
	}
}

// wantCount is nil when got is want, for tstest.WaitFor.
func wantCount(what string, got, want int) error {
	if got != want {
		return fmt.Errorf("%d %s, want %d", got, what, want)
	}
	return nil
}

func TestSlowSessionIsResyncedAndDelaysNoOne(t *testing.T) {
	users := map[ids.UserID]*state.User{1: {ID: 1, Name: "u"}}
	n1, n2, n3 := testNode(1), testNode(2), testNode(3)
	hub := NewHub(New(Options{BaseDomain: "ts.test"}), HubOptions{QueueSize: 4})
	t.Cleanup(hub.Close)

	slow := hub.NewSession(1, false, false)
	slow.Attach(state.Snapshot{Self: n1, Peers: []*state.Node{n2, n3}, Users: users})
	fast := hub.NewSession(2, true, false)
	fast.Attach(state.Snapshot{Self: n2, Peers: []*state.Node{n1, n3}, Users: users})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fastRec := &recorder{zstd: true}
	go fast.Serve(ctx, fastRec, ServeOptions{})
	tstest.WaitFor(t, 10*time.Second, "fast session's full map", func() error { return wantCount("maps", len(fastRec.snapshot()), 1) })

	// Node 3 changes 100 times while node 1's session reads nothing. The
	// fast session receives each change while the slow one's queue is full.
	const changes = 100
	patches := func() int {
		got := 0
		for _, f := range fastRec.snapshot() {
			got += len(f.PeersChangedPatch)
		}
		return got
	}
	for i := 1; i <= changes; i++ {
		online := i%2 == 0
		hub.Apply(state.Change{Kind: state.NodePatched, Node: n3, At: time.Now(),
			Patch: &tailcfg.PeerChange{NodeID: 3, DERPRegion: i, Online: &online}})
		syncHub(hub)
		tstest.WaitFor(t, 10*time.Second, "patch on the fast session", func() error { return wantCount("patches", patches(), i) })
	}
	last := 0
	for _, f := range fastRec.snapshot()[1:] {
		for _, p := range f.PeersChangedPatch {
			if p.DERPRegion != last+1 {
				t.Fatalf("patch %d after %d: out of order or lost", p.DERPRegion, last)
			}
			last = p.DERPRegion
		}
	}
	if !slow.resync.Load() {
		t.Fatal("slow session was not marked for resync")
	}

	// When the slow session is served, it starts over from a fresh snapshot:
	// its initial full map and then a resync full map, never a stale backlog.
	n3now := n3
	resyncs := 0
	slowRec := &recorder{}
	go slow.Serve(ctx, slowRec, ServeOptions{Resync: func(id ids.NodeID, attach func(state.Snapshot)) error {
		resyncs++
		attach(state.Snapshot{Self: n1, Peers: []*state.Node{n2, n3now}, Users: users})
		return nil
	}})
	tstest.WaitFor(t, 10*time.Second, "slow session's resync", func() error { return wantCount("maps", min(len(slowRec.snapshot()), 2), 2) })
	frames := slowRec.snapshot()
	if len(frames[0].Peers) != 2 || len(frames[1].Peers) != 2 {
		t.Fatalf("want two full maps, got %d frames (peers %d, %d)", len(frames), len(frames[0].Peers), len(frames[1].Peers))
	}
	if resyncs != 1 || slow.resync.Load() {
		t.Fatalf("resyncs = %d, flag %v", resyncs, slow.resync.Load())
	}
	// After the resync, deltas flow again.
	hub.Apply(state.Change{Kind: state.NodeRemoved, Node: n3, At: time.Now()})
	syncHub(hub)
	tstest.WaitFor(t, 10*time.Second, "removal after resync", func() error {
		f := slowRec.snapshot()
		return wantCount("removed peers in the last map", len(f[len(f)-1].PeersRemoved), 1)
	})
}

func TestChangeGoesOnlyToOthers(t *testing.T) {
	users := map[ids.UserID]*state.User{1: {ID: 1, Name: "u"}}
	n1, n2 := testNode(1), testNode(2)
	hub := NewHub(New(Options{}), HubOptions{})
	t.Cleanup(hub.Close)
	s1 := hub.NewSession(1, false, false)
	s1.Attach(state.Snapshot{Self: n1, Peers: []*state.Node{n2}, Users: users})
	s2 := hub.NewSession(2, false, false)
	s2.Attach(state.Snapshot{Self: n2, Peers: []*state.Node{n1}, Users: users})
	n1b := *n1
	n1b.Hostname = "renamed"
	hub.Apply(state.Change{Kind: state.NodeUpdated, Node: &n1b, Self: true, At: time.Now()})
	syncHub(hub)
	if len(s2.queue) != 1 || len(s1.queue) != 1 {
		t.Fatalf("queues: self %d, peer %d; want 1 each", len(s1.queue), len(s2.queue))
	}
	var self, peer tailcfg.MapResponse
	json.Unmarshal((<-s1.queue).json, &self)
	json.Unmarshal((<-s2.queue).json, &peer)
	if self.Node == nil || len(self.PeersChanged) != 0 {
		t.Fatalf("self got %+v", self)
	}
	if len(peer.PeersChanged) != 1 || peer.Node != nil {
		t.Fatalf("peer got %+v", peer)
	}
	hub.Apply(state.Change{Kind: state.NodeRemoved, Node: n1, At: time.Now()})
	syncHub(hub)
	select {
	case <-s1.Done():
	default:
		t.Fatal("deleted node's session was not ended")
	}
}

// syncHub waits until the hub has queued everything applied so far.
func syncHub(h *Hub) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.Sync(ctx); err != nil {
		panic(err)
	}
}

// TestBehindCountSettles: the hub's count of sessions with frames queued
// (which paces rounds) returns to zero once every writer has caught up,
// after many rounds racing busy writers, queues that overflow into
// resyncs, and sessions detached while frames are in flight. A count that
// drifted up would make every later round wait its longest.
func TestBehindCountSettles(t *testing.T) {
	users := map[ids.UserID]*state.User{1: {ID: 1, Name: "u"}}
	const n = 40
	nodes := make([]*state.Node, n+1)
	for i := 1; i <= n; i++ {
		nodes[i] = testNode(ids.NodeID(i))
	}
	snap := func(id ids.NodeID) state.Snapshot {
		var peers []*state.Node
		for i := 1; i <= n; i++ {
			if ids.NodeID(i) != id {
				peers = append(peers, nodes[i])
			}
		}
		return state.Snapshot{Self: nodes[id], Peers: peers, Users: users}
	}
	hub := NewHub(New(Options{}), HubOptions{QueueSize: 2, MinRoundGap: time.Microsecond, RoundCost: time.Nanosecond})
	defer hub.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	serve := func(id ids.NodeID) (*Session, context.CancelFunc) {
		s := hub.NewSession(id, false, false)
		s.Attach(snap(id))
		sctx, scancel := context.WithCancel(ctx)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Serve(sctx, &recorder{}, ServeOptions{Resync: func(id ids.NodeID, attach func(state.Snapshot)) error {
				attach(snap(id))
				return nil
			}})
			hub.Detach(s)
		}()
		return s, scancel
	}
	var stops []context.CancelFunc
	for i := 1; i <= n; i++ {
		_, stop := serve(ids.NodeID(i))
		stops = append(stops, stop)
	}
	for round := range 400 {
		id := ids.NodeID(round%n + 1)
		hub.Apply(state.Change{Kind: state.NodePatched, Node: nodes[id], At: time.Now(),
			Patch: &tailcfg.PeerChange{NodeID: tailcfg.NodeID(id), DERPRegion: round}})
		if round%40 == 39 {
			// A session ends and another starts for the same node.
			k := round / 40
			stops[k]()
			_, stops[k] = serve(ids.NodeID(k + 1))
		}
	}
	syncHub(hub)
	tstest.WaitFor(t, 10*time.Second, "every session's queue to drain", func() error { return wantCount("sessions behind", int(hub.behind.Load()), 0) })
	cancel()
	wg.Wait()
	if b := hub.behind.Load(); b != 0 {
		t.Fatalf("behind = %d after every session ended", b)
	}
}
