package cluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// view is what a server shows of a node to its sessions: the stored
// fields, presence, reported fields and primary routes.
type view struct {
	Name, Hostname string
	User           ids.UserID
	Tags           []string
	Approved       []netip.Prefix
	Primary        []netip.Prefix
	IPv4           netip.Addr
	Online         bool
	Endpoints      []netip.AddrPort
	Expiry         time.Time
}

func viewOf(s *state.State) map[ids.NodeID]view {
	out := map[ids.NodeID]view{}
	for _, n := range s.Nodes() {
		out[n.ID] = view{Name: n.GivenName, Hostname: n.Hostname, User: n.UserID, Tags: n.Tags, Approved: n.ApprovedRoutes,
			Primary: n.PrimaryRoutes, IPv4: n.IPv4, Online: n.Online, Endpoints: n.Endpoints,
			// The store keeps milliseconds; the writing server's memory
			// may hold the nanoseconds it was given.
			Expiry: n.Expiry.UTC().Truncate(time.Millisecond)}
	}
	return out
}

func diffViews(a, b map[ids.NodeID]view) error {
	if len(a) != len(b) {
		var only []string
		for id := range a {
			if _, ok := b[id]; !ok {
				only = append(only, fmt.Sprintf("%d only in the first", id))
			}
		}
		for id := range b {
			if _, ok := a[id]; !ok {
				only = append(only, fmt.Sprintf("%d only in the second", id))
			}
		}
		return fmt.Errorf("%d nodes vs %d: %v", len(a), len(b), only)
	}
	for id, va := range a {
		vb, ok := b[id]
		if !ok {
			return fmt.Errorf("node %d missing", id)
		}
		if fmt.Sprint(va) != fmt.Sprint(vb) {
			return fmt.Errorf("node %d:\n%+v\n%+v", id, va, vb)
		}
	}
	return nil
}

// TestServersConverge applies random changes (registrations, edits,
// deletions, sessions beginning and ending, client reports, route
// approvals, user changes) to random ones of three servers, and checks
// after each round that every server shows every node the same way: the
// same stored fields, presence, endpoints and primary routers.
func TestServersConverge(t *testing.T) {
	db := pgtest.New()
	t.Cleanup(db.Stop)
	d := db.Database(t)
	srvs := []*testServer{startServer(t, d, "a"), startServer(t, d, "b"), startServer(t, d, "c")}
	ctx := t.Context()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	var users []ids.UserID
	for _, name := range []string{"alice", "bob"} {
		u, err := srvs[0].s.CreateUser(ctx, store.User{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, u.ID)
	}
	routes := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.1.0.0/24")}
	// sessions[i] lists the nodes server i holds a session of.
	sessions := make([]map[ids.NodeID]int, len(srvs))
	for i := range sessions {
		sessions[i] = map[ids.NodeID]int{}
	}
	var nodes []ids.NodeID
	// current is the server each node last connected to: its client
	// reports there (tailscaled has one control connection).
	current := map[ids.NodeID]int{}
	pick := func() (ids.NodeID, bool) {
		if len(nodes) == 0 {
			return 0, false
		}
		return nodes[rng.IntN(len(nodes))], true
	}
	tolerate := func(err error) {
		t.Helper()
		if err != nil && !errors.Is(err, state.ErrNodeNotFound) && !errors.Is(err, state.ErrInvalidName) && !errors.Is(err, store.ErrConflict) {
			t.Fatal(err)
		}
	}
	var oplog []string
	logOp := func(i int, op string, id ids.NodeID, err error) {
		oplog = append(oplog, fmt.Sprintf("%s %s %d %v", []string{"a", "b", "c"}[i], op, id, err))
	}
	defer func() {
		if t.Failed() {
			for _, l := range oplog {
				t.Log(l)
			}
		}
	}()
	for round := range 12 {
		for range 8 {
			srv := srvs[rng.IntN(len(srvs))]
			i := slices.Index(srvs, srv)
			switch r := rng.IntN(100); {
			case r < 25 || len(nodes) < 3:
				uid := users[rng.IntN(len(users))]
				n, err := srv.s.RegisterWithKey(ctx, state.RegisterParams{Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(),
					Hostinfo: &tailcfg.Hostinfo{Hostname: fmt.Sprintf("h%d", len(nodes)), RoutableIPs: routes[:rng.IntN(3)]},
					Key:      store.PreAuthKey{Reusable: true, UserID: &uid}})
				if err != nil {
					t.Fatal(err)
				}
				nodes = append(nodes, n.ID)
				logOp(i, "register", n.ID, nil)
			case r < 40:
				id, _ := pick()
				if err := srv.s.Connect(id, func(state.Snapshot) {}); err == nil {
					sessions[i][id]++
					current[id] = i
					logOp(i, "connect", id, nil)
				}
			case r < 50:
				for id := range sessions[i] {
					srv.s.Disconnect(id)
					logOp(i, "disconnect", id, nil)
					if sessions[i][id]--; sessions[i][id] == 0 {
						delete(sessions[i], id)
					}
					break
				}
			case r < 60:
				for id := range sessions[i] {
					if current[id] != i {
						continue
					}
					ep := []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), uint16(1000+rng.IntN(1000)))}
					err := srv.s.ApplyMapUpdate(id, state.MapUpdate{Endpoints: ep})
					logOp(i, fmt.Sprintf("report %v", ep), id, err)
					tolerate(err)
					break
				}
			case r < 70:
				id, _ := pick()
				_, err := srv.s.SetApprovedRoutes(ctx, id, routes[:rng.IntN(3)])
				logOp(i, "routes", id, err)
				tolerate(err)
			case r < 78:
				id, _ := pick()
				_, err := srv.s.RenameNode(ctx, id, fmt.Sprintf("n%d", rng.IntN(1000)))
				logOp(i, "rename", id, err)
				tolerate(err)
			case r < 84:
				id, _ := pick()
				_, err := srv.s.SetOwner(ctx, id, users[rng.IntN(len(users))])
				logOp(i, "owner", id, err)
				tolerate(err)
			case r < 90:
				id, _ := pick()
				_, err := srv.s.ExpireNode(ctx, id, time.Now().Add(time.Duration(rng.IntN(100))*time.Hour), false)
				logOp(i, "expire", id, err)
				tolerate(err)
			case r < 95:
				id, _ := pick()
				err := srv.s.DeleteNode(ctx, id)
				logOp(i, "delete", id, err)
				tolerate(err)
				nodes = slices.DeleteFunc(nodes, func(x ids.NodeID) bool { return x == id })
				for j := range sessions {
					delete(sessions[j], id)
				}
			default:
				uid := users[rng.IntN(len(users))]
				_, err := srv.s.RenameUser(ctx, uid, fmt.Sprintf("user%d", rng.IntN(1000)))
				if err != nil && !errors.Is(err, store.ErrConflict) {
					t.Fatal(err)
				}
			}
		}
		tstest.WaitFor(t, 20*time.Second, fmt.Sprintf("round %d: the servers agree", round), func() error {
			first := viewOf(srvs[0].s)
			for j, s := range srvs[1:] {
				if err := diffViews(first, viewOf(s.s)); err != nil {
					return fmt.Errorf("server a vs %s: %w", []string{"b", "c"}[j], err)
				}
			}
			// Each node is online exactly when some server holds its
			// session.
			for id, v := range first {
				held := false
				for j := range sessions {
					held = held || sessions[j][id] > 0
				}
				if v.Online != held {
					return fmt.Errorf("node %d online %v, held by a server %v", id, v.Online, held)
				}
			}
			return nil
		})
	}
}
