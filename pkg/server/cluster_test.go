package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/loadgen"
)

// clusterYAML is the configuration of one of several servers serving one
// tailnet in these tests: short leases, the shared Noise key, and a DERP
// map from a shared file (no embedded relay).
func clusterYAML(t *testing.T, shared, name string) string {
	t.Helper()
	derpMap := filepath.Join(shared, "derp.yaml")
	if _, err := os.Stat(derpMap); err != nil {
		os.WriteFile(derpMap, []byte("regions:\n  900:\n    regionid: 900\n    regioncode: test\n    regionname: Test\n"+
			"    nodes:\n      - name: 900a\n        regionid: 900\n        hostname: 127.0.0.1\n        derpport: 1\n        stunport: -1\n"), 0o600)
	}
	return fmt.Sprintf(`
noise:
  private_key_path: %s
derp:
  paths: [%s]
  server:
    enabled: false
cluster:
  enabled: true
  server_name: %s
  debounce: 5ms
  lease_ttl: 2s
  heartbeat_interval: 300ms
`, filepath.Join(shared, "noise_private.key"), derpMap, name)
}

// startServers starts servers named names on db, serving one tailnet.
func startServers(t *testing.T, db pgtest.Database, names ...string) []*servertest.Server {
	t.Helper()
	shared := t.TempDir()
	var out []*servertest.Server
	for _, n := range names {
		out = append(out, servertest.Start(t, servertest.Options{Postgres: &db, ExtraYAML: clusterYAML(t, shared, n), Several: true}))
	}
	return out
}

// TestClusterServesOneTailnet: three servers on one database serve one
// tailnet. Simulated nodes spread over them (node i on server i mod 3)
// all see each other, a node on one server sees one on another online,
// and a server that stops takes its nodes offline for the others' nodes
// at once (it leaves the server list as it stops).
func TestClusterServesOneTailnet(t *testing.T) {
	db := pg.Database(t)
	srvs := startServers(t, db, "a", "b", "c")
	a := srvs[0]
	user := a.CreateUser(t, "alice")
	key := a.CreatePreAuthKey(t, user, true, time.Now().Add(time.Hour))

	cfg := loadgen.DefaultConfig()
	var urls []string
	for _, s := range srvs {
		urls = append(urls, s.URL)
	}
	cfg.URL = strings.Join(urls, ",")
	cfg.AuthKey = key
	cfg.N = 9
	cfg.Hostname = "fleet"
	cfg.Concurrency = 9
	cfg.RegisterTimeout = time.Minute
	cfg.ConvergeTimeout = time.Minute
	if testing.Verbose() {
		cfg.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	f, err := loadgen.StartFleet(ctx, cfg)
	if err != nil {
		t.Fatalf("9 nodes over 3 servers did not converge: %v", err)
	}
	defer f.Close()

	// Node 1 is on b; node 0 (on a) is online for it.
	online := func(i, of int) (bool, error) {
		peers, err := f.Peers(ctx, i)
		if err != nil {
			return false, err
		}
		for _, p := range peers {
			if p.Hostname == f.Hostname(of) {
				return p.Online, nil
			}
		}
		return false, fmt.Errorf("%s is not a peer of %s", f.Hostname(of), f.Hostname(i))
	}
	tstest.WaitFor(t, 30*time.Second, "node 0 (on a) online for node 1 (on b)", func() error {
		if on, err := online(1, 0); err != nil || !on {
			return fmt.Errorf("online %v, %v", on, err)
		}
		return nil
	})
	// Every server lists all nine nodes.
	for i, s := range srvs {
		body := string(s.MustAPI(t, "GET", "/api/v1/node", ""))
		if got := strings.Count(body, `"givenName"`); got != 9 {
			t.Errorf("server %d lists %d nodes, want 9", i, got)
		}
	}

	// a stops: its nodes (0, 3, 6) go offline for node 1 on b.
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 30*time.Second, "node 0 offline for node 1 after a stopped", func() error {
		if on, err := online(1, 0); err != nil || on {
			return fmt.Errorf("online %v, %v", on, err)
		}
		return nil
	})
	// b and c still serve: node 2 (on c) is online for node 1 (on b).
	if on, err := online(1, 2); err != nil || !on {
		t.Errorf("node 2 (on c) for node 1 (on b): online %v, %v", on, err)
	}
}
