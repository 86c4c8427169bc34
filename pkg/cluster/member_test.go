package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/jackc/pgx/v5"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// recorder keeps the changes a state emits.
type recorder struct {
	mu sync.Mutex
	cs []state.Change
}

func (r *recorder) Apply(c state.Change) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cs = append(r.cs, c)
}

// testServer is one server's store, state and member over a shared
// database, without the network parts.
type testServer struct {
	id     string
	st     *store.Store
	s      *state.State
	m      *Member
	sink   *recorder
	cancel context.CancelFunc
	stop   func()
}

// clusterConfig is what the tests' members run with: short leases so
// that a dead server is noticed within a second or two.
func clusterConfig(db pgtest.Database) Config {
	return Config{
		NoisePub:  "mkey:test",
		Version:   "test",
		Debounce:  2 * time.Millisecond,
		LeaseTTL:  time.Second,
		Heartbeat: 150 * time.Millisecond,
		Poll:      200 * time.Millisecond,
		Dial:      func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, db.DSN()) },
	}
}

// startServer starts server name on db. stop ends it cleanly; to kill
// it, call cancel only (its row stays until its lease runs out).
func startServer(t *testing.T, db pgtest.Database, name string) *testServer {
	t.Helper()
	ctx := t.Context()
	id := NewServerID(name)
	st, err := store.Open(ctx, store.Options{
		Postgres:  &store.PostgresOptions{Host: db.Host, Port: db.Port, Name: db.Name, User: db.User},
		ChangeLog: &store.ChangeLogOptions{Origin: id},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := clusterConfig(db)
	cfg.Store, cfg.ServerID, cfg.Name = st, id, name
	lw := NewLiveWriter(st, cfg.Debounce, nil)
	m, err := NewMember(ctx, cfg, lw)
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	snap, err := st.LoadSnapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	alloc := ipalloc.New(netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48"), ipalloc.Sequential)
	s, err := state.New(ctx, state.Options{Store: st, Alloc: alloc, Snapshot: &snap, Publish: lw.Add,
		RunsJobs: m.Leader, PublishPrimary: m.PublishPrimary, CatchUp: m.CatchUp, LockRegistrations: st.LockRegistrations})
	if err != nil {
		t.Fatal(err)
	}
	sink := &recorder{}
	s.SetSink(sink)
	mctx, cancel := context.WithCancel(context.Background())
	m.Start(mctx, s, snap.Seq)
	ts := &testServer{id: id, st: st, s: s, m: m, sink: sink, cancel: cancel}
	var once sync.Once
	ts.stop = func() {
		once.Do(func() {
			sctx, c := context.WithTimeout(context.Background(), 10*time.Second)
			defer c()
			m.Stop(sctx)
			cancel()
			st.Close()
		})
	}
	t.Cleanup(ts.stop)
	return ts
}

// kill ends the server without leaving the server list, as kill -9
// would: its lease runs out.
func (ts *testServer) kill() {
	ts.cancel()
	ts.m.wg.Wait()
	ts.st.Close()
}

func (ts *testServer) node(t *testing.T, id ids.NodeID) (*state.Node, bool) {
	t.Helper()
	return ts.s.Node(id)
}

// TestTwoServersFollowEachOther: what one server stores and what its
// clients report reach the other through the database; a server that
// stops cleanly takes its sessions with it at once, one that is killed
// after its lease runs out, declared gone by the jobs holder.
func TestTwoServersFollowEachOther(t *testing.T) {
	db := pgtest.New()
	t.Cleanup(db.Stop)
	d := db.Database(t)
	// The schema comes from the first open.
	a := startServer(t, d, "a")
	b := startServer(t, d, "b")
	ctx := t.Context()

	u, err := a.s.CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	uid := u.ID
	reg := func(on *testServer, name string) *state.Node {
		n, err := on.s.RegisterWithKey(ctx, state.RegisterParams{Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(),
			Hostinfo: &tailcfg.Hostinfo{Hostname: name}, Key: store.PreAuthKey{Reusable: true, UserID: &uid}})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	n1 := reg(a, "one")
	tstest.WaitFor(t, 10*time.Second, "b holds a's node", func() error {
		if _, ok := b.node(t, n1.ID); !ok {
			return fmt.Errorf("node %d not on b", n1.ID)
		}
		return nil
	})
	// b registering next catches up first: no address is handed out
	// twice.
	n2 := reg(b, "two")
	if n2.IPv4 == n1.IPv4 {
		t.Fatalf("both servers gave %v", n1.IPv4)
	}

	// n1 connects to a and reports endpoints: b sees it online with them.
	if err := a.s.Connect(n1.ID, func(state.Snapshot) {}); err != nil {
		t.Fatal(err)
	}
	ep := []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:41641")}
	if err := a.s.ApplyMapUpdate(n1.ID, state.MapUpdate{Endpoints: ep}); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 10*time.Second, "b sees n1 online with its endpoints", func() error {
		n, _ := b.node(t, n1.ID)
		if !n.Online || !slices.Equal(n.Endpoints, ep) {
			return fmt.Errorf("on b: online %v endpoints %v", n.Online, n.Endpoints)
		}
		return nil
	})

	// An admin edit on b reaches a.
	if _, err := b.s.RenameNode(ctx, n1.ID, "renamed"); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 10*time.Second, "a sees the rename made on b", func() error {
		if n, _ := a.node(t, n1.ID); n.GivenName != "renamed" {
			return fmt.Errorf("on a: %q", n.GivenName)
		}
		return nil
	})
	// Both edit the same node at once: both edits stand (compare-and-swap
	// and catch-up, no lost update).
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		if _, err := a.s.SetTags(ctx, n2.ID, []string{"tag:x"}); err != nil {
			t.Error(err)
		}
	}()
	go func() {
		defer wg.Done()
		if _, err := b.s.RenameNode(ctx, n2.ID, "two-renamed"); err != nil {
			t.Error(err)
		}
	}()
	wg.Wait()
	for _, ts := range []*testServer{a, b} {
		tstest.WaitFor(t, 10*time.Second, "both concurrent edits on "+ts.id, func() error {
			n, _ := ts.node(t, n2.ID)
			if n.GivenName != "two-renamed" || !slices.Equal(n.Tags, []string{"tag:x"}) {
				return fmt.Errorf("name %q tags %v", n.GivenName, n.Tags)
			}
			return nil
		})
	}
	stored, err := a.st.GetNode(ctx, n2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.GivenName != "two-renamed" || !slices.Equal(stored.Tags, []string{"tag:x"}) {
		t.Errorf("stored after concurrent edits: name %q tags %v", stored.GivenName, stored.Tags)
	}

	// a is killed: after its lease, b (taking the jobs) declares it gone and
	// n1 goes offline on b.
	a.kill()
	tstest.WaitFor(t, 20*time.Second, "n1 offline on b after a was killed", func() error {
		if n, _ := b.node(t, n1.ID); n.Online {
			return fmt.Errorf("n1 still online on b (leader %v)", b.m.Leader())
		}
		return nil
	})
	if !b.m.Leader() {
		t.Error("b does not run the jobs after a was killed")
	}
}
