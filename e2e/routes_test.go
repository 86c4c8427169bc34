//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"tailscale.com/ipn/ipnstate"
)

// RouteInfo is a node as printed by `headscale nodes list-routes -o json`.
type RouteInfo struct {
	ID              ID       `json:"id"`
	Name            string   `json:"name"`
	ApprovedRoutes  []string `json:"approved_routes"`
	AvailableRoutes []string `json:"available_routes"`
	SubnetRoutes    []string `json:"subnet_routes"`
}

// nodeRoutes runs `nodes list-routes -o json` and returns the entry of the
// node called name.
func (s *Server) nodeRoutes(t testing.TB, name string) (RouteInfo, error) {
	t.Helper()
	var nodes []RouteInfo
	s.cliJSON(t, &nodes, "nodes", "list-routes", "-o", "json")
	for _, n := range nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return RouteInfo{}, fmt.Errorf("%w: %q not in list-routes", errNodeNotFound, name)
}

// peerPrimaryRoutes returns the primary routes n's status shows for peer.
func peerPrimaryRoutes(n, peer *Node) (*ipnstate.PeerStatus, []netip.Prefix, error) {
	st, err := n.Status()
	if err != nil {
		return nil, nil, err
	}
	p := findPeer(st, peer.Name)
	if p == nil {
		return nil, nil, fmt.Errorf("%s does not list %s among peers %v", n.Name, peer.Name, peerNames(st))
	}
	var routes []netip.Prefix
	if p.PrimaryRoutes != nil {
		routes = p.PrimaryRoutes.AsSlice()
	}
	return p, routes, nil
}

func sameStrings(got []string, want ...string) error {
	g, w := slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if !slices.Equal(g, w) {
		return fmt.Errorf("got %v, want %v", g, w)
	}
	return nil
}

// TestRoutes runs a subnet router that is also an exit node, approved by
// the policy's autoApprovers, checks what a peer and the CLI see, then
// adds a second router for the same prefix and stops the first: the peer
// must switch to the second as primary.
func TestRoutes(t *testing.T) {
	requireEnv(t)
	const subnet = "10.33.0.0/24"
	policyPath := filepath.Join(t.TempDir(), "policy.hujson")
	if err := os.WriteFile(policyPath, []byte(`{
  "autoApprovers": {
    "routes": {"`+subnet+`": ["alice@"]},
    "exitNode": ["alice@"],
  },
  "acls": [
    {"action": "accept", "src": ["*"], "dst": ["*:*"]},
  ],
}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := StartServer(t, ServerOptions{ExtraConfig: "policy:\n  mode: file\n  path: " + strconv.Quote(policyPath) + "\n"})
	srv.CreateUser(t, "alice")
	srv.CreateUser(t, "bob")
	ka := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	kb := srv.CreatePreAuthKey(t, "bob", PreAuthKeyOptions{Reusable: true})

	a := StartNode(t, srv, "router-a", NodeOptions{})
	b := StartNode(t, srv, "client-b", NodeOptions{})
	c := StartNode(t, srv, "router-c", NodeOptions{})
	b.MustUp(kb.Key)
	start := time.Now()
	a.MustUp(ka.Key, "--advertise-routes="+subnet, "--advertise-exit-node")
	want := netip.MustParsePrefix(subnet)

	// The peer sees A as primary for the subnet and as an exit node.
	tstest.WaitFor(t, 45*time.Second, "the subnet router and exit node at the peer", func() error {
		p, routes, err := peerPrimaryRoutes(b, a)
		if err != nil {
			return err
		}
		if !slices.Contains(routes, want) {
			return fmt.Errorf("%s: %s's PrimaryRoutes %v lack %s", b.Name, a.Name, routes, subnet)
		}
		if !p.ExitNodeOption {
			return fmt.Errorf("%s: %s is not offered as an exit node (AllowedIPs %v)", b.Name, a.Name, p.AllowedIPs)
		}
		return nil
	})
	t.Logf("%s sees %s as subnet router and exit node %v after it came up", b.Name, a.Name, time.Since(start).Round(time.Millisecond))

	// A's own view lists the route it serves.
	tstest.WaitFor(t, 20*time.Second, "the served route in the router's own view", func() error {
		st, err := a.Status()
		if err != nil {
			return err
		}
		if st.Self == nil || st.Self.PrimaryRoutes == nil || !slices.Contains(st.Self.PrimaryRoutes.AsSlice(), want) {
			return fmt.Errorf("%s's self node lacks PrimaryRoutes %s", a.Name, subnet)
		}
		return nil
	})

	ra, err := srv.nodeRoutes(t, a.Name)
	if err != nil {
		t.Fatal(err)
	}
	for what, got := range map[string][]string{"approved": ra.ApprovedRoutes, "available": ra.AvailableRoutes, "serving": ra.SubnetRoutes} {
		if err := sameStrings(got, "0.0.0.0/0", "::/0", subnet); err != nil {
			t.Errorf("list-routes %s, %s routes: %v", a.Name, what, err)
		}
	}
	if err := srv.logContains("routes approved by the policy's autoApprovers"); err != nil {
		t.Errorf("auto-approval not logged: %v", err)
	}

	// A second router for the same prefix is approved too, but A stays
	// primary.
	c.MustUp(ka.Key, "--advertise-routes="+subnet)
	tstest.WaitFor(t, 30*time.Second, "the second router approved", func() error {
		rc, err := srv.nodeRoutes(t, c.Name)
		if err != nil {
			return err
		}
		if err := sameStrings(rc.ApprovedRoutes, subnet); err != nil {
			return fmt.Errorf("%s approved routes: %w", c.Name, err)
		}
		if len(rc.SubnetRoutes) != 0 {
			return fmt.Errorf("%s serves %v while %s is primary", c.Name, rc.SubnetRoutes, a.Name)
		}
		return nil
	})
	b.WaitForPeer(c, peerTimeout)
	if _, routes, err := peerPrimaryRoutes(b, a); err != nil || !slices.Contains(routes, want) {
		t.Fatalf("%s no longer sees %s as primary after %s joined: %v %v", b.Name, a.Name, c.Name, routes, err)
	}
	if _, routes, err := peerPrimaryRoutes(b, c); err != nil || len(routes) != 0 {
		t.Fatalf("%s sees %s with PrimaryRoutes %v (%v), want none while %s is online", b.Name, c.Name, routes, err, a.Name)
	}

	// Stop A: its map session closes and C takes the prefix.
	a.Stop()
	stopped := time.Now()
	tstest.WaitFor(t, 30*time.Second, "the failover to the second router", func() error {
		_, routes, err := peerPrimaryRoutes(b, c)
		if err != nil {
			return err
		}
		if !slices.Contains(routes, want) {
			return fmt.Errorf("%s: %s's PrimaryRoutes %v lack %s", b.Name, c.Name, routes, subnet)
		}
		_, routes, err = peerPrimaryRoutes(b, a)
		if err != nil && !errors.Is(err, errNodeNotFound) {
			return err
		}
		if slices.Contains(routes, want) {
			return fmt.Errorf("%s still sees stopped %s as primary", b.Name, a.Name)
		}
		return nil
	})
	t.Logf("failover to %s seen by %s %v after %s stopped", c.Name, b.Name, time.Since(stopped).Round(time.Millisecond), a.Name)
	tstest.WaitFor(t, 20*time.Second, "the second router primary on the server", func() error {
		rc, err := srv.nodeRoutes(t, c.Name)
		if err != nil {
			return err
		}
		return sameStrings(rc.SubnetRoutes, subnet)
	})

	// An admin takes the approval back with the CLI: nobody serves the
	// prefix; approving it again restores it.
	rc, err := srv.nodeRoutes(t, c.Name)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		routes string
		want   bool
	}{{"", false}, {subnet, true}} {
		if _, err := srv.CLI(t, "nodes", "approve-routes", "-i", string(rc.ID), "-r", step.routes); err != nil {
			t.Fatal(err)
		}
		tstest.WaitFor(t, 20*time.Second, "the approved routes at the peer", func() error {
			_, routes, err := peerPrimaryRoutes(b, c)
			if err != nil {
				return err
			}
			if slices.Contains(routes, want) != step.want {
				return fmt.Errorf("after approve-routes %q, %s sees %s with PrimaryRoutes %v", step.routes, b.Name, c.Name, routes)
			}
			return nil
		})
	}
}
