package store

// Races that SQLite's single writer rules out by construction and that
// PostgreSQL's pool must rule out with constraints and locks; each runs on
// both engines.

import (
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// warm opens n connections in s's write pool (at most as many as it may
// have) and returns them to it, so racing goroutines do not queue behind
// connection set-up and really overlap.
func warm(t *testing.T, s *Store, n int) {
	t.Helper()
	if most := s.write.Stats().MaxOpenConnections; most > 0 {
		n = min(n, most)
	}
	var conns []*sql.Conn
	for range n {
		c, err := s.write.Conn(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Close()
	}
}

// TestIPUniqueRace: many registrations claim addresses from a small pool at
// once, each moving on to the next address when one is taken. Every address
// ends up with exactly one node, the losers' transactions leave nothing
// behind, and the single-use keys they carried are not spent.
func TestIPUniqueRace(t *testing.T) { forEachEngine(t, testIPUniqueRace) }

func testIPUniqueRace(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	u, err := s.CreateUser(ctx, User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	const racers, pool = 16, 6
	warm(t, s, 10)
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		mu    sync.Mutex
		won   = map[string]ids.NodeID{}
		keys  = make([]PreAuthKey, racers)
	)
	for i := range racers {
		if keys[i], err = s.CreatePreAuthKey(ctx, PreAuthKey{Prefix: fmt.Sprintf("k%d", i), Hash: []byte{1}, UserID: &u.ID}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range racers {
		wg.Go(func() {
			<-start
			for a := range pool {
				n := testNode(fmt.Sprintf("racer-%d", i), &u.ID)
				n.IPv4 = fmt.Sprintf("100.64.0.%d", a+1)
				n.IPv6 = fmt.Sprintf("fd7a:115c:a1e0::%d", a+1)
				n.AuthKeyID = &keys[i].ID
				got, err := s.RegisterNode(ctx, n, keys[i].ID)
				if errors.Is(err, ErrConflict) {
					continue
				}
				if err != nil {
					t.Errorf("racer %d: %v", i, err)
					return
				}
				mu.Lock()
				if other, dup := won[n.IPv4]; dup {
					t.Errorf("%s given to nodes %d and %d", n.IPv4, other, got.ID)
				}
				won[n.IPv4] = got.ID
				mu.Unlock()
				return
			}
		})
	}
	close(start)
	wg.Wait()
	if len(won) != pool {
		t.Fatalf("%d addresses taken, want all %d", len(won), pool)
	}
	nodes, err := s.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != pool {
		t.Fatalf("%d nodes stored, want %d (one per address)", len(nodes), pool)
	}
	used := 0
	for _, k := range keys {
		got, err := s.GetPreAuthKey(ctx, k.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Used {
			used++
		}
	}
	if used != pool {
		t.Errorf("%d single-use keys spent, want %d (a failed registration must not spend its key)", used, pool)
	}
}

// TestDeleteUserRegisterRace: deleting a user while nodes register for it
// ends one of two ways, never a third: the user is gone and no node
// refers to it, or the user stays (refused: it owns nodes).
func TestDeleteUserRegisterRace(t *testing.T) { forEachEngine(t, testDeleteUserRegisterRace) }

func testDeleteUserRegisterRace(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	warm(t, s, 5)
	for round := range 10 {
		u, err := s.CreateUser(ctx, User{Name: fmt.Sprintf("u%d", round)})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		var delErr error
		wg.Go(func() { <-start; delErr = s.DeleteUser(ctx, u.ID) })
		for i := range 4 {
			wg.Go(func() {
				<-start
				_, err := s.RegisterNode(ctx, testNode(fmt.Sprintf("r%d-%d", round, i), &u.ID), 0)
				if err != nil && !errors.Is(err, ErrNotFound) {
					t.Errorf("register: %v, want success or ErrNotFound (user deleted)", err)
				}
			})
		}
		close(start)
		wg.Wait()
		nodes, err := s.ListNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		owned := 0
		for _, n := range nodes {
			if n.UserID != nil && *n.UserID == u.ID {
				owned++
			}
		}
		_, getErr := s.GetUser(ctx, u.ID)
		switch {
		case delErr == nil && (getErr == nil || owned > 0):
			t.Fatalf("round %d: user deleted, yet it is %v and owns %d nodes", round, getErr, owned)
		case delErr != nil && !errors.Is(delErr, ErrConflict):
			t.Fatalf("round %d: DeleteUser: %v, want success or ErrConflict", round, delErr)
		case delErr != nil && (getErr != nil || owned == 0):
			t.Fatalf("round %d: delete refused (%v), yet the user is %v and owns %d nodes", round, delErr, getErr, owned)
		}
	}
}

// TestRouteIDsRace: many callers give IDs to the same pairs at once; none
// fails and each pair ends up with exactly one ID.
func TestRouteIDsRace(t *testing.T) { forEachEngine(t, testRouteIDsRace) }

func testRouteIDsRace(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	n, err := s.RegisterNode(ctx, testNode("router", nil), 0)
	if err != nil {
		t.Fatal(err)
	}
	const callers, rounds, pairs = 8, 10, 8
	warm(t, s, callers)
	for round := range rounds {
		var keys []RouteKey
		for i := range pairs {
			keys = append(keys, RouteKey{NodeID: n.ID, Prefix: netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", round, i))})
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range callers {
			wg.Go(func() {
				<-start
				// Each caller in its own order.
				mine := append(keys[i%pairs:len(keys):len(keys)], keys[:i%pairs]...)
				if err := s.AddRouteIDs(ctx, mine); err != nil {
					t.Errorf("AddRouteIDs: %v", err)
				}
			})
		}
		close(start)
		wg.Wait()
	}
	got, err := s.ListRouteIDs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != rounds*pairs {
		t.Fatalf("%d route IDs for %d pairs", len(got), rounds*pairs)
	}
}

// TestLastSeenBatchesRace: flushes of last-seen times and whole nodes over
// the same nodes, in different orders, all succeed (on PostgreSQL they
// would deadlock if rows were locked in map order).
func TestLastSeenBatchesRace(t *testing.T) { forEachEngine(t, testLastSeenBatchesRace) }

func testLastSeenBatchesRace(t *testing.T, e engine) {
	ctx := t.Context()
	s := e.open(t)
	var nodes []Node
	for i := range 40 {
		n, err := s.RegisterNode(ctx, testNode(fmt.Sprintf("n%d", i), nil), 0)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	warm(t, s, 6)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for w := range 6 {
		wg.Go(func() {
			<-start
			for round := range 5 {
				seen := map[ids.NodeID]time.Time{}
				for i, n := range nodes {
					seen[n.ID] = ts(1_700_000_000_000 + int64(w*1000+round*100+i))
				}
				if err := s.SetLastSeen(ctx, seen); err != nil {
					t.Errorf("SetLastSeen: %v", err)
				}
				batch := make([]Node, len(nodes))
				for i := range nodes { // reversed
					batch[i] = nodes[len(nodes)-1-i]
				}
				if err := s.UpdateNodes(ctx, batch); err != nil {
					t.Errorf("UpdateNodes: %v", err)
				}
			}
		})
	}
	close(start)
	wg.Wait()
}

// TestPostgresConcurrentOpen (PostgreSQL-only): several stores opening one
// new database at once (servers sharing a PostgreSQL, or a server and an
// admin command), in its default schema and in two tenants' schemas that
// do not exist yet, create each schema once, apply each migration once per
// schema and all open it. (On SQLite two processes creating a new file at
// once can meet SQLITE_BUSY while the first switches it to WAL; that case
// is not covered here.)
func TestPostgresConcurrentOpen(t *testing.T) {
	opts, _ := pgOptions(t)
	schemas := []string{"", "", "headscale_c", "headscale_c", "headscale_c", "headscale_d", "headscale_d"}
	var wg sync.WaitGroup
	start := make(chan struct{})
	stores := make([]*Store, len(schemas))
	errs := make([]error, len(schemas))
	for i, schema := range schemas {
		o := opts
		p := *opts.Postgres
		p.Schema = schema
		o.Postgres = &p
		wg.Go(func() {
			<-start
			stores[i], errs[i] = Open(t.Context(), o)
		})
	}
	close(start)
	wg.Wait()
	for i, s := range stores {
		if errs[i] != nil {
			t.Errorf("opener %d (schema %q): %v", i, schemas[i], errs[i])
			continue
		}
		defer s.Close()
	}
	if t.Failed() {
		return
	}
	for i, s := range stores {
		var n int
		if err := s.read.QueryRowContext(t.Context(), `SELECT COUNT(*) FROM schema_migrations`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if want := knownMigrations(t); n != want {
			t.Errorf("schema %q: %d schema_migrations rows, want %d", schemas[i], n, want)
		}
	}
}
