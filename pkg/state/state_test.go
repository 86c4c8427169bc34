package state

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/store"
)

// blockingSink stands in for a delivery path that can wedge.
type blockingSink struct {
	mu    sync.Mutex
	beats int
}

func (b *blockingSink) Apply(c Change) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c.Kind == Heartbeat {
		b.beats++
	}
}

func newTestState(t *testing.T) *State {
	t.Helper()
	return newTestStateWith(t, nil)
}

// newTestStateWith is newTestState with the store's options changed by
// mod first (nil: none).
func newTestStateWith(t *testing.T, mod func(*store.Options)) *State {
	t.Helper()
	ctx := context.Background()
	opts := testStoreOptions(t)
	if mod != nil {
		mod(&opts)
	}
	st, err := store.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	alloc := ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), ipalloc.Sequential)
	s, err := New(ctx, Options{Store: st, Alloc: alloc})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func beat(s *State, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return s.Heartbeat(ctx)
}

// TestHeartbeat shows the watchdog's heartbeat passing while the loop runs
// and failing, within its deadline, when the loop, the state lock or the
// sink is stalled on purpose.
func TestHeartbeat(t *testing.T) {
	s := newTestState(t)
	sink := &blockingSink{}
	s.SetSink(sink)

	if err := beat(s, 200*time.Millisecond); err == nil {
		t.Fatal("heartbeat succeeded with no loop running")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	if err := beat(s, 5*time.Second); err != nil {
		t.Fatalf("heartbeat with a running loop: %v", err)
	}
	if sink.beats != 1 {
		t.Fatalf("sink saw %d heartbeats", sink.beats)
	}

	for name, stall := range map[string]*sync.Mutex{"state lock": &s.mu, "sink": &sink.mu} {
		stall.Lock()
		err := beat(s, 200*time.Millisecond)
		stall.Unlock()
		if err == nil {
			t.Fatalf("heartbeat succeeded with the %s stalled", name)
		}
		if err := beat(s, 5*time.Second); err != nil {
			t.Fatalf("heartbeat after the %s recovered: %v", name, err)
		}
	}
}

// TestSnapshotPeersByID shows snapshots listing peers by ID, the newest
// version of each, after registrations, updates and deletions.
func TestSnapshotPeersByID(t *testing.T) {
	w := newRoutesWorld(t, "alice")
	var nodeIDs []ids.NodeID
	for i := range 12 {
		nodeIDs = append(nodeIDs, w.register(fmt.Sprintf("n%d", i), "alice", nil).ID)
	}
	for _, id := range []ids.NodeID{nodeIDs[3], nodeIDs[0], nodeIDs[11]} {
		if err := w.s.DeleteNode(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	w.advertise(nodeIDs[5], "10.0.0.0/24")
	for _, id := range []ids.NodeID{nodeIDs[1], nodeIDs[7]} {
		var snap Snapshot
		if err := w.s.Resync(id, func(s Snapshot) { snap = s }); err != nil {
			t.Fatal(err)
		}
		if len(snap.Peers) != 8 {
			t.Fatalf("node %d: %d peers, want 8", id, len(snap.Peers))
		}
		for i, p := range snap.Peers {
			if i > 0 && p.ID <= snap.Peers[i-1].ID {
				t.Fatalf("node %d: peers out of order: %d after %d", id, p.ID, snap.Peers[i-1].ID)
			}
			if cur, _ := w.s.Node(p.ID); cur != p {
				t.Fatalf("node %d: peer %d is not its current version", id, p.ID)
			}
		}
	}
}

// TestFlushPersistsEndpoints: endpoints and last-seen times kept in memory
// reach the database in Flush's batch, and a state loaded from it again
// has them.
func TestFlushPersistsEndpoints(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, testStoreOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	alloc := func() *ipalloc.Allocator {
		return ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), ipalloc.Sequential)
	}
	s, err := New(ctx, Options{Store: st, Alloc: alloc()})
	if err != nil {
		t.Fatal(err)
	}
	w := &routesWorld{t: t, s: s, log: &changeLog{}, users: map[string]ids.UserID{}}
	u, err := s.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	w.users["alice"] = u.ID
	var nodeIDs []ids.NodeID
	for i := range 3 {
		nodeIDs = append(nodeIDs, w.register(fmt.Sprintf("n%d", i), "alice", nil).ID)
	}
	want := map[ids.NodeID]netip.AddrPort{}
	for i, id := range nodeIDs {
		ep := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.7"), uint16(2000+i))
		want[id] = ep
		if err := s.ApplyMapUpdate(id, MapUpdate{Endpoints: []netip.AddrPort{ep}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	again, err := New(ctx, Options{Store: st, Alloc: alloc()})
	if err != nil {
		t.Fatal(err)
	}
	for id, ep := range want {
		n, ok := again.Node(id)
		if !ok || len(n.Endpoints) != 1 || n.Endpoints[0] != ep {
			t.Errorf("node %d after reload: %v, want [%v]", id, n.Endpoints, ep)
		}
	}
}

// TestFlushKeepsBatchOnFailure: a flush the store refuses drops nothing;
// the nodes stay pending for the next flush.
func TestFlushKeepsBatchOnFailure(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, testStoreOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	s, err := New(ctx, Options{Store: st, Alloc: ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), ipalloc.Sequential)})
	if err != nil {
		t.Fatal(err)
	}
	w := &routesWorld{t: t, s: s, log: &changeLog{}, users: map[string]ids.UserID{}}
	u, err := s.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	w.users["alice"] = u.ID
	for i := range 2 {
		id := w.register(fmt.Sprintf("n%d", i), "alice", nil).ID
		ep := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.7"), uint16(2000+i))
		if err := s.ApplyMapUpdate(id, MapUpdate{Endpoints: []netip.AddrPort{ep}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := s.Pending(); got != 2 {
		t.Fatalf("Pending = %d before the flush, want 2", got)
	}
	st.Close()
	if err := s.Flush(ctx); err == nil {
		t.Fatal("Flush on a closed store succeeded")
	}
	if got := s.Pending(); got != 2 {
		t.Fatalf("Pending = %d after a failed flush, want 2 (the batch was dropped)", got)
	}
}
