package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pebbletest"
	"github.com/hsctl/headscale/internal/tstest"
)

// The server serving TLS itself (issue 16, points 1 and 2), with official
// clients: certificate files from the run's CA, renewed on disk under
// running clients; and a certificate from an ACME CA (Let's Encrypt's
// Pebble, validating TLS-ALPN-01 for real), renewed by the server's ACME
// client under running clients. In both, the nodes talk through the
// embedded DERP over TLS, and the renewal drops nothing: no map session
// or DERP connection is made again, and pings keep working.

// tlsHost is the server's name (127.0.0.1 in the run's namespace).
const tlsHost = "headscale.e2e.test"

// servedCert is the certificate a new handshake with the server gets,
// verified against the roots clients trust.
func servedCert(env *Env, srv *Server) (serial string, notAfter time.Time, err error) {
	c := env.HTTPClient()
	defer c.CloseIdleConnections()
	resp, err := c.Get(srv.Direct + "/health")
	if err != nil {
		return "", time.Time{}, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
		return "", time.Time{}, fmt.Errorf("no TLS")
	}
	leaf := resp.TLS.PeerCertificates[0]
	return leaf.SerialNumber.String(), leaf.NotAfter, nil
}

// connectionCounts are what would move if a client reconnected: map
// sessions started (the server logs each at debug) and DERP connections
// the embedded relay accepted.
func connectionCounts(t *testing.T, srv *Server) (mapSessions int, derpAccepted float64) {
	t.Helper()
	b, err := os.ReadFile(srv.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	mapSessions = strings.Count(string(b), `msg="map session started"`)
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", srv.MetricsPort))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "headscale_derp_connections_total "); ok {
			derpAccepted, _ = strconv.ParseFloat(v, 64)
		}
	}
	return mapSessions, derpAccepted
}

// pingBothViaDERP pings each way and checks the path was the relay.
func pingBothViaDERP(t *testing.T, a, b *Node) {
	t.Helper()
	for _, pair := range [][2]*Node{{a, b}, {b, a}} {
		if out := mustPing(t, pair[0], pair[1]); !strings.Contains(out, "via DERP(") {
			t.Errorf("ping %s -> %s did not go via DERP: %s", pair[0].Name, pair[1].Name, out)
		}
	}
}

// checkNothingDropped compares the connection counts with those before
// the renewal, once the nodes have talked again.
func checkNothingDropped(t *testing.T, srv *Server, a, b *Node, sessions int, derp float64) {
	t.Helper()
	pingBothViaDERP(t, a, b)
	waitServerOnline(t, srv, a.Name, b.Name)
	s2, d2 := connectionCounts(t, srv)
	if s2 != sessions || d2 != derp {
		t.Errorf("clients reconnected across the renewal: map sessions started %d -> %d, DERP connections %v -> %v", sessions, s2, derp, d2)
	}
}

// TestTLSFilesRenewedUnderClients: certificate files (as certbot keeps
// them: a new pair renamed over the old) are served on listen_addr to
// official clients; replaced while the clients are connected, the new
// certificate is served to new connections and the clients carry on.
func TestTLSFilesRenewedUnderClients(t *testing.T) {
	env := requireHosts(t)
	first, err := env.CA.Issue(time.Hour, tlsHost)
	if err != nil {
		t.Fatal(err)
	}
	port := env.FreePort(t)
	srv := StartServer(t, ServerOptions{
		Port:      port,
		ServerURL: "https://" + tlsHost + ":" + strconv.Itoa(port),
		DirectTLS: true,
		Prepare: func(dir string) {
			if _, _, err := first.Write(dir); err != nil {
				t.Fatal(err)
			}
		},
		ExtraConfig: "tls_cert_path: cert.pem\ntls_key_path: key.pem\n",
	})
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	a, b := startPair(t, srv, key.Key, NodeOptions{Env: []string{"TS_DEBUG_ALWAYS_USE_DERP=1"}})
	pingBothViaDERP(t, a, b)
	firstSerial, _, err := servedCert(env, srv)
	if err != nil {
		t.Fatal(err)
	}
	sessions, derp := connectionCounts(t, srv)
	if sessions < 2 || derp < 2 {
		t.Fatalf("before the renewal: %d map sessions, %v DERP connections; want both nodes on both", sessions, derp)
	}

	second, err := env.CA.Issue(2*time.Hour, tlsHost)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"cert.pem": second.CertPEM, "key.pem": second.KeyPEM} {
		tmp := filepath.Join(srv.Dir, name+".new")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(srv.Dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	tstest.WaitFor(t, 30*time.Second, "the renewed certificate to be served", func() error {
		serial, notAfter, err := servedCert(env, srv)
		if err != nil {
			return err
		}
		if serial == firstSerial || !notAfter.Equal(second.NotAfter.Truncate(time.Second)) {
			return fmt.Errorf("still serving %s until %v", serial, notAfter)
		}
		return nil
	})
	if err := srv.logContains(`msg="TLS certificate loaded" component=tls reason="files changed"`); err != nil {
		t.Error(err)
	}
	checkNothingDropped(t, srv, a, b, sessions, derp)
}

// TestTLSACMERenewedUnderClients: the server gets its certificate from
// Pebble (TLS-ALPN-01 on listen_addr, validated for real through the test
// DNS), official clients trusting Pebble's root connect over HTTPS and
// DERP; Pebble's certificates last 30 s, so the server's ACME client
// renews one a third of the lifetime before expiry (every ~20 s), under
// the connected clients, and nothing is dropped.
func TestTLSACMERenewedUnderClients(t *testing.T) {
	env := requireHosts(t)
	port := env.FreePort(t)
	p := pebbletest.Start(t, pebbletest.Options{
		Names:         []string{tlsHost},
		ListenerNames: []string{"acme.e2e.test"},
		TLSPort:       port,
		Validity:      30 * time.Second,
	})
	env.TrustRoot(t, p.RootsPEM(t))
	// The server trusts Pebble's own listener (its ACME directory).
	caFile := filepath.Join(t.TempDir(), "pebble-listener.pem")
	if err := os.WriteFile(caFile, p.ListenerCertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	_, pebblePort, _ := strings.Cut(p.Addr(), ":")
	srv := StartServer(t, ServerOptions{
		Port:      port,
		ServerURL: "https://" + tlsHost + ":" + strconv.Itoa(port),
		DirectTLS: true,
		Env:       []string{"SSL_CERT_FILE=" + caFile},
		ExtraConfig: "tls_letsencrypt_hostname: " + tlsHost + "\n" +
			"tls_letsencrypt_challenge_type: TLS-ALPN-01\n" +
			"acme_url: https://acme.e2e.test:" + pebblePort + "/dir\n" +
			"acme_email: ops@example.com\n",
	})
	firstSerial, _, err := servedCert(env, srv)
	if err != nil {
		t.Fatal(err)
	}
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	a, b := startPair(t, srv, key.Key, NodeOptions{Env: []string{"TS_DEBUG_ALWAYS_USE_DERP=1"}})
	pingBothViaDERP(t, a, b)
	sessions, derp := connectionCounts(t, srv)
	if sessions < 2 || derp < 2 {
		t.Fatalf("before the renewal: %d map sessions, %v DERP connections; want both nodes on both", sessions, derp)
	}
	// The client renews every ~20 s: wait for a renewal after the counts
	// were taken, whichever certificate was served then.
	counted, countedNotAfter, err := servedCert(env, srv)
	if err != nil {
		t.Fatal(err)
	}
	if counted != firstSerial {
		t.Logf("already renewed once before the clients were counted (serial %s -> %s)", firstSerial, counted)
	}
	tstest.WaitFor(t, time.Minute, "the ACME client to renew the certificate", func() error {
		serial, notAfter, err := servedCert(env, srv)
		if err != nil {
			return err
		}
		if serial == counted || !notAfter.After(countedNotAfter) {
			return fmt.Errorf("still serving %s until %v", serial, notAfter)
		}
		return nil
	})
	checkNothingDropped(t, srv, a, b, sessions, derp)
	// The clients' own connections were made with the first certificate;
	// a client connecting now verifies the renewed one.
	c := StartNode(t, srv, "node-c", NodeOptions{Env: []string{"TS_DEBUG_ALWAYS_USE_DERP=1"}})
	c.MustUp(key.Key)
	c.WaitForPeer(a, peerTimeout)
	if out := mustPing(t, c, a); !strings.Contains(out, "via DERP(") {
		t.Errorf("ping node-c -> node-a did not go via DERP: %s", out)
	}
}
