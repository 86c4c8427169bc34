package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pebbletest"
	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/testca"
	"github.com/hsctl/headscale/internal/tstest"
	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"github.com/hsctl/headscale/pkg/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
)

// healthBody is /health's answer with TLS.
type healthBody struct {
	Status string `json:"status"`
	Reason string `json:"reason"`
	Checks map[string][]struct {
		Status        string   `json:"status"`
		Source        string   `json:"source"`
		Names         []string `json:"names"`
		Output        string   `json:"output"`
		NotAfter      string   `json:"notAfter"`
		ObservedValue float64  `json:"observedValue"`
		NextRetry     string   `json:"nextRetry"`
	} `json:"checks"`
}

// socketHealth reads /health over the unix socket (it answers whatever
// the certificate).
func socketHealth(t *testing.T, ts *servertest.Server) (int, healthBody) {
	t.Helper()
	sock := ts.Config.UnixSocket
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("http://headscale/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h healthBody
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, h
}

// certCheck is the tls:certificate check of h.
func certCheck(t *testing.T, h healthBody) (status, output string, names []string) {
	t.Helper()
	c := h.Checks["tls:certificate"]
	if len(c) != 1 {
		t.Fatalf("health has no tls:certificate check: %+v", h)
	}
	return c[0].Status, c[0].Output, c[0].Names
}

// metricValue is a metric's value from /metrics text ("" when absent).
func metricValue(t *testing.T, s *server.Server, name string) string {
	t.Helper()
	rec := &strings.Builder{}
	req, _ := http.NewRequest("GET", "/metrics", nil)
	w := &recorder{header: http.Header{}, body: rec}
	s.Metrics().Handler().ServeHTTP(w, req)
	for _, line := range strings.Split(rec.String(), "\n") {
		if strings.HasPrefix(line, name+"{") || strings.HasPrefix(line, name+" ") {
			return line[strings.LastIndex(line, " ")+1:]
		}
	}
	return ""
}

type recorder struct {
	header http.Header
	body   io.Writer
}

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(b []byte) (int, error) { return r.body.Write(b) }
func (r *recorder) WriteHeader(int)             {}

// tlsConn is a kept-alive HTTPS connection to the server.
type tlsConn struct {
	c *tls.Conn
	r *bufio.Reader
}

func dialTLS(t *testing.T, addr string, roots *x509.CertPool, name string) *tlsConn {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: name})
	if err != nil {
		t.Fatalf("TLS to %s as %s: %v", addr, name, err)
	}
	return &tlsConn{c: c, r: bufio.NewReader(c)}
}

// get sends GET path on the connection and returns the status code.
func (c *tlsConn) get(t *testing.T, path string) int {
	t.Helper()
	c.c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c.c, "GET %s HTTP/1.1\r\nHost: headscale\r\n\r\n", path)
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatalf("GET %s on the open connection: %v", path, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (c *tlsConn) serial() string {
	return c.c.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// servedSerial is the serial of the certificate a new handshake gets.
func servedSerial(addr string, roots *x509.CertPool, name string) (string, error) {
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: name})
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

func serialOf(t *testing.T, l testca.Leaf) string {
	t.Helper()
	c, err := l.TLS()
	if err != nil {
		t.Fatal(err)
	}
	return c.Leaf.SerialNumber.String()
}

// installPair replaces the files as certbot does (new files renamed over).
func installPair(t *testing.T, dir string, certPEM, keyPEM []byte) {
	t.Helper()
	for name, b := range map[string][]byte{"cert.pem": certPEM, "key.pem": keyPEM} {
		tmp := filepath.Join(dir, name+".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTLSFiles: listen_addr and grpc_listen_addr serve the certificate
// files; replaced on disk, the new pair is served on both while a
// connection made before keeps working; a bad pair is refused (old one
// kept, /health warns, the status line and the metric say so); SIGHUP
// (Reload) loads a pair at once and refuses a bad one with an error.
func TestTLSFiles(t *testing.T) {
	ca, err := testca.New("server tls test")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(validFor time.Duration) testca.Leaf {
		l, err := ca.Issue(validFor, "hs.test", "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	dir := t.TempDir()
	first := issue(24 * time.Hour)
	certPath, keyPath, err := first.Write(dir)
	if err != nil {
		t.Fatal(err)
	}
	var srv *server.Server
	ts := servertest.Start(t, servertest.Options{
		ExtraYAML: fmt.Sprintf("tls_cert_path: %s\ntls_key_path: %s\n", certPath, keyPath),
		Tweak:     func(s *server.Server) { s.CertPoll = 20 * time.Millisecond; srv = s },
	})
	addr := ts.Server.Addr().String()
	roots := ca.Pool()
	old := dialTLS(t, addr, roots, "hs.test")
	defer old.c.Close()
	if old.serial() != serialOf(t, first) || old.get(t, "/health") != 200 {
		t.Fatalf("first certificate not served")
	}
	code, h := socketHealth(t, ts)
	if st, _, names := certCheck(t, h); code != 200 || h.Status != "pass" || st != "pass" || names[0] != "hs.test" {
		t.Errorf("health %d %+v", code, h)
	}
	if v := metricValue(t, srv, "headscale_tls_certificate_expiry_days"); !strings.HasPrefix(v, "0.9") && !strings.HasPrefix(v, "1") {
		t.Errorf("expiry days %q, want about 1", v)
	}

	// gRPC over TLS, on the same certificate.
	grpcServed := func() string {
		var serial string
		conn, err := grpc.NewClient(ts.Server.GRPCAddr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: roots, ServerName: "hs.test",
			VerifyConnection: func(cs tls.ConnectionState) error {
				serial = cs.PeerCertificates[0].SerialNumber.String()
				return nil
			},
		})))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+ts.CreateAPIKey(t, time.Time{}))
		if _, err := v1.NewHeadscaleServiceClient(conn).Health(ctx, &v1.HealthRequest{}); err != nil {
			t.Fatalf("gRPC over TLS: %v", err)
		}
		return serial
	}
	if got := grpcServed(); got != serialOf(t, first) {
		t.Errorf("gRPC served %s, want the first certificate", got)
	}

	// Renewed on disk: served to new connections, the open one stays.
	second := issue(48 * time.Hour)
	installPair(t, dir, second.CertPEM, second.KeyPEM)
	tstest.WaitFor(t, 10*time.Second, "the renewed certificate to be served", func() error {
		got, err := servedSerial(addr, roots, "hs.test")
		if err != nil || got != serialOf(t, second) {
			return fmt.Errorf("serving %s, %v", got, err)
		}
		return nil
	})
	if got := grpcServed(); got != serialOf(t, second) {
		t.Errorf("gRPC served %s after the renewal, want the second certificate", got)
	}
	if old.get(t, "/health") != 200 {
		t.Error("the connection made before the renewal stopped answering")
	}

	// A bad pair: refused, the second one stays, health warns.
	other := issue(time.Hour)
	installPair(t, dir, second.CertPEM, other.KeyPEM)
	tstest.WaitFor(t, 10*time.Second, "the bad pair to be reported", func() error {
		if _, h := socketHealth(t, ts); h.Checks["tls:certificate"][0].Status != "warn" {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	code, h = socketHealth(t, ts)
	if _, out, _ := certCheck(t, h); code != 200 || h.Status != "pass" || !strings.Contains(out, "private key does not match") {
		t.Errorf("health after a bad pair: %d %+v", code, h)
	}
	if got, err := servedSerial(addr, roots, "hs.test"); err != nil || got != serialOf(t, second) {
		t.Errorf("serving %s, %v after a bad pair; want the second certificate", got, err)
	}
	if line := srv.StatusLine(); !strings.Contains(line, "TLS warn: new certificate refused") {
		t.Errorf("status line %q", line)
	}
	if v := metricValue(t, srv, "headscale_tls_certificate_problem"); v != "1" {
		t.Errorf("problem metric %q", v)
	}
	if !strings.Contains(ts.Logs(), "level=WARN msg=\"new TLS certificate refused; the one in use stays\"") {
		t.Errorf("no warning logged for the bad pair")
	}
	if err := srv.Reload(); err == nil || !strings.Contains(err.Error(), "new certificate refused, the one in use stays") {
		t.Errorf("Reload with a bad pair: %v", err)
	}

	// SIGHUP: with polling slowed down, Reload alone loads a good pair.
	third := issue(72 * time.Hour)
	installPair(t, dir, third.CertPEM, third.KeyPEM)
	if err := srv.Reload(); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if got, err := servedSerial(addr, roots, "hs.test"); err != nil || got != serialOf(t, third) {
		t.Errorf("serving %s, %v after Reload; want the third certificate", got, err)
	}
	if _, h := socketHealth(t, ts); h.Checks["tls:certificate"][0].Status != "pass" {
		t.Errorf("health after a good pair: %+v", h)
	}
	if old.get(t, "/health") != 200 {
		t.Error("the first connection stopped answering")
	}
}

// freePort is a loopback port free right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// acmeServer starts Pebble (unless down) and a server getting its
// certificate from it with challenge.
func acmeServer(t *testing.T, challenge string, down bool) (*servertest.Server, *server.Server, *pebbletest.Pebble) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs pebble")
	}
	mainPort, httpPort := freePort(t), freePort(t)
	opts := pebbletest.Options{Names: []string{"hs.test"}}
	if challenge == "TLS-ALPN-01" {
		opts.TLSPort = mainPort
	} else {
		opts.HTTPPort = httpPort // TLS-ALPN-01 (tried first) fails: nothing there
	}
	p := pebbletest.New(t, opts)
	if !down {
		p.Start()
	}
	var srv *server.Server
	ts := servertest.Start(t, servertest.Options{
		ExtraYAML: fmt.Sprintf(`server_url: https://hs.test:%d
listen_addr: 127.0.0.1:%d
tls_letsencrypt_hostname: hs.test
tls_letsencrypt_challenge_type: %s
tls_letsencrypt_listen: 127.0.0.1:%d
acme_url: %s
acme_email: ops@example.com
`, mainPort, mainPort, challenge, httpPort, p.DirectoryURL()),
		Tweak: func(s *server.Server) {
			s.ACMEHTTPClient = p.HTTPClient()
			s.ACMERetryMin = 50 * time.Millisecond
			s.ACMECheck = 50 * time.Millisecond
			srv = s
		},
	})
	return ts, srv, p
}

// TestACME: the server gets its certificate from Pebble (validating for
// real) with each challenge type, serves it on listen_addr and says so
// in /health; the certificate is cached in tls_letsencrypt_cache_dir
// (default "cache" in state_dir).
func TestACME(t *testing.T) {
	for _, challenge := range []string{"HTTP-01", "TLS-ALPN-01"} {
		t.Run(challenge, func(t *testing.T) {
			ts, srv, p := acmeServer(t, challenge, false)
			roots := p.Roots(t)
			tstest.WaitFor(t, 60*time.Second, "a certificate from Pebble", func() error {
				_, err := servedSerial(srv.Addr().String(), roots, "hs.test")
				return err
			})
			code, h := socketHealth(t, ts)
			if st, out, names := certCheck(t, h); code != 200 || h.Status != "pass" || st != "pass" || out != "" || names[0] != "hs.test" {
				t.Errorf("health %d %+v", code, h)
			}
			if v := metricValue(t, srv, "headscale_tls_certificate_expiry_days"); !strings.HasPrefix(v, "89.") && !strings.HasPrefix(v, "90") {
				t.Errorf("expiry days %q, want about 90", v)
			}
			entries, err := os.ReadDir(filepath.Join(ts.Config.StateDir, "cache"))
			if err != nil || len(entries) < 2 {
				t.Errorf("cache dir: %v %v", entries, err)
			}
			c := dialTLS(t, srv.Addr().String(), roots, "hs.test")
			defer c.c.Close()
			if c.get(t, "/health") != 200 {
				t.Error("/health over the ACME certificate")
			}
		})
	}
}

// TestACMEServerDown: with the CA down at start the server still starts
// and answers (READY comes from Run, which does not wait), /health and
// the status line report the failure and the next retry, and once the CA
// is up the certificate comes without a restart.
func TestACMEServerDown(t *testing.T) {
	ts, srv, p := acmeServer(t, "TLS-ALPN-01", true)
	tstest.WaitFor(t, 10*time.Second, "the failure in /health", func() error {
		code, h := socketHealth(t, ts)
		c := h.Checks["tls:certificate"]
		if code != http.StatusServiceUnavailable || h.Status != "fail" || len(c) != 1 ||
			!strings.Contains(c[0].Output, "no certificate yet: obtaining a certificate for hs.test") || c[0].NextRetry == "" {
			return fmt.Errorf("health %d %+v", code, h)
		}
		return nil
	})
	if line := srv.StatusLine(); !strings.Contains(line, "TLS fail: no certificate yet") {
		t.Errorf("status line %q", line)
	}
	if v := metricValue(t, srv, "headscale_tls_certificate_expiry_days"); v != "" {
		t.Errorf("expiry days %q without a certificate", v)
	}
	// The API answers meanwhile.
	ts.CreateUser(t, "alice")
	p.Start()
	roots := p.Roots(t)
	tstest.WaitFor(t, 60*time.Second, "a certificate once the CA is up", func() error {
		_, err := servedSerial(srv.Addr().String(), roots, "hs.test")
		return err
	})
	if code, h := socketHealth(t, ts); code != 200 || h.Status != "pass" {
		t.Errorf("health after recovery %d %+v", code, h)
	}
	if line := srv.StatusLine(); strings.Contains(line, "TLS") {
		t.Errorf("status line %q after recovery", line)
	}
}
