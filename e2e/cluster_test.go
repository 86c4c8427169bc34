//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"github.com/jackc/pgx/v5"
	"tailscale.com/client/local"
	"tailscale.com/derp/derphttp"
	"tailscale.com/net/netmon"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// clusterLB is the load balancer in front of the cluster's servers: the
// shipped example, rendered for them.
type clusterLB struct {
	rp     reverseProxy
	render func(t *testing.T, p *proxyRun, upstreams []string)
}

// relayName is the name server i's DERP relay is reached by through the
// balancer (its region's hostname in the DERP map).
func relayName(i int) string { return fmt.Sprintf("hs%d.e2e.test", i+1) }

// haproxyCluster runs packaging/examples/haproxy-cluster.cfg with only
// its certificate path, port, server addresses and relay names replaced;
// its certificate covers the relays' names too.
var haproxyCluster = clusterLB{
	rp: reverseProxy{name: "haproxy", pkg: "haproxy", host: "haproxy.e2e.test"},
	render: func(t *testing.T, p *proxyRun, upstreams []string) {
		leaf, err := p.env.CA.Issue(0, p.host, relayName(0), relayName(1), relayName(2))
		if err != nil {
			t.Fatal(err)
		}
		certPath, keyPath, err := leaf.Write(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		pem := filepath.Join(p.dir, "haproxy.pem")
		cert, _ := os.ReadFile(certPath)
		key, _ := os.ReadFile(keyPath)
		writeFile(t, pem, string(cert)+string(key))
		cfg := renderExample(t, "haproxy-cluster.cfg",
			"/etc/haproxy/certs/headscale.pem", pem,
			"bind :443 ", fmt.Sprintf("bind 127.0.0.1:%d ", p.port),
			"10.0.0.11:8080", upstreams[0], "10.0.0.12:8080", upstreams[1], "10.0.0.13:8080", upstreams[2],
			"hs1.example.com", relayName(0), "hs2.example.com", relayName(1), "hs3.example.com", relayName(2),
			// Its request log to its output, the test's log file.
			"log /dev/log local0", "log stdout format raw local0")
		writeFile(t, filepath.Join(p.dir, "haproxy.cfg"), cfg)
		p.run(t, "-db", "-f", filepath.Join(p.dir, "haproxy.cfg"), "-p", filepath.Join(p.dir, "haproxy.pid"))
	},
}

// nginxCluster runs packaging/examples/nginx-cluster.conf with only its
// host name, port, certificate paths and server addresses replaced.
var nginxCluster = clusterLB{
	rp: reverseProxy{name: "nginx", pkg: "nginx-light", host: "nginx.e2e.test"},
	render: func(t *testing.T, p *proxyRun, upstreams []string) {
		site := renderExample(t, "nginx-cluster.conf",
			"/etc/letsencrypt/live/headscale.example.com/fullchain.pem", p.certPath,
			"/etc/letsencrypt/live/headscale.example.com/privkey.pem", p.keyPath,
			"headscale.example.com", p.host,
			"listen 443 ssl http2;", fmt.Sprintf("listen 127.0.0.1:%d ssl http2;", p.port),
			"10.0.0.11:8080", upstreams[0], "10.0.0.12:8080", upstreams[1], "10.0.0.13:8080", upstreams[2])
		sitePath := filepath.Join(p.dir, "headscale.conf")
		writeFile(t, sitePath, site)
		runNginx(t, p, sitePath)
	},
}

// clusterRun is three servers serving one tailnet on one PostgreSQL
// behind a load balancer, and the clients that joined through it.
type clusterRun struct {
	t     *testing.T
	env   *Env
	db    string // DSN
	srvs  []*Server
	names []string // cluster.server_name of each
	nodes []*Node
}

// startCluster starts three servers on db, each with cluster.enabled, the
// first server's noise key copied to the others, and its embedded DERP
// relay as a region of its own (901, 902, 903) in one derp.paths file all
// of them read. Each region reaches its server's relay alone: by its name
// (relayName) over TLS through the balancer lb, which sends that name to
// that server, as the runbook sets it up.
func startCluster(t *testing.T, env *Env, dsn string, lb *proxyRun, opts func(i int) ServerOptions) *clusterRun {
	t.Helper()
	c := &clusterRun{t: t, env: env, db: dsn}
	shared := t.TempDir()
	derpPath := filepath.Join(shared, "derp.yaml")
	var derpMap strings.Builder
	derpMap.WriteString("regions:\n")
	ports, stun := make([]int, 3), make([]int, 3)
	for i := range 3 {
		ports[i], stun[i] = env.FreePort(t), env.FreePort(t)
		id := 901 + i
		fmt.Fprintf(&derpMap, `  %d:
    regionid: %d
    regioncode: hs%d
    regionname: "headscale-%d"
    nodes:
      - name: %da
        regionid: %d
        hostname: %s
        ipv4: 127.0.0.1
        ipv6: none
        derpport: %d
        stunport: %d
`, id, id, i+1, i+1, id, id, relayName(i), lb.port, stun[i])
	}
	writeFile(t, derpPath, derpMap.String())
	for i := range 3 {
		name := fmt.Sprintf("headscale-%d", i+1)
		o := opts(i)
		o.Port, o.STUNPort, o.DERPRegionID, o.DERPPaths, o.ServerURL = ports[i], stun[i], 901+i, []string{derpPath}, lb.URL()
		o.ExtraConfig += fmt.Sprintf("cluster:\n  enabled: true\n  server_name: %s\n  lease_ttl: 3s\n  heartbeat_interval: 500ms\n", name)
		if i > 0 {
			first := c.srvs[0].Dir
			o.Prepare = func(dir string) {
				b, err := os.ReadFile(filepath.Join(first, "noise.key"))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(dir, "noise.key"), string(b))
			}
		}
		c.srvs = append(c.srvs, StartServer(t, o))
		c.names = append(c.names, name)
	}
	return c
}

// upstreams are the servers' listen addresses.
func (c *clusterRun) upstreams() []string {
	var out []string
	for _, s := range c.srvs {
		out = append(out, fmt.Sprintf("127.0.0.1:%d", s.Port))
	}
	return out
}

// metric reads an unlabelled metric from server i's /metrics.
func (c *clusterRun) metric(i int, name string) (float64, error) {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", c.srvs[i].MetricsPort))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("%s: no %s in /metrics", c.names[i], name)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}

// placement returns, from the database, which live server holds each
// node's map session (host name -> server name; a node with sessions on
// two servers, while one moves, is listed under both, comma-separated).
func (c *clusterRun) placement() (map[string]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.db)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT n.hostname, cs.name FROM node_sessions ns
JOIN cluster_servers cs ON cs.id = ns.server_id JOIN nodes n ON n.id = ns.node_id
WHERE cs.expires_at > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT ORDER BY 1, 2`)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for rows.Next() {
		var host, srv string
		if err := rows.Scan(&host, &srv); err != nil {
			return nil, err
		}
		if out[host] != "" {
			srv = out[host] + "," + srv
		}
		out[host] = srv
	}
	return out, rows.Err()
}

// settled waits until every node has exactly one session, the servers'
// headscale_map_sessions_open agree with the database, and returns the
// placement and each server's count. Servers in skip (killed) are not
// asked.
func (c *clusterRun) settled(timeout time.Duration, skip int) (map[string]string, []int) {
	c.t.Helper()
	var where map[string]string
	var counts []int
	tstest.WaitFor(c.t, timeout, "every client's map session on one live server", func() error {
		p, err := c.placement()
		if err != nil {
			return err
		}
		counts = make([]int, len(c.srvs))
		for _, n := range c.nodes {
			srv := p[n.Name]
			i := slices.Index(c.names, srv)
			if i < 0 || i == skip {
				return fmt.Errorf("%s's session: %q (placement %v)", n.Name, srv, p)
			}
			counts[i]++
		}
		for i := range c.srvs {
			if i == skip {
				continue
			}
			open, err := c.metric(i, "headscale_map_sessions_open")
			if err != nil {
				return err
			}
			if int(open) != counts[i] {
				return fmt.Errorf("%s: headscale_map_sessions_open %v, the database says %d (%v)", c.names[i], open, counts[i], p)
			}
		}
		where = p
		return nil
	})
	return where, counts
}

// on returns the nodes whose session is on server name.
func (c *clusterRun) on(where map[string]string, name string) []*Node {
	var out []*Node
	for _, n := range c.nodes {
		if where[n.Name] == name {
			out = append(out, n)
		}
	}
	return out
}

// allSeeAll waits until every node lists every other node as an online
// peer.
func (c *clusterRun) allSeeAll(timeout time.Duration) {
	c.t.Helper()
	tstest.WaitFor(c.t, timeout, "every client to see every other online", func() error {
		for _, n := range c.nodes {
			st, err := n.Status()
			if err != nil {
				return err
			}
			for _, m := range c.nodes {
				if m == n {
					continue
				}
				if p := findPeer(st, m.Name); p == nil || !p.Online {
					return fmt.Errorf("%s: %s missing or offline among %v", n.Name, m.Name, peerNames(st))
				}
			}
		}
		return nil
	})
}

// membership returns /health's cluster:membership check of server i.
func (c *clusterRun) membership(i int) (servers int, status string, err error) {
	cl := c.env.HTTPClient()
	cl.Timeout = 2 * time.Second
	resp, err := cl.Get(c.srvs[i].Direct + "/health")
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var h struct {
		Checks map[string][]struct {
			Status        string `json:"status"`
			ObservedValue int    `json:"observedValue"`
		} `json:"checks"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		return 0, "", err
	}
	m := h.Checks["cluster:membership"]
	if len(m) != 1 {
		return 0, "", fmt.Errorf("%s: /health has no cluster:membership check", c.names[i])
	}
	return m[0].ObservedValue, m[0].Status, nil
}

// pinger sends a TSMP ping (through WireGuard: the data path) from one
// node to another every 100ms and records when each answer came.
type pinger struct {
	mu      sync.Mutex
	ok      []time.Time
	failed  int
	lastErr string
	stop    context.CancelFunc
	done    chan struct{}
}

func startPinger(from, to *Node) *pinger {
	ip := to.IPv4()
	ctx, cancel := context.WithCancel(context.Background())
	p := &pinger{stop: cancel, done: make(chan struct{})}
	lc := &local.Client{Socket: from.Socket, UseSocketOnly: true}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for ctx.Err() == nil {
			pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
			res, err := lc.Ping(pctx, ip, tailcfg.PingTSMP)
			pcancel()
			p.mu.Lock()
			switch {
			case err == nil && res.Err == "":
				p.ok = append(p.ok, time.Now())
			case ctx.Err() != nil:
			case err != nil:
				p.failed++
				p.lastErr = err.Error()
			default:
				p.failed++
				p.lastErr = res.Err
			}
			p.mu.Unlock()
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}()
	return p
}

// answeredAfter reports whether an answer came after at.
func (p *pinger) answeredAfter(at time.Time) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ok) == 0 || !p.ok[len(p.ok)-1].After(at) {
		return fmt.Errorf("no TSMP answer since %s (%d failed, last: %s)", at.Format(time.StampMilli), p.failed, p.lastErr)
	}
	return nil
}

// finish stops the pings and returns the longest time without an answer
// from start until the pings stopped, how many answers came in that time
// and how many pings failed.
func (p *pinger) finish(start time.Time) (gap time.Duration, answers, failed int, lastErr string) {
	p.stop()
	<-p.done
	end := time.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	last := start
	for _, at := range p.ok {
		if at.Before(start) {
			continue
		}
		gap = max(gap, at.Sub(last))
		last = at
		answers++
	}
	gap = max(gap, end.Sub(last))
	return gap, answers, p.failed, p.lastErr
}

// logCount fails unless the proxy's log holds line at least n times.
func (p *proxyRun) logCount(line string, n int) error {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err
	}
	if got := strings.Count(string(b), line); got < n {
		return fmt.Errorf("%s holds %q %d times, want %d", p.logPath, line, got, n)
	}
	return nil
}

// peerEndpoints returns the endpoints of the peer called name in n's
// network map (`tailscale debug netmap`): what n's control server sent.
func peerEndpoints(n *Node, name string) ([]string, error) {
	out, err := n.CLI(15*time.Second, "debug", "netmap")
	if err != nil {
		return nil, err
	}
	var nm struct {
		Peers []struct {
			Hostinfo struct {
				Hostname string
			}
			Endpoints []string
		}
	}
	if err := json.Unmarshal([]byte(out), &nm); err != nil {
		return nil, fmt.Errorf("%s: tailscale debug netmap: %w", n.Name, err)
	}
	for _, p := range nm.Peers {
		if p.Hostinfo.Hostname == name {
			return p.Endpoints, nil
		}
	}
	return nil, fmt.Errorf("%s's network map has no peer %s", n.Name, name)
}

// relayKey connects a DERP client to url (through dial, when set, instead
// of the URL's host), trusting the run's roots, and returns the relay's
// key from the handshake.
func relayKey(t *testing.T, env *Env, url, dial string) key.NodePublic {
	t.Helper()
	c, err := derphttp.NewClient(key.NewNode(), url, t.Logf, netmon.NewStatic())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.TLSConfig = env.HTTPClient().Transport.(*http.Transport).TLSClientConfig
	if dial != "" {
		c.SetURLDialer(func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, dial)
		})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := c.Connect(ctx); err != nil {
		t.Fatalf("DERP connection to %s: %v", url, err)
	}
	k := c.ServerPublicKey()
	if k.IsZero() {
		t.Fatalf("DERP connection to %s: no relay key", url)
	}
	return k
}

// TestClusterBehindLoadBalancer serves one tailnet from three servers on
// one PostgreSQL (cluster.enabled, one noise key, each server's DERP
// relay a region of its own, reached over TLS by its name through the
// balancer) behind HAProxy run from the shipped
// packaging/examples/haproxy-cluster.cfg, with six official clients that
// join through it:
//
//  1. they spread over the servers (the database's sessions and each
//     server's headscale_map_sessions_open agree), all see each other,
//     ping and move bytes across servers;
//  2. a client restarted on another UDP port: a peer on another server
//     learns its new endpoint;
//  3. a route advertised by a client and approved through one server's
//     CLI (its own socket) is served to a client on another server;
//  4. the server with the most sessions is killed (SIGKILL), right after
//     it acknowledged a write, while a ping loop runs between one of its
//     clients and a client elsewhere: its clients move through HAProxy by
//     themselves, every view converges, HAProxy's check takes it out, the
//     others declare it gone and have its last write, the pings go on, and
//     the killed server, started again, rejoins (the others count it,
//     HAProxy takes it back and sends the next client to it).
//
// Then one client joins through nginx, run from the shipped
// nginx-cluster.conf in front of the same servers. The times measured
// (sessions moved, views converged, longest ping gap) are logged.
func TestClusterBehindLoadBalancer(t *testing.T) {
	env := requireHosts(t)
	db := pg.Database(t)
	lb := newProxyRun(t, env, haproxyCluster.rp)
	c := startCluster(t, env, db.DSN(), lb, func(int) ServerOptions {
		return ServerOptions{Postgres: &db, ExtraConfig: "trusted_proxies: [127.0.0.1]\n"}
	})
	haproxyCluster.render(t, lb, c.upstreams())
	// Nodes started in subtests live as long as the whole test.
	parent := t

	srv := c.srvs[0]
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	start := time.Now()
	for i := range 6 {
		n := StartNode(t, srv, fmt.Sprintf("member-%d", i+1), NodeOptions{})
		n.MustUp(key.Key)
		c.nodes = append(c.nodes, n)
	}
	where, counts := c.settled(30*time.Second, -1)
	t.Logf("placement after joining through HAProxy: %v (sessions per server %v)", where, counts)
	if busy := len(slices.DeleteFunc(slices.Clone(counts), func(n int) bool { return n == 0 })); busy < 2 {
		t.Fatalf("six clients through HAProxy landed on %d server(s): %v", busy, where)
	}

	// 1. Everyone sees everyone, pings and sends bytes across servers.
	c.allSeeAll(peerTimeout)
	t.Logf("six clients joined and see each other in %v", time.Since(start).Round(time.Millisecond))
	a := c.nodes[0]
	for _, b := range c.nodes[1:] {
		if where[b.Name] != where[a.Name] {
			mustPing(t, a, b)
			SendBytes(t, a, b, b.ListenPort, randomBytes(t, 256<<10))
			break
		}
	}
	for _, b := range c.nodes[1:] {
		mustPing(t, b, a)
	}

	t.Run("an endpoint change reaches a peer on another server", func(t *testing.T) {
		m := c.nodes[1]
		m.UDPPort = env.FreePort(t)
		changed := time.Now()
		m.Restart()
		where, _ := c.settled(30*time.Second, -1)
		var peer *Node
		for _, n := range c.nodes {
			if where[n.Name] != where[m.Name] {
				peer = n
				break
			}
		}
		if peer == nil {
			t.Fatalf("every client on %s: %v", where[m.Name], where)
		}
		suffix := ":" + strconv.Itoa(m.UDPPort)
		// The endpoints the peer's network map (from its server) holds;
		// status --json does not list a peer's endpoints.
		tstest.WaitFor(t, 30*time.Second, "the new endpoint at the peer", func() error {
			eps, err := peerEndpoints(peer, m.Name)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(eps, func(a string) bool { return strings.HasSuffix(a, suffix) }) {
				return fmt.Errorf("%s's network map has %s's endpoints %v, none on port %d", peer.Name, m.Name, eps, m.UDPPort)
			}
			return nil
		})
		t.Logf("%s (on %s) restarted on UDP port %d; %s (on %s) has the endpoint %v later",
			m.Name, where[m.Name], m.UDPPort, peer.Name, where[peer.Name], time.Since(changed).Round(time.Millisecond))
		mustPing(t, peer, m)
	})

	t.Run("a route approved through one server is served to a client of another", func(t *testing.T) {
		const subnet = "10.44.0.0/24"
		want := netip.MustParsePrefix(subnet)
		router := c.nodes[2]
		if _, err := router.CLI(30*time.Second, "set", "--advertise-routes="+subnet); err != nil {
			t.Fatal(err)
		}
		where, _ := c.settled(30*time.Second, -1)
		// Approve on a server other than the router's, and watch from a
		// client of a third (or at least not of the approving) server.
		y := slices.IndexFunc(c.names, func(n string) bool { return n != where[router.Name] })
		var observer *Node
		for _, n := range c.nodes {
			if n != router && where[n.Name] != c.names[y] && (observer == nil || where[n.Name] != where[router.Name]) {
				observer = n
			}
		}
		if observer == nil {
			t.Fatalf("no client off %s: %v", c.names[y], where)
		}
		var id ID
		tstest.WaitFor(t, 30*time.Second, "the advertised route at "+c.names[y], func() error {
			r, err := c.srvs[y].nodeRoutes(t, router.Name)
			if err != nil {
				return err
			}
			if !slices.Contains(r.AvailableRoutes, subnet) {
				return fmt.Errorf("%s: %s's available routes %v", c.names[y], router.Name, r.AvailableRoutes)
			}
			id = r.ID
			return nil
		})
		approved := time.Now()
		if _, err := c.srvs[y].CLI(t, "nodes", "approve-routes", "-i", string(id), "-r", subnet); err != nil {
			t.Fatal(err)
		}
		tstest.WaitFor(t, 30*time.Second, "the route at the observer", func() error {
			_, routes, err := peerPrimaryRoutes(observer, router)
			if err != nil {
				return err
			}
			if !slices.Contains(routes, want) {
				return fmt.Errorf("%s: %s's PrimaryRoutes %v lack %s", observer.Name, router.Name, routes, subnet)
			}
			return nil
		})
		t.Logf("route of %s (on %s) approved through %s's CLI, served to %s (on %s) %v later",
			router.Name, where[router.Name], c.names[y], observer.Name, where[observer.Name], time.Since(approved).Round(time.Millisecond))
	})

	t.Run("each relay's name reaches its own server through HAProxy", func(t *testing.T) {
		// A DERP handshake names the relay's own key, which differs per
		// server: through HAProxy by name and straight to the server, the
		// same key.
		keys := map[string]int{}
		for i, s := range c.srvs {
			direct := relayKey(t, env, fmt.Sprintf("http://127.0.0.1:%d/derp", s.Port), "")
			byName := relayKey(t, env, fmt.Sprintf("https://%s:%d/derp", relayName(i), lb.port), fmt.Sprintf("127.0.0.1:%d", lb.port))
			if byName != direct {
				t.Errorf("%s through HAProxy reached relay %v; %s's own relay is %v", relayName(i), byName.ShortString(), c.names[i], direct.ShortString())
			}
			keys[direct.String()] = i
		}
		if len(keys) != len(c.srvs) {
			t.Errorf("the servers' relays share keys: %v", keys)
		}
	})

	t.Run("clients homed on different servers' relays talk over DERP", func(t *testing.T) {
		// Two clients without UDP between them (DERP only), each told to
		// prefer another server's relay region, reached over TLS by its
		// name through HAProxy: the first to send goes through the other's
		// home relay, and the replies come back the same way.
		derpOnly := NodeOptions{Env: []string{"TS_DEBUG_ALWAYS_USE_DERP=1"}}
		var relayed []*Node
		for i, region := range []int{901, 903} {
			n := StartNode(t, srv, fmt.Sprintf("relayed-%d", i+1), derpOnly)
			n.MustUp(key.Key)
			code := fmt.Sprintf("hs%d", region-900)
			tstest.WaitFor(t, 30*time.Second, n.Name+"'s home relay "+code, func() error {
				if _, err := n.CLI(10*time.Second, "debug", "force-prefer-derp", strconv.Itoa(region)); err != nil {
					return err
				}
				if _, err := n.CLI(10*time.Second, "debug", "restun"); err != nil {
					return err
				}
				st, err := n.Status()
				if err != nil {
					return err
				}
				if st.Self == nil || st.Self.Relay != code {
					return fmt.Errorf("%s's home relay %q, want %s", n.Name, st.Self.Relay, code)
				}
				return nil
			})
			relayed = append(relayed, n)
		}
		x, y := relayed[0], relayed[1]
		x.WaitForPeer(y, peerTimeout)
		y.WaitForPeer(x, peerTimeout)
		for _, pair := range [][2]*Node{{x, y}, {y, x}} {
			if out := mustPing(t, pair[0], pair[1]); !strings.Contains(out, "via DERP") {
				t.Errorf("ping %s -> %s did not go over DERP: %s", pair[0].Name, pair[1].Name, out)
			}
		}
		SendBytes(t, x, y, y.ListenPort, randomBytes(t, 128<<10))
		SendBytes(t, y, x, x.ListenPort, randomBytes(t, 128<<10))
	})

	t.Run("kill -9 of the busiest server", func(t *testing.T) {
		where, counts := c.settled(30*time.Second, -1)
		victim := 0
		for i := range counts {
			if counts[i] > counts[victim] {
				victim = i
			}
		}
		moving := c.on(where, c.names[victim])
		var staying *Node
		for _, n := range c.nodes {
			if where[n.Name] != c.names[victim] {
				staying = n
				break
			}
		}
		from := moving[0]
		mustPing(t, from, staying)
		ping := startPinger(from, staying)
		defer ping.stop()
		tstest.WaitFor(t, 20*time.Second, "TSMP pings answered before the kill", func() error {
			return ping.answeredAfter(time.Time{})
		})

		// A write the killed server acknowledged just before: it is the
		// database's, so the others have it.
		c.srvs[victim].CreateUser(t, "acknowledged")

		killed := time.Now()
		c.srvs[victim].proc.kill()
		t.Logf("killed %s holding %d of %d sessions %v; pinging %s -> %s (on %s)",
			c.names[victim], counts[victim], len(c.nodes), where, from.Name, staying.Name, where[staying.Name])

		// The clients' new map sessions, as the other servers count them.
		tstest.WaitFor(t, 60*time.Second, "every client's session open on the other servers", func() error {
			open := 0.0
			for i := range c.srvs {
				if i != victim {
					n, err := c.metric(i, "headscale_map_sessions_open")
					if err != nil {
						return err
					}
					open += n
				}
			}
			if int(open) != len(c.nodes) {
				return fmt.Errorf("%v sessions open on the other servers, want %d", open, len(c.nodes))
			}
			return nil
		})
		reconnected := time.Since(killed)
		c.allSeeAll(60 * time.Second)
		converged := time.Since(killed)
		// HAProxy's health check takes the dead server out.
		down := fmt.Sprintf("Server headscale/%s is DOWN", c.names[victim])
		tstest.WaitFor(t, 30*time.Second, "HAProxy to take "+c.names[victim]+" out", func() error {
			return lb.logCount(down, 1)
		})
		markedDown := time.Since(killed)
		// The database agrees once the killed server's lease expired and
		// the others declared it gone; that takes none of its former
		// clients offline, since they are connected elsewhere.
		where, counts = c.settled(60*time.Second, victim)
		declared := time.Since(killed)
		c.allSeeAll(10 * time.Second)
		// The pings go on after all that.
		tstest.WaitFor(t, 10*time.Second, "TSMP pings answered after the dead server was declared gone", func() error {
			return ping.answeredAfter(killed.Add(declared))
		})
		gap, answers, failed, lastErr := ping.finish(killed)
		t.Logf("after the kill: its clients' sessions open on the others in %v; every view converged in %v; "+
			"HAProxy took it out in %v; the database agrees in %v (%v, per server %v); "+
			"TSMP pings %s -> %s every 100ms from the kill until %v: %d answered, %d failed (last error %q), longest gap %v",
			reconnected.Round(time.Millisecond), converged.Round(time.Millisecond), markedDown.Round(time.Millisecond),
			declared.Round(time.Millisecond), where, counts,
			from.Name, staying.Name, time.Since(killed).Round(time.Millisecond), answers, failed, lastErr, gap.Round(time.Millisecond))
		if gap > 3*time.Second {
			t.Errorf("the data path was interrupted for %v", gap)
		}
		for i := range c.srvs {
			if i == victim {
				continue
			}
			tstest.WaitFor(t, 30*time.Second, c.names[i]+" to count two servers", func() error {
				n, status, err := c.membership(i)
				if err != nil || n != 2 || status != "pass" {
					return fmt.Errorf("%s: cluster:membership %d servers, %q, %v", c.names[i], n, status, err)
				}
				return nil
			})
		}
		for _, n := range moving {
			mustPing(t, n, staying)
		}
		for i := range c.srvs {
			if i == victim {
				continue
			}
			var users []User
			c.srvs[i].cliJSON(t, &users, "users", "list", "-o", "json")
			if !slices.ContainsFunc(users, func(u User) bool { return u.Name == "acknowledged" }) {
				t.Errorf("%s lacks the user the killed server created just before: %v", c.names[i], users)
			}
		}
		SendBytes(t, staying, from, from.ListenPort, randomBytes(t, 256<<10))

		// The same server started again (new process, same config).
		restarted := time.Now()
		c.srvs[victim].start()
		for i := range c.srvs {
			tstest.WaitFor(t, 30*time.Second, c.names[i]+" to count three servers", func() error {
				n, status, err := c.membership(i)
				if err != nil || n != 3 || status != "pass" {
					return fmt.Errorf("%s: cluster:membership %d servers, %q, %v", c.names[i], n, status, err)
				}
				return nil
			})
		}
		// HAProxy's health check takes it back ("is UP" in its log, a
		// second time); with leastconn, the next client goes there.
		up := fmt.Sprintf("Server headscale/%s is UP", c.names[victim])
		tstest.WaitFor(t, 30*time.Second, "HAProxy to take "+c.names[victim]+" back", func() error {
			return lb.logCount(up, 1)
		})
		t.Logf("%s restarted: rejoined and taken back by HAProxy in %v", c.names[victim], time.Since(restarted).Round(time.Millisecond))
		late := StartNode(parent, srv, "member-late", NodeOptions{})
		late.MustUp(key.Key)
		c.nodes = append(c.nodes, late)
		where, _ = c.settled(30*time.Second, -1)
		if where[late.Name] != c.names[victim] {
			t.Errorf("a new client went to %s, want the restarted %s (fewest connections): %v", where[late.Name], c.names[victim], where)
		}
		c.allSeeAll(peerTimeout)
		mustPing(t, late, staying)
		mustPing(t, from, late)
	})

	t.Run("nginx in front of the same servers", func(t *testing.T) {
		p := newProxyRun(t, env, nginxCluster.rp)
		nginxCluster.render(t, p, c.upstreams())
		n := StartNode(parent, srv, "member-nginx", NodeOptions{})
		if out, err := n.CLI(2*time.Minute, "up", "--login-server", p.URL(), "--auth-key", key.Key, "--hostname", n.Name, "--timeout", "60s"); err != nil {
			t.Fatalf("tailscale up through nginx: %v\n%s", err, out)
		}
		c.nodes = append(c.nodes, n)
		c.allSeeAll(peerTimeout)
		mustPing(t, n, c.nodes[0])
	})
}
