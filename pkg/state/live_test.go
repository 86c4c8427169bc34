package state

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// factQueue collects what a State publishes.
type factQueue struct {
	mu    sync.Mutex
	facts []LiveFact
	prims []Primary
}

func (q *factQueue) primary(p netip.Prefix, n ids.NodeID) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.prims = append(q.prims, Primary{Prefix: p, Node: n})
}

func (q *factQueue) takePrimaries() []Primary {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.prims
	q.prims = nil
	return out
}

func (q *factQueue) add(f LiveFact) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.facts = append(q.facts, f)
}

func (q *factQueue) take() []LiveFact {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.facts
	q.facts = nil
	return out
}

// liveServer is one of two clustered States over one store.
type liveServer struct {
	id  string
	s   *State
	out *factQueue
	log *changeLog
}

func newLiveServers(t *testing.T) (a, b *liveServer, st *store.Store) {
	t.Helper()
	return newLiveServersWith(t, nil)
}

// newLiveServersWith is newLiveServers with each State's options changed
// by mod (given "a" or "b") first.
func newLiveServersWith(t *testing.T, mod func(id string, o *Options)) (a, b *liveServer, st *store.Store) {
	t.Helper()
	st, err := store.Open(t.Context(), testStoreOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	open := func(id string) *liveServer {
		q := &factQueue{}
		alloc := ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), ipalloc.Sequential)
		o := Options{Store: st, Alloc: alloc, Publish: q.add, PublishPrimary: q.primary}
		if mod != nil {
			mod(id, &o)
		}
		s, err := New(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		l := &changeLog{}
		s.SetSink(l)
		return &liveServer{id: id, s: s, out: q, log: l}
	}
	return open("a"), open("b"), st
}

// ship applies what from published to to, and returns the changes to's
// sessions were told.
func ship(t *testing.T, from, to *liveServer) []Change {
	t.Helper()
	var cs []RemoteChange
	for _, f := range from.out.take() {
		cs = append(cs, RemoteChange{Origin: from.id, Live: &f})
	}
	for _, p := range from.out.takePrimaries() {
		cs = append(cs, RemoteChange{Origin: from.id, Primary: &p})
	}
	if err := to.s.ApplyRemote(t.Context(), cs); err != nil {
		t.Fatal(err)
	}
	return to.log.take()
}

// onlinePatches lists the Online values patched for node id, in order.
func onlinePatches(cs []Change, id ids.NodeID) []bool {
	var out []bool
	for _, c := range cs {
		if c.Kind == NodePatched && c.Node.ID == id && c.Patch.Online != nil {
			out = append(out, *c.Patch.Online)
		}
	}
	return out
}

func isOnline(t *testing.T, s *State, id ids.NodeID) bool {
	t.Helper()
	n, ok := s.Node(id)
	if !ok {
		t.Fatalf("node %d not found", id)
	}
	return n.Online
}

// TestPresenceAcrossServers: a node connected to one server is online,
// with what its client reports, for the other; moving to the other server
// does not take it offline for anyone; a report from a server it left is
// dropped; a server that is gone takes its nodes offline.
func TestPresenceAcrossServers(t *testing.T) {
	a, b, _ := newLiveServers(t)
	ctx := t.Context()
	u, err := a.s.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	uid := u.ID
	reg := func(name string) *Node {
		n, err := a.s.RegisterWithKey(ctx, RegisterParams{Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(),
			Hostinfo: &tailcfg.Hostinfo{Hostname: name}, Key: store.PreAuthKey{Reusable: true, UserID: &uid}})
		if err != nil {
			t.Fatal(err)
		}
		sn, err := a.s.st.GetNode(ctx, n.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.s.ApplyRemote(ctx, []RemoteChange{{User: userToStorePtr(t, a.s, uid)}, {Node: &sn, Registered: true}}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	n1, n2 := reg("one"), reg("two")
	b.log.take()

	// n1 connects to a: online on b.
	if err := a.s.Connect(n1.ID, func(Snapshot) {}); err != nil {
		t.Fatal(err)
	}
	if got := onlinePatches(ship(t, a, b), n1.ID); !slices.Equal(got, []bool{true}) {
		t.Errorf("b's sessions were patched %v for n1 connecting to a, want [true]", got)
	}
	if !isOnline(t, b.s, n1.ID) {
		t.Fatal("n1 is connected to a but offline on b")
	}

	// Its endpoints reach b as a patch.
	ep := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:41641")}
	if err := a.s.ApplyMapUpdate(n1.ID, MapUpdate{Endpoints: ep, DiscoKey: key.NewDisco().Public()}); err != nil {
		t.Fatal(err)
	}
	cs := ship(t, a, b)
	if n, _ := b.s.Node(n1.ID); !slices.Equal(n.Endpoints, ep) {
		t.Errorf("b holds endpoints %v for n1, want %v", n.Endpoints, ep)
	}
	if len(cs) != 1 || cs[0].Kind != NodePatched || !slices.Equal(cs[0].Patch.Endpoints, ep) {
		t.Errorf("b's sessions got %+v for an endpoint change, want one patch carrying it", cs)
	}

	// n1 moves to b: b's session begins, then a's ends. Nobody sees it go
	// offline.
	a.log.take()
	if err := b.s.Connect(n1.ID, func(Snapshot) {}); err != nil {
		t.Fatal(err)
	}
	if got := onlinePatches(ship(t, b, a), n1.ID); len(got) != 0 {
		t.Errorf("a's sessions were patched %v when n1 also connected to b", got)
	}
	a.s.Disconnect(n1.ID)
	if got := onlinePatches(a.log.take(), n1.ID); len(got) != 0 {
		t.Errorf("a's sessions were patched %v when n1 left a for b", got)
	}
	if !isOnline(t, a.s, n1.ID) {
		t.Error("n1 is connected to b but offline on a")
	}
	if got := onlinePatches(ship(t, a, b), n1.ID); len(got) != 0 {
		t.Errorf("b's sessions were patched %v when n1 left a", got)
	}
	// A late report from a, which n1 left, does not overwrite what b holds.
	stale := LiveFact{Node: n1.ID, Report: MapUpdate{Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.51.100.1:1")}}}
	if err := b.s.ApplyRemote(ctx, []RemoteChange{{Origin: a.id, Live: &stale}}); err != nil {
		t.Fatal(err)
	}
	if n, _ := b.s.Node(n1.ID); !slices.Equal(n.Endpoints, ep) {
		t.Errorf("a stale report from a replaced n1's endpoints on b: %v", n.Endpoints)
	}

	// n1 leaves b too: offline everywhere.
	b.s.Disconnect(n1.ID)
	if isOnline(t, b.s, n1.ID) {
		t.Error("n1 has no session anywhere but is online on b")
	}
	if got := onlinePatches(ship(t, b, a), n1.ID); !slices.Equal(got, []bool{false}) {
		t.Errorf("a's sessions were patched %v when n1 left b, want [false]", got)
	}

	// n2 connects to a, and a is declared gone: n2 goes offline on b.
	if err := a.s.Connect(n2.ID, func(Snapshot) {}); err != nil {
		t.Fatal(err)
	}
	ship(t, a, b)
	if !isOnline(t, b.s, n2.ID) {
		t.Fatal("n2 connected to a but offline on b")
	}
	if err := b.s.ApplyRemote(ctx, []RemoteChange{{ServerGone: a.id}}); err != nil {
		t.Fatal(err)
	}
	if isOnline(t, b.s, n2.ID) {
		t.Error("n2's only server is gone but n2 is online on b")
	}
	if got := onlinePatches(b.log.take(), n2.ID); !slices.Equal(got, []bool{false}) {
		t.Errorf("b's sessions were patched %v when a went, want [false]", got)
	}
	// Clustered, Flush writes nothing: the publisher stores reports.
	if a.s.Pending() != 0 {
		t.Errorf("a clustered state holds %d nodes for its flush", a.s.Pending())
	}
}

func userToStorePtr(t *testing.T, s *State, id ids.UserID) *store.User {
	t.Helper()
	u, err := s.st.GetUser(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	return &u
}

// TestEphemeralAcrossServers: an inactive ephemeral node is deleted by
// the server running the jobs only, also when the server it was connected
// to is gone, and not while another server holds a session of it.
func TestEphemeralAcrossServers(t *testing.T) {
	const timeout = 50 * time.Millisecond
	a, b, st := newLiveServersWith(t, func(id string, o *Options) {
		o.EphemeralTimeout = timeout
		leader := id == "b"
		o.RunsJobs = func() bool { return leader }
	})
	ctx := t.Context()
	k := store.PreAuthKey{Reusable: true, Ephemeral: true, Tags: []string{"tag:ci"}}
	reg := func() *Node {
		n, err := a.s.RegisterWithKey(ctx, RegisterParams{Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(),
			Hostinfo: &tailcfg.Hostinfo{Hostname: "ci"}, Key: k})
		if err != nil {
			t.Fatal(err)
		}
		sn, err := st.GetNode(ctx, n.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.s.ApplyRemote(ctx, []RemoteChange{{Node: &sn, Registered: true}}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	n := reg()
	if err := a.s.Connect(n.ID, func(Snapshot) {}); err != nil {
		t.Fatal(err)
	}
	ship(t, a, b)
	// a, which does not run the jobs, is gone: b deletes the node after the
	// timeout.
	if err := b.s.ApplyRemote(ctx, []RemoteChange{{ServerGone: a.id}}); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 10*time.Second, "the ephemeral node deleted", func() error {
		if _, err := st.GetNode(ctx, n.ID); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("node %d still stored (%v)", n.ID, err)
		}
		return nil
	})

	// A node that left a but is connected to b stays; when it leaves b
	// too, a (not running the jobs) keeps it, b deletes it.
	m := reg()
	if err := a.s.Connect(m.ID, func(Snapshot) {}); err != nil {
		t.Fatal(err)
	}
	if err := b.s.Connect(m.ID, func(Snapshot) {}); err != nil {
		t.Fatal(err)
	}
	ship(t, a, b)
	ship(t, b, a)
	a.s.Disconnect(m.ID)
	ship(t, a, b)
	time.Sleep(4 * timeout) // long enough for a wrong deletion to happen
	if _, err := st.GetNode(ctx, m.ID); err != nil {
		t.Fatalf("an ephemeral node connected to b was deleted: %v", err)
	}
	b.s.Disconnect(m.ID)
	tstest.WaitFor(t, 10*time.Second, "the ephemeral node deleted", func() error {
		if _, err := st.GetNode(ctx, m.ID); !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("node %d still stored (%v)", m.ID, err)
		}
		return nil
	})
}

// TestPrimariesAcrossServers: the server running the jobs elects primary
// subnet routers and fails them over; another server applies its
// decisions and never elects on its own.
func TestPrimariesAcrossServers(t *testing.T) {
	a, b, st := newLiveServersWith(t, func(id string, o *Options) {
		leader := id == "a"
		o.RunsJobs = func() bool { return leader }
	})
	ctx := t.Context()
	p := netip.MustParsePrefix("10.0.0.0/24")
	k := store.PreAuthKey{Reusable: true, Tags: []string{"tag:router"}}
	reg := func(name string) *Node {
		n, err := a.s.RegisterWithKey(ctx, RegisterParams{Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(),
			Hostinfo: &tailcfg.Hostinfo{Hostname: name, RoutableIPs: []netip.Prefix{p}}, Key: k})
		if err != nil {
			t.Fatal(err)
		}
		registered, err := st.GetNode(ctx, n.ID)
		if err != nil {
			t.Fatal(err)
		}
		if n, err = a.s.SetApprovedRoutes(ctx, n.ID, []netip.Prefix{p}); err != nil {
			t.Fatal(err)
		}
		approved, err := st.GetNode(ctx, n.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.s.ApplyRemote(ctx, []RemoteChange{{Node: &registered, Registered: true}, {Node: &approved}}); err != nil {
			t.Fatal(err)
		}
		return n
	}
	r1, r2 := reg("r1"), reg("r2")
	primaryOn := func(s *State) ids.NodeID { return s.PrimaryRoutes()[p] }

	// r2 connects to b first: b, not running the jobs, elects nobody.
	if err := b.s.Connect(r2.ID, func(Snapshot) {}); err != nil {
		t.Fatal(err)
	}
	if got := primaryOn(b.s); got != 0 {
		t.Fatalf("b elected %d on its own", got)
	}
	ship(t, b, a)
	if got := primaryOn(a.s); got != r2.ID {
		t.Fatalf("a, running the jobs, has primary %d, want r2 (%d)", got, r2.ID)
	}
	ship(t, a, b)
	if got := primaryOn(b.s); got != r2.ID {
		t.Fatalf("b has primary %d after a's decision, want r2 (%d)", got, r2.ID)
	}
	if n, _ := b.s.Node(r2.ID); !slices.Equal(n.PrimaryRoutes, []netip.Prefix{p}) {
		t.Errorf("r2's primary routes on b: %v", n.PrimaryRoutes)
	}

	// r1 connects to a; r2 keeps the route (sticky). r2 leaves b: b does
	// not fail over by itself, a does, and b follows.
	if err := a.s.Connect(r1.ID, func(Snapshot) {}); err != nil {
		t.Fatal(err)
	}
	ship(t, a, b)
	b.s.Disconnect(r2.ID)
	if got := primaryOn(b.s); got != r2.ID {
		t.Errorf("b changed the primary to %d by itself", got)
	}
	if n, _ := b.s.Node(r2.ID); len(n.PrimaryRoutes) != 0 {
		t.Errorf("r2 is offline but keeps primary routes %v on b", n.PrimaryRoutes)
	}
	ship(t, b, a)
	if got := primaryOn(a.s); got != r1.ID {
		t.Fatalf("a did not fail over to r1: primary %d", got)
	}
	cs := ship(t, a, b)
	if got := primaryOn(b.s); got != r1.ID {
		t.Fatalf("b has primary %d after a's failover, want r1 (%d)", got, r1.ID)
	}
	if got := updatedSelf(cs); !slices.Contains(got, r1.ID) {
		t.Errorf("b's sessions were not told r1 took the route: %v", got)
	}
}
