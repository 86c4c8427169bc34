package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
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
	defer func() {
		f.Close()
		// The nodes of the stopped server were redialing it; a dial in
		// flight ends on its own (its HTTP transport finishes it).
		tstest.WaitFor(t, 30*time.Second, "the fleet's dials end", func() error {
			buf := make([]byte, 1<<20)
			if st := string(buf[:runtime.Stack(buf, true)]); strings.Contains(st, "controlhttp.(*Dialer).dial") {
				return fmt.Errorf("a control dial is still running")
			}
			return nil
		})
	}()

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

// TestClusterLoadCrossServer: the load tool over two servers of one
// tailnet fills its cross-server figures: changes reach receivers on the
// sender's server and on the other one, nothing is lost, and the
// servers' change-log and database counters and PostgreSQL's transaction
// count move. Validations only; the timings are the tool's output.
func TestClusterLoadCrossServer(t *testing.T) {
	if testing.Short() {
		t.Skip("200 simulated nodes over two servers: not in -short")
	}
	db := pg.Database(t)
	shared := t.TempDir()
	var srvs []*servertest.Server
	var urls, metrics []string
	for _, name := range []string{"a", "b"} {
		port := freePort(t)
		extra := clusterYAML(t, shared, name) + fmt.Sprintf("metrics_listen_addr: 127.0.0.1:%d\n", port)
		s := servertest.Start(t, servertest.Options{Postgres: &db, ExtraYAML: extra, Several: true, DiscardLogs: true})
		srvs = append(srvs, s)
		urls = append(urls, s.URL)
		metrics = append(metrics, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	}
	user := srvs[0].CreateUser(t, "load")
	cfg := loadgen.DefaultConfig()
	cfg.URL = strings.Join(urls, ",")
	cfg.AuthKey = srvs[0].CreatePreAuthKey(t, user, true, time.Now().Add(time.Hour))
	cfg.N = 200
	cfg.Concurrency = 16
	cfg.Phases = []string{loadgen.PhaseRegister, loadgen.PhasePropagate, loadgen.PhaseChurn}
	cfg.Changes = 5
	cfg.ChurnRate = 40
	cfg.ChurnDuration = 2 * time.Second
	cfg.ChurnGrace = 20 * time.Second
	cfg.ChangeTimeout = 20 * time.Second
	cfg.RegisterTimeout = 2 * time.Minute
	cfg.ConvergeTimeout = 2 * time.Minute
	cfg.ServerPIDs = []int{os.Getpid(), os.Getpid()} // both run in this process
	cfg.MetricsURLs = metrics
	cfg.PGDSN = db.DSN()
	if testing.Verbose() {
		cfg.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	rep, err := loadgen.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	rep.WriteTable(&table)
	t.Logf("\n%s", table.String())

	var xacts float64
	for _, p := range rep.Phases {
		for _, c := range p.Checks {
			if !c.OK {
				t.Errorf("%s: %s: %s", p.Name, c.Name, c.Detail)
			}
		}
		for _, e := range p.Errors {
			t.Errorf("%s: %s", p.Name, e)
		}
		if len(p.Servers) != 2 || p.Server == nil || p.Server.CPUSeconds <= 0 {
			t.Errorf("%s: server figures %+v, each %+v", p.Name, p.Server, p.Servers)
		}
		if len(p.ServerMetrics) != 2 || p.ServerMetrics[0] == nil || p.ServerMetrics[1] == nil {
			t.Errorf("%s: server metrics %v", p.Name, p.ServerMetrics)
		}
		// pg_stat_database trails busy backends by up to a second or
		// so: a short phase may see none of its own transactions yet.
		if _, ok := p.Metrics["pg_xacts"]; !ok || p.Metrics["server_db_ops"] <= 0 {
			t.Errorf("%s: no database figures: %v", p.Name, p.Metrics)
		}
		xacts += p.Metrics["pg_xacts"]
	}
	if xacts <= 0 {
		t.Errorf("PostgreSQL counted no transaction in the whole run")
	}
	for _, name := range []string{loadgen.PhasePropagate, loadgen.PhaseChurn} {
		p := rep.Phase(name)
		if p == nil || p.Skipped != "" {
			t.Fatalf("%s did not run: %+v", name, p)
		}
		if p.Lost != 0 {
			t.Errorf("%s: %d lost", name, p.Lost)
		}
		// Half the receivers of every change are on the other server.
		if p.SameServer == nil || p.CrossServer == nil || p.SameServer.Count == 0 || p.CrossServer.Count == 0 ||
			p.SameServer.Count+p.CrossServer.Count != p.Latency.Count {
			t.Errorf("%s: same-server %+v, cross-server %+v, all %+v", name, p.SameServer, p.CrossServer, p.Latency)
		}
		if p.CrossServer.P99 <= 0 || p.Metrics["cluster_records_applied"] <= 0 {
			t.Errorf("%s: cross-server p99 %v, change-log records applied %v", name, p.CrossServer.P99, p.Metrics["cluster_records_applied"])
		}
		if !strings.Contains(table.String(), "on another server: p50") {
			t.Errorf("the table has no cross-server line")
		}
	}
}
