package state

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestBackfillIPs registers nodes while only IPv4 is configured, then
// restarts with prefixes changed and backfills: every missing configured
// family is allocated, every address of a family no longer configured is
// dropped, the result is stored, the nodes and their peers are told
// (NodeUpdated with Self), and a second run changes nothing.
func TestBackfillIPs(t *testing.T) {
	ctx := context.Background()
	v4 := netip.MustParsePrefix("100.64.0.0/10")
	v6 := netip.MustParsePrefix("fd7a:115c:a1e0::/48")
	for _, tc := range []struct {
		name       string
		before     [2]netip.Prefix // prefixes the nodes registered with
		after      [2]netip.Prefix // prefixes at the backfill
		wantV4     bool
		wantV6     bool
		wantChange string
	}{
		{"add IPv6", [2]netip.Prefix{v4, {}}, [2]netip.Prefix{v4, v6}, true, true, `assigned IPv6 "fd7a:115c:a1e0::1" to Node(1) "node-0"`},
		{"add IPv4", [2]netip.Prefix{{}, v6}, [2]netip.Prefix{v4, v6}, true, true, `assigned IPv4 "100.64.0.1" to Node(1) "node-0"`},
		{"drop IPv4", [2]netip.Prefix{v4, v6}, [2]netip.Prefix{{}, v6}, false, true, `removing IPv4 "100.64.0.1" from Node(1) "node-0"`},
		{"swap families", [2]netip.Prefix{v4, {}}, [2]netip.Prefix{{}, v6}, false, true, `removing IPv4 "100.64.0.1" from Node(1) "node-0"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "db.sqlite")
			st, err := store.Open(ctx, store.Options{Path: path, WAL: true})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			open := func(p [2]netip.Prefix) *State {
				t.Helper()
				s, err := New(ctx, Options{Store: st, Alloc: ipalloc.New(p[0], p[1], ipalloc.Sequential)})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			s := open(tc.before)
			u, err := s.CreateUser(ctx, store.User{Name: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if _, err := s.RegisterWithKey(ctx, RegisterParams{
					Machine: key.NewMachine().Public(), NodeKey: key.NewNode().Public(),
					Hostinfo: &tailcfg.Hostinfo{Hostname: fmt.Sprintf("node-%d", i)},
					Key:      store.PreAuthKey{Reusable: true, UserID: &u.ID},
				}); err != nil {
					t.Fatal(err)
				}
			}

			s = open(tc.after)
			log := &changeLog{}
			s.SetSink(log)
			changes, err := s.BackfillIPs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(changes) == 0 || changes[0] != tc.wantChange {
				t.Fatalf("changes %q, want first %q", changes, tc.wantChange)
			}
			emitted := log.take()
			if got := updatedSelf(emitted); !slices.Equal(got, []ids.NodeID{1, 2, 3}) {
				t.Errorf("NodeUpdated with Self for %v, want every node", got)
			}
			seen := map[netip.Addr]bool{}
			for _, c := range emitted {
				if c.Kind == NodeUpdated && (c.Node.IPv4.IsValid() != tc.wantV4 || c.Node.IPv6.IsValid() != tc.wantV6) {
					t.Errorf("change carries node %d with %v %v", c.Node.ID, c.Node.IPv4, c.Node.IPv6)
				}
			}
			// Stored, and unique: a fresh state reads the same addresses.
			again := open(tc.after)
			for _, n := range again.Nodes() {
				if n.IPv4.IsValid() != tc.wantV4 || n.IPv6.IsValid() != tc.wantV6 {
					t.Errorf("stored node %d: %v %v", n.ID, n.IPv4, n.IPv6)
				}
				for _, a := range []netip.Addr{n.IPv4, n.IPv6} {
					if a.IsValid() && seen[a] {
						t.Errorf("address %v given twice", a)
					}
					seen[a] = true
				}
				if mem, _ := s.Node(n.ID); mem.IPv4 != n.IPv4 || mem.IPv6 != n.IPv6 {
					t.Errorf("node %d in memory %v %v, stored %v %v", n.ID, mem.IPv4, mem.IPv6, n.IPv4, n.IPv6)
				}
			}
			if changes, err := s.BackfillIPs(ctx); err != nil || len(changes) != 0 || len(log.take()) != 0 {
				t.Errorf("second run: %q %v", changes, err)
			}
		})
	}
}
