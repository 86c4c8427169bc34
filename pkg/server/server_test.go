package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/server"
	"tailscale.com/control/ts2021"
	"tailscale.com/control/tsp"
	"tailscale.com/net/tsdial"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// testServer is a server run by internal/servertest, with the shorthands
// these tests use.
type testServer struct {
	*servertest.Server
}

func startServer(t *testing.T) *testServer {
	t.Helper()
	return startServerWith(t, "", "", nil)
}

// startServerWith runs a server in dir (a new temp dir when empty), with
// extraYAML merged into the test config and tweak adjusting the server
// before it listens.
func startServerWith(t testing.TB, dir, extraYAML string, tweak func(*server.Server)) *testServer {
	t.Helper()
	return &testServer{servertest.Start(t, engine(t, servertest.Options{Dir: dir, ExtraYAML: extraYAML, Tweak: tweak}))}
}

// key creates a pre-auth key for a new user.
func (ts *testServer) key(t testing.TB, reusable bool, exp time.Time) string {
	t.Helper()
	return ts.CreatePreAuthKey(t, ts.CreateUser(t, fmt.Sprintf("u%d", time.Now().UnixNano())), reusable, exp)
}

// makeKey creates a pre-auth key for the user with ID uid.
func (ts *testServer) makeKey(t testing.TB, uid ids.UserID, reusable bool, exp time.Time) string {
	t.Helper()
	return ts.CreatePreAuthKey(t, uid.String(), reusable, exp)
}

func doAPI(t testing.TB, h http.Handler, method, path, body string) string {
	t.Helper()
	srv := &http.Server{Handler: h}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Close()
	req, _ := http.NewRequest(method, "http://"+ln.Addr().String()+path, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func newClient(t *testing.T, url string) *tsp.Client {
	t.Helper()
	c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: url, MachineKey: key.NewMachine()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// register registers a new node key; a refusal comes back as the error
// text the client would show.
func register(t *testing.T, c *tsp.Client, authKey, host string) (key.NodePrivate, string) {
	t.Helper()
	nk := key.NewNode()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Register(ctx, tsp.RegisterOpts{NodeKey: nk, AuthKey: authKey, Hostinfo: &tailcfg.Hostinfo{Hostname: host}})
	if err != nil {
		return nk, err.Error()
	}
	if !resp.MachineAuthorized {
		return nk, "not authorized"
	}
	return nk, ""
}

func TestKeyRules(t *testing.T) {
	ts := startServer(t)
	single := ts.key(t, false, time.Now().Add(time.Hour))
	if _, msg := register(t, newClient(t, ts.URL), single, "a"); msg != "" {
		t.Fatalf("first use of single-use key: %s", msg)
	}
	if _, msg := register(t, newClient(t, ts.URL), single, "b"); !strings.Contains(msg, "already used") {
		t.Fatalf("second use: %q, want 'already used'", msg)
	}
	expired := ts.key(t, true, time.Now().Add(time.Hour))
	k, _ := ts.Store().ListPreAuthKeys(context.Background())
	ts.Store().ExpirePreAuthKey(context.Background(), k[len(k)-1].ID, time.Now().Add(-time.Second))
	if _, msg := register(t, newClient(t, ts.URL), expired, "c"); !strings.Contains(msg, "expired") {
		t.Fatalf("expired key: %q", msg)
	}
	bogus := "hskey-auth-000000000000-" + strings.Repeat("0", 64)
	if _, msg := register(t, newClient(t, ts.URL), bogus, "d"); !strings.Contains(msg, "invalid") {
		t.Fatalf("unknown key: %q", msg)
	}
	// No key: web registration (an AuthURL, nothing registered yet).
	if _, msg := register(t, newClient(t, ts.URL), "", "e"); msg != "not authorized" {
		t.Fatalf("no key: %q", msg)
	}
	if got := len(ts.State().Nodes()); got != 1 {
		t.Fatalf("nodes = %d, want 1", got)
	}
}

func TestOldClientRefused(t *testing.T) {
	ts := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pub, err := tsp.DiscoverServerKey(ctx, ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := ts2021.NewClient(ts2021.ClientOpts{
		ServerURL: ts.URL, PrivKey: key.NewMachine(), ServerPubKey: pub,
		Dialer: tsdial.NewFromFuncForDebug(t.Logf, (&net.Dialer{}).DialContext), ProtocolVersion: 100,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nk := key.NewNode().Public()
	res, err := nc.Post(ctx, "/machine/register", nk, &tailcfg.RegisterRequest{Version: 100, NodeKey: nk})
	if err != nil {
		t.Fatal(err)
	}
	var rr tailcfg.RegisterResponse
	json.NewDecoder(res.Body).Decode(&rr)
	res.Body.Close()
	if !strings.Contains(rr.Error, "v1.80.0") || !strings.Contains(rr.Error, "too old") {
		t.Fatalf("register Error = %q, want a clear too-old message", rr.Error)
	}
	res, err = nc.Post(ctx, "/machine/map", nk, &tailcfg.MapRequest{Version: 100, NodeKey: nk, Stream: true})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), "too old") {
		t.Fatalf("map: %d %q", res.StatusCode, b)
	}
}

// TestDeltas checks that a change reaches peers as a small delta: a disco
// key change as a patch, a host info change as one changed peer, and a
// deletion as a removal.
// openMap opens a streaming map session and returns it with its first
// (full) map; the session is closed when the test ends.
func openMap(t *testing.T, ctx context.Context, c *tsp.Client, nk key.NodePrivate, host string) (*tsp.MapSession, *tailcfg.MapResponse) {
	t.Helper()
	sess, err := c.Map(ctx, tsp.MapOpts{NodeKey: nk, Stream: true, Hostinfo: &tailcfg.Hostinfo{Hostname: host}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sess.Close() })
	full, err := sess.Next()
	if err != nil {
		t.Fatal(err)
	}
	return sess, full
}

func TestDeltas(t *testing.T) {
	ts := startServer(t)
	k := ts.key(t, true, time.Now().Add(time.Hour))
	ca, cb := newClient(t, ts.URL), newClient(t, ts.URL)
	nka, _ := register(t, ca, k, "alpha")
	nkb, _ := register(t, cb, k, "bravo")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, full := openMap(t, ctx, ca, nka, "alpha")
	if len(full.Peers) != 1 || full.Peers[0].Name != "bravo.tailnet.internal." || full.Node.Name != "alpha.tailnet.internal." {
		t.Fatalf("full map: self %q peers %d", full.Node.Name, len(full.Peers))
	}
	bravo := full.Peers[0].ID
	next := func(what string, ok func(*tailcfg.MapResponse) bool) *tailcfg.MapResponse {
		t.Helper()
		for {
			r, err := sess.Next()
			if err != nil {
				t.Fatalf("waiting for %s: %v", what, err)
			}
			if r.KeepAlive {
				continue
			}
			if ok(r) {
				return r
			}
			t.Logf("skipping %+v", r)
		}
	}
	disco := key.NewDisco().Public()
	if err := cb.SendMapUpdate(ctx, tsp.SendMapUpdateOpts{NodeKey: nkb, DiscoKey: disco, Hostinfo: &tailcfg.Hostinfo{Hostname: "bravo"}}); err != nil {
		t.Fatal(err)
	}
	r := next("disco patch", func(r *tailcfg.MapResponse) bool { return len(r.PeersChangedPatch) > 0 })
	if p := r.PeersChangedPatch[0]; p.NodeID != bravo || p.DiscoKey == nil || *p.DiscoKey != disco || len(r.PeersChanged) != 0 || r.Peers != nil {
		t.Fatalf("want only a disco patch for bravo, got %+v", r)
	}
	if err := cb.SendMapUpdate(ctx, tsp.SendMapUpdateOpts{NodeKey: nkb, Hostinfo: &tailcfg.Hostinfo{Hostname: "bravo", OS: "plan9"}}); err != nil {
		t.Fatal(err)
	}
	r = next("changed peer", func(r *tailcfg.MapResponse) bool { return len(r.PeersChanged) > 0 })
	if len(r.PeersChanged) != 1 || r.PeersChanged[0].ID != bravo || r.PeersChanged[0].Hostinfo.OS() != "plan9" || r.Peers != nil {
		t.Fatalf("want bravo changed, got %+v", r)
	}
	if err := ts.State().DeleteNode(ctx, ids.NodeID(bravo)); err != nil {
		t.Fatal(err)
	}
	r = next("removal", func(r *tailcfg.MapResponse) bool { return len(r.PeersRemoved) > 0 })
	if r.PeersRemoved[0] != bravo {
		t.Fatalf("removed %v", r.PeersRemoved)
	}
}

func TestHealth(t *testing.T) {
	ts := startServer(t)
	get := func() (int, string) {
		resp, err := http.Get(ts.URL + "/health")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(); code != 200 || !strings.Contains(body, `"pass"`) {
		t.Fatalf("healthy: %d %s", code, body)
	}
	// A database that no longer answers makes /health fail.
	ts.Store().Close()
	if code, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(body, `"fail"`) {
		t.Fatalf("dead database: %d %s", code, body)
	}
}

func TestMetrics(t *testing.T) {
	ts := startServer(t)
	k := ts.key(t, true, time.Now().Add(time.Hour))
	register(t, newClient(t, ts.URL), k, "one")
	// One API call with no key (401) and /health (200) through the main
	// listener, so the request metrics have something to count.
	for _, path := range []string{"/api/v1/node/1", "/health"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	body := doAPI(t, ts.Metrics().Handler(), "GET", "/metrics", "")
	pool := "write" // SQLite's writing pool; PostgreSQL has one pool
	if ts.Store().Engine() == "postgres" {
		pool = "postgres"
	}
	for _, want := range []string{
		"headscale_nodes_total 1", "headscale_online_nodes 0", `headscale_registrations_total{outcome="registered"} 1`,
		`headscale_http_requests_total{code="401",route="other"} 1`,
		`headscale_http_requests_total{code="200",route="GET /health"} 1`,
		`headscale_http_request_duration_seconds_count{route="GET /health"} 1`,
		`headscale_db_query_duration_seconds_count{op="register_nodes"} 1`,
		`go_sql_open_connections{db_name="` + pool + `"}`,
		"headscale_derp_connections 0", "headscale_derp_connections_total 0", "headscale_derp_bytes_relayed_total 0",
		"headscale_map_sessions_open",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestNonStreamingMap: a map request with Stream false that wants peers
// gets one full map and the stream ends; the node is not marked online.
func TestNonStreamingMap(t *testing.T) {
	ts := startServer(t)
	k := ts.key(t, true, time.Now().Add(time.Hour))
	ca, cb := newClient(t, ts.URL), newClient(t, ts.URL)
	nka, _ := register(t, ca, k, "alpha")
	register(t, cb, k, "bravo")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, err := ca.Map(ctx, tsp.MapOpts{NodeKey: nka, Stream: false, Hostinfo: &tailcfg.Hostinfo{Hostname: "alpha"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	full, err := sess.Next()
	if err != nil {
		t.Fatalf("reading the one full map: %v", err)
	}
	if full.Node == nil || len(full.Peers) != 1 || full.Peers[0].Name != "bravo.tailnet.internal." {
		t.Fatalf("full map: self %v, %d peers", full.Node != nil, len(full.Peers))
	}
	if _, err := sess.Next(); err == nil {
		t.Fatal("a second message on a non-streaming map")
	}
	if _, online := ts.State().Counts(); online != 0 {
		t.Errorf("%d nodes online after a non-streaming poll, want 0", online)
	}
}
