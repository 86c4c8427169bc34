package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/testca"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/control"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/loadgen"
	"github.com/hsctl/headscale/pkg/server"
	"tailscale.com/control/tsp"
	"tailscale.com/derp"
	"tailscale.com/derp/derphttp"
	"tailscale.com/net/netmon"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// limitHits reads headscale_limit_hits_total{limit=name} from the server's
// metrics.
func (ts *testServer) limitHits(t testing.TB, name string) int {
	t.Helper()
	body := doAPI(t, ts.Metrics().Handler(), "GET", "/metrics", "")
	m := regexp.MustCompile(`(?m)^headscale_limit_hits_total\{limit="` + regexp.QuoteMeta(name) + `"\} (\d+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// hitsAbove is nil when a limit's hits exceed n.
func hitsAbove(hits, n int) error {
	if hits > n {
		return nil
	}
	return fmt.Errorf("%d hits, want more than %d", hits, n)
}

// nextPeerChange reads sess until bravo arrives as a changed peer.
func nextPeerChange(t *testing.T, sess *tsp.MapSession, bravo tailcfg.NodeID, what string) {
	t.Helper()
	tstest.Within(t, 30*time.Second, what, func() error {
		for {
			r, err := sess.Next()
			if err != nil {
				return err
			}
			if len(r.PeersChanged) > 0 && r.PeersChanged[0].ID == bravo {
				return nil
			}
		}
	})
}

// closedByServer reads from c until the server closes it (EOF or reset),
// failing the test if that takes longer than d.
func closedByServer(t *testing.T, c net.Conn, d time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("server did not close the connection within %v (read %q)", d, b)
	}
	return string(b)
}

func (ts *testServer) apiKey(t *testing.T) string {
	t.Helper()
	var out struct {
		APIKey string `json:"apiKey"`
	}
	if err := json.Unmarshal([]byte(doAPI(t, ts.APIHandler(), "POST", "/api/v1/apikey", "{}")), &out); err != nil || out.APIKey == "" {
		t.Fatalf("creating API key: %v", err)
	}
	return out.APIKey
}

// TestHTTPListenerLimits: a client that sends its headers byte by byte, a
// body too slowly, headers or a body too large is answered where HTTP
// allows and closed, and the limit is counted under its name.
func TestHTTPListenerLimits(t *testing.T) {
	tests := []struct {
		name     string
		send     func(t *testing.T, c net.Conn, apiKey string)
		wantResp string // the start of the answer, if the server answers
		limit    string
	}{
		{
			name: "headers byte by byte (slow-loris)",
			send: func(t *testing.T, c net.Conn, _ string) {
				go func() {
					for _, b := range []byte("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 1000)) {
						if _, err := c.Write([]byte{b}); err != nil {
							return
						}
						time.Sleep(10 * time.Millisecond)
					}
				}()
			},
			limit: "http_header_timeout",
		},
		{
			name: "body never sent",
			send: func(t *testing.T, c net.Conn, apiKey string) {
				fmt.Fprintf(c, "POST /api/v1/policy/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{", apiKey)
			},
			wantResp: "HTTP/1.1 400",
			limit:    "http_read_timeout",
		},
		{
			name: "headers too large",
			send: func(t *testing.T, c net.Conn, _ string) {
				go fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", server.MaxHeaderBytes+8192))
			},
			wantResp: "HTTP/1.1 431",
			limit:    "http_header_size",
		},
		{
			name: "API body too large",
			send: func(t *testing.T, c net.Conn, apiKey string) {
				body := `{"policy":"` + strings.Repeat("a", api.MaxBodyBytes) + `"}`
				go fmt.Fprintf(c, "POST /api/v1/policy/check HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", apiKey, len(body), body)
			},
			wantResp: "HTTP/1.1 413",
			limit:    "api_body_size",
		},
	}
	ts := startServerWith(t, t.TempDir(), "", func(s *server.Server) {
		s.MainHTTP().ReadHeader = 300 * time.Millisecond
		s.MainHTTP().Read = 500 * time.Millisecond
	})
	apiKey := ts.apiKey(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := ts.limitHits(t, tt.limit)
			c, err := net.Dial("tcp", ts.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			tt.send(t, c, apiKey)
			got := closedByServer(t, c, 10*time.Second)
			if tt.wantResp != "" && !strings.HasPrefix(got, tt.wantResp) {
				t.Fatalf("answer %.200q, want %q", got, tt.wantResp)
			}
			if tt.wantResp == "HTTP/1.1 413" && !strings.Contains(got, "larger than") {
				t.Errorf("413 without a reason: %.300q", got)
			}
			tstest.WaitFor(t, 5*time.Second, "limit "+tt.limit+" counted", func() error { return hitsAbove(ts.limitHits(t, tt.limit), before) })
		})
	}
	// None of it stopped the server answering.
	if code, _ := get(t, http.DefaultClient, ts.URL+"/health", ""); code != http.StatusOK {
		t.Fatalf("/health after the limits: %d", code)
	}
}

func get(t *testing.T, c *http.Client, url, bearer string) (int, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// TestLongLivedConnectionsOutliveTimeouts: the HTTP timeouts end idle and
// slow plain HTTP connections, not the hijacked ones: a map stream over
// Noise and a DERP connection idle for longer than every timeout still
// carry traffic.
func TestLongLivedConnectionsOutliveTimeouts(t *testing.T) {
	const d = 200 * time.Millisecond
	ts := startServerWith(t, t.TempDir(), "", func(s *server.Server) {
		*s.MainHTTP() = server.HTTPLimits{ReadHeader: d, Read: d, Write: d, Idle: d, MaxHeaderBytes: server.MaxHeaderBytes}
	})
	k := ts.key(t, true, time.Now().Add(time.Hour))
	ca, cb := newClient(t, ts.URL), newClient(t, ts.URL)
	nka, _ := register(t, ca, k, "alpha")
	nkb, _ := register(t, cb, k, "bravo")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, full := openMap(t, ctx, ca, nka, "alpha")
	bravo := full.Peers[0].ID

	// DERP serves only nodes' keys.
	derpURL := ts.URL + "/derp"
	dk1, dk2 := nka, nkb
	d1, err := derphttp.NewClient(dk1, derpURL, t.Logf, netmon.NewStatic())
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	d2, err := derphttp.NewClient(dk2, derpURL, t.Logf, netmon.NewStatic())
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	if err := d1.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d2.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// pass sends want from one client to the other every 100 ms (the
	// server drops packets for a key it has not seen connect yet) until
	// it arrives, and returns the receiver's connection generation: it
	// changes if the client had to reconnect.
	pass := func(from, to *derphttp.Client, toKey key.NodePublic, want string) int {
		t.Helper()
		stop := make(chan struct{})
		defer close(stop)
		go func() {
			for {
				from.Send(toKey, []byte(want))
				select {
				case <-stop:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
		var gen int
		tstest.Within(t, 30*time.Second, "DERP receive "+want, func() error {
			for {
				m, g, err := to.RecvDetail()
				if err != nil {
					return err
				}
				if p, ok := m.(derp.ReceivedPacket); ok && string(p.Data) == want {
					gen = g
					return nil
				}
			}
		})
		return gen
	}
	gen1, gen2 := pass(d2, d1, dk1.Public(), "before"), pass(d1, d2, dk2.Public(), "before")

	// A plain HTTP connection left idle is closed by the idle timeout:
	// once it is, every timeout has passed for the connections above too.
	idle, err := net.Dial("tcp", ts.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	closedByServer(t, idle, 10*time.Second)

	if pass(d2, d1, dk1.Public(), "after") != gen1 || pass(d1, d2, dk2.Public(), "after") != gen2 {
		t.Fatal("a DERP client had to reconnect: the server closed its connection")
	}
	if _, err := ts.State().RenameNode(ctx, ids.NodeID(bravo), "bravo2"); err != nil {
		t.Fatal(err)
	}
	nextPeerChange(t, sess, bravo, "map stream after the timeouts")
}

// TestHandshakeFlood: handshakes from many new machine keys are bounded
// (some answered 503, connections of machines without a node beyond the
// cap closed) and a connected node still gets its map updates meanwhile.
func TestHandshakeFlood(t *testing.T) {
	ts := startServerWith(t, t.TempDir(), "", func(s *server.Server) {
		s.SetControlLimits(func(l *control.Limits) {
			*l = control.Limits{Handshakes: 1, HandshakeWaiting: 2, HandshakeWait: 20 * time.Millisecond, UnregisteredConns: 4}
		})
	})
	k := ts.key(t, true, time.Now().Add(time.Hour))
	ca, cb := newClient(t, ts.URL), newClient(t, ts.URL)
	nka, _ := register(t, ca, k, "alpha")
	register(t, cb, k, "bravo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sess, full := openMap(t, ctx, ca, nka, "alpha")
	bravo := full.Peers[0].ID
	pub, err := tsp.DiscoverServerKey(ctx, ts.URL)
	if err != nil {
		t.Fatal(err)
	}

	floodCtx, stopFlood := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var handshakes, refused atomic.Int64
	for range 16 {
		wg.Go(func() {
			for floodCtx.Err() == nil {
				nc, err := loadgen.DialNoise(ts.URL, key.NewMachine(), pub)
				if err != nil {
					t.Error(err)
					return
				}
				// A status request: the handshake, then a refusal (no key).
				nk := key.NewNode().Public()
				rctx, rcancel := context.WithTimeout(floodCtx, 5*time.Second)
				res, err := nc.Post(rctx, "/machine/register", nk, &tailcfg.RegisterRequest{Version: tailcfg.CurrentCapabilityVersion, NodeKey: nk})
				rcancel()
				handshakes.Add(1)
				if err != nil {
					refused.Add(1)
				} else {
					res.Body.Close()
				}
				// Some keep their connection open for a while, filling the
				// slots of machines without a node.
				if handshakes.Load()%4 != 0 {
					nc.Close()
				} else {
					go func() {
						select {
						case <-floodCtx.Done():
						case <-time.After(500 * time.Millisecond):
						}
						nc.Close()
					}()
				}
			}
		})
	}
	defer func() { stopFlood(); wg.Wait() }()

	tstest.WaitFor(t, 30*time.Second, "both handshake limits to fire", func() error {
		return errors.Join(hitsAbove(ts.limitHits(t, "noise_handshakes"), 0), hitsAbove(ts.limitHits(t, "noise_unregistered"), 0))
	})
	// During the flood, a change reaches the connected node.
	if _, err := ts.State().RenameNode(ctx, ids.NodeID(bravo), "bravo2"); err != nil {
		t.Fatal(err)
	}
	nextPeerChange(t, sess, bravo, "map stream during the flood")
	stopFlood()
	wg.Wait()
	t.Logf("%d flood handshakes, %d refused or closed", handshakes.Load(), refused.Load())
	if refused.Load() == 0 {
		t.Error("no flood handshake was refused")
	}
	// After the flood a new machine registers normally. Flood connections
	// held open close as their goroutines see the flood end; until then
	// the slots for unknown machines may still be full and a connection
	// refused, which a client retries, as this one does.
	tstest.WaitFor(t, 15*time.Second, "a registration after the flood", func() error {
		if _, msg := register(t, newClient(t, ts.URL), k, "charlie"); msg != "" {
			return errors.New(msg)
		}
		return nil
	})
}

// TestRegistrationsBounded: registrations beyond the slots and waiters are
// answered 503 (the client retries) and leave nothing behind.
func TestRegistrationsBounded(t *testing.T) {
	ts := startServerWith(t, t.TempDir(), "", func(s *server.Server) {
		s.SetControlLimits(func(l *control.Limits) {
			*l = control.Limits{Registering: 1, RegisterWaiting: 1, RegisterWait: time.Millisecond}
		})
	})
	k := ts.key(t, true, time.Now().Add(time.Hour))
	var ok, busy atomic.Int64
	var wg sync.WaitGroup
	for round := 0; ts.limitHits(t, "registrations") == 0; round++ {
		if round == 20 {
			t.Fatal("20 rounds of 16 concurrent registrations never hit the limit")
		}
		for i := range 16 {
			c := newClient(t, ts.URL)
			wg.Go(func() {
				_, msg := register(t, c, k, fmt.Sprintf("n%d-%d", round, i))
				switch {
				case msg == "":
					ok.Add(1)
				case strings.Contains(msg, "503") || strings.Contains(msg, "busy"):
					busy.Add(1)
				default:
					t.Errorf("registration: %s", msg)
				}
			})
		}
		wg.Wait()
	}
	if busy.Load() == 0 {
		t.Fatal("limit counted but no client was told the server is busy")
	}
	if got := int64(len(ts.State().Nodes())); got != ok.Load() {
		t.Fatalf("%d nodes for %d successful registrations", got, ok.Load())
	}
}

// TestAPIKeyFailuresSlowed: a client that keeps sending wrong API keys is
// answered 429 (even with a valid key) until its budget refills; another
// client's valid key works meanwhile.
func TestAPIKeyFailuresSlowed(t *testing.T) {
	ts := startServer(t)
	good := ts.apiKey(t)
	from := func(ip string) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
		return &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
	}
	bad := "hskey-api-000000000000-" + strings.Repeat("0", 64)
	attacker, other := from("127.0.0.2"), from("127.0.0.3")
	url := ts.URL + "/api/v1/user"
	for i := 1; i <= api.KeyFailureBurst; i++ {
		code, h := get(t, attacker, url, bad)
		want := http.StatusUnauthorized
		if i == api.KeyFailureBurst {
			want = http.StatusTooManyRequests
		}
		if code != want {
			t.Fatalf("wrong key #%d: %d, want %d", i, code, want)
		}
		if code == http.StatusTooManyRequests && h.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	}
	if code, _ := get(t, attacker, url, good); code != http.StatusTooManyRequests {
		t.Fatalf("valid key from the slowed client: %d, want 429", code)
	}
	if code, _ := get(t, other, url, good); code != http.StatusOK {
		t.Fatalf("valid key from another client: %d, want 200", code)
	}
	if code, _ := get(t, other, url, ""); code != http.StatusUnauthorized {
		t.Fatalf("no key from another client: %d, want 401", code)
	}
	if n := ts.limitHits(t, "api_key_failures"); n != 2 {
		t.Fatalf("api_key_failures counted %d, want 2", n)
	}

	// Behind a reverse proxy on the same host, the client is the last
	// X-Forwarded-For address (documentation addresses: only a header).
	proxy := from("127.0.0.4")
	viaProxy := func(client, key string) int {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("X-Forwarded-For", "192.0.2.99, "+client)
		resp, err := proxy.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for range api.KeyFailureBurst {
		viaProxy("198.51.100.7", bad)
	}
	if code := viaProxy("198.51.100.7", good); code != http.StatusTooManyRequests {
		t.Fatalf("slowed client behind the proxy: %d, want 429", code)
	}
	if code := viaProxy("198.51.100.8", good); code != http.StatusOK {
		t.Fatalf("another client behind the same proxy: %d, want 200", code)
	}
}

// TestAPIKeyFailuresTrustedProxies: with trusted_proxies naming one proxy,
// X-Forwarded-For is believed from it only; a client connecting directly
// cannot escape its own budget, nor spend another's, by forging the header.
func TestAPIKeyFailuresTrustedProxies(t *testing.T) {
	ts := startServerWith(t, "", "trusted_proxies: [127.0.0.4]\n", nil)
	good := ts.apiKey(t)
	bad := "hskey-api-000000000000-" + strings.Repeat("0", 64)
	url := ts.URL + "/api/v1/user"
	send := func(from, xff, key string) int {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c := &http.Client{Transport: &http.Transport{DialContext: d.DialContext}}
		defer c.CloseIdleConnections()
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	tests := []struct {
		name      string
		from, xff string // the failing client's connection and header
		// then: a valid key from check/checkXFF must get want
		check, checkXFF string
		want            int
	}{
		{"forged header rotated by a direct client: still one client", "127.0.0.5", "198.51.100.%d", "127.0.0.5", "", http.StatusTooManyRequests},
		{"direct client forging a victim's address: the victim unaffected", "127.0.0.6", "198.51.100.20", "127.0.0.4", "198.51.100.20", http.StatusOK},
		{"client behind the trusted proxy: limited by its own address", "127.0.0.4", "192.0.2.1, 198.51.100.30", "127.0.0.4", "198.51.100.30", http.StatusTooManyRequests},
		{"its neighbour behind the proxy: unaffected", "127.0.0.4", "198.51.100.40", "127.0.0.4", "198.51.100.41", http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range api.KeyFailureBurst {
				xff := tt.xff
				if strings.Contains(xff, "%d") {
					xff = fmt.Sprintf(xff, i)
				}
				send(tt.from, xff, bad)
			}
			if code := send(tt.check, tt.checkXFF, good); code != tt.want {
				t.Fatalf("valid key from %s (X-Forwarded-For %q): %d, want %d", tt.check, tt.checkXFF, code, tt.want)
			}
		})
	}
}

// TestHTTPLimitsOverTLS: with tls_cert_path the limits apply the same way
// (net/http wraps the watched connection in TLS): requests work and a
// slow-loris client is closed and counted.
func TestHTTPLimitsOverTLS(t *testing.T) {
	dir := t.TempDir()
	pool, certPath, keyPath := testca.Files(t, dir, "127.0.0.1")
	ts := startServerWith(t, dir, fmt.Sprintf("tls_cert_path: %s\ntls_key_path: %s\n", certPath, keyPath), func(s *server.Server) {
		s.MainHTTP().ReadHeader = 300 * time.Millisecond
	})
	tlsCfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	if code, _ := get(t, client, "https://"+ts.Addr().String()+"/health", ""); code != http.StatusOK {
		t.Fatalf("/health over TLS: %d", code)
	}
	c, err := tls.Dial("tcp", ts.Addr().String(), tlsCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go func() {
		for _, b := range []byte("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 1000)) {
			if _, err := c.Write([]byte{b}); err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	closedByServer(t, c, 10*time.Second)
	tstest.WaitFor(t, 5*time.Second, "http_header_timeout counted", func() error { return hitsAbove(ts.limitHits(t, "http_header_timeout"), 0) })
}
