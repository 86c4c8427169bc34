//go:build linux

package e2e

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/loadgen"
)

// onlinePeers checks that n's status lists exactly the peers in want, all
// online, and returns how many it lists.
func onlinePeers(n *Node, want map[string]bool) (int, error) {
	st, err := n.Status()
	if err != nil {
		return 0, err
	}
	online, missing := 0, ""
	seen := make(map[string]bool, len(st.Peer))
	for _, p := range st.Peer {
		seen[p.HostName] = true
		if want[p.HostName] && p.Online {
			online++
		}
	}
	for name := range want {
		if !seen[name] {
			missing = name
			break
		}
	}
	if len(st.Peer) != len(want) || online != len(want) {
		return len(st.Peer), fmt.Errorf("%s lists %d peers, %d of the %d expected online (e.g. missing %q)", n.Name, len(st.Peer), online, len(want), missing)
	}
	return len(st.Peer), nil
}

// pingRTT returns the round-trip time at the end of a tailscale ping
// line ("pong from ... in 2ms").
func pingRTT(out string) string {
	if i := strings.LastIndex(out, " in "); i >= 0 {
		if d, err := time.ParseDuration(strings.TrimSpace(out[i+4:])); err == nil {
			return d.String()
		}
	}
	return "?"
}

// TestRealClientsInLargeTailnet runs three official clients inside a
// tailnet of N simulated nodes (1000; 300 with -short) kept connected by
// loadgen over the real protocol: each client sees all N+2 peers online,
// the clients ping each other and move bytes between them, and the
// simulated nodes stay converged with the real clients in their netmaps.
func TestRealClientsInLargeTailnet(t *testing.T) {
	n := 1000
	if testing.Short() {
		n = 300
	}
	begin := time.Now()
	srv := StartServer(t, ServerOptions{})
	srv.CreateUser(t, "scale")
	key := srv.CreatePreAuthKey(t, "scale", PreAuthKeyOptions{Reusable: true})
	if _, _, err := loadgen.RaiseFileLimit(); err != nil {
		t.Logf("raising the open file limit: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := loadgen.DefaultConfig()
	cfg.URL = srv.URL
	cfg.AuthKey = key.Key
	cfg.N = n
	cfg.Hostname = "sim"
	cfg.RegisterTimeout = 60 * time.Second
	cfg.ConvergeTimeout = 60 * time.Second
	cfg.Logf = t.Logf
	fleet, err := loadgen.StartFleet(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer fleet.Close()
	t.Logf("fleet: %d simulated nodes registered in %.2fs, all holding all %d peers after %.2fs",
		n, fleet.Register.Metrics["register_s"], n-1, fleet.Register.Metrics["converge_s"])

	// Three official clients join the large tailnet at once.
	clients := []*Node{
		StartNode(t, srv, "real-1", NodeOptions{}),
		StartNode(t, srv, "real-2", NodeOptions{}),
		StartNode(t, srv, "real-3", NodeOptions{}),
	}
	names := map[string]bool{}
	for i := range n {
		names[fleet.Hostname(i)] = true
	}
	upStart := time.Now()
	seen := make([]time.Duration, len(clients))
	errs := make([]error, len(clients))
	var wg sync.WaitGroup
	for i, c := range clients {
		want := make(map[string]bool, n+2)
		for name := range names {
			want[name] = true
		}
		for _, o := range clients {
			if o != c {
				want[o.Name] = true
			}
		}
		wg.Go(func() {
			if out, err := c.Up(key.Key); err != nil {
				errs[i] = fmt.Errorf("tailscale up: %v\n%s", err, out)
				return
			}
			errs[i] = tstest.Poll(60*time.Second, func() error {
				_, err := onlinePeers(c, want)
				return err
			})
			seen[i] = time.Since(upStart)
		})
	}
	wg.Wait()
	for i, c := range clients {
		if errs[i] != nil {
			t.Fatalf("%s: %v", c.Name, errs[i])
		}
		t.Logf("%s: lists all %d peers online %v after `tailscale up` began", c.Name, n+2, seen[i].Round(time.Millisecond))
	}

	// The server agrees: N+3 nodes, all online.
	nodes := srv.ListNodes(t)
	online := 0
	for _, nd := range nodes {
		if nd.Online {
			online++
		}
	}
	if len(nodes) != n+3 || online != n+3 {
		t.Errorf("nodes list: %d nodes, %d online; want %d, all online", len(nodes), online, n+3)
	}

	// The real clients reach each other across the big tailnet.
	for i, from := range clients {
		to := clients[(i+1)%len(clients)]
		out := mustPing(t, from, to)
		t.Logf("ping RTT %s -> %s: %s", from.Name, to.Name, pingRTT(out))
	}
	SendBytes(t, clients[0], clients[1], clients[1].ListenPort, randomBytes(t, 1<<20))

	// The simulated nodes stayed converged and have the real clients in
	// their netmaps, online.
	if err := fleet.WaitConverged(ctx, 30*time.Second); err != nil {
		t.Errorf("fleet after the real clients joined: %v", err)
	}
	if e := fleet.StreamEnds(); e != 0 {
		t.Errorf("%d simulated map streams ended while the real clients joined", e)
	}
	for _, i := range []int{0, n / 2, n - 1} {
		peers, err := fleet.Peers(ctx, i)
		if err != nil {
			t.Fatalf("simulated node %d's netmap: %v", i, err)
		}
		onlineReal := 0
		for _, p := range peers {
			for _, c := range clients {
				if p.Hostname == c.Name && p.Online {
					onlineReal++
				}
			}
		}
		if len(peers) != n+2 || onlineReal != len(clients) {
			t.Errorf("simulated node %d's netmap: %d peers (want %d), %d of the %d real clients online", i, len(peers), n+2, onlineReal, len(clients))
		}
	}
	t.Logf("fleet: %d/%d converged, %d stream ends, %.1f MiB received; test ran %v",
		fleet.ConvergedCount(), n, fleet.StreamEnds(), float64(fleet.BytesReceived())/(1<<20), time.Since(begin).Round(time.Millisecond))
}
