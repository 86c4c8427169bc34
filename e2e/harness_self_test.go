//go:build linux

package e2e

import (
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestHarnessClientStarts checks the parts of the harness that need no
// server: the client binaries are built and stamped, the test runs in its
// private network namespace (when possible), and tailscaled comes up and
// answers `tailscale status --json` waiting for a login.
func TestHarnessClientStarts(t *testing.T) {
	env := requireEnv(t)
	if env.NetNS {
		ifaces, err := net.Interfaces()
		if err != nil {
			t.Fatal(err)
		}
		if len(ifaces) != 1 || ifaces[0].Name != "lo" || ifaces[0].Flags&net.FlagUp == 0 {
			t.Fatalf("want exactly one interface, lo, up, in the private namespace; got %v", ifaces)
		}
		t.Logf("running in a private network namespace: %s %v", ifaces[0].Name, ifaces[0].Flags)
	} else {
		t.Logf("running on the host loopback (no private network namespace)")
	}

	n := StartNode(t, nil, "selftest", NodeOptions{})
	st := n.MustStatus()
	switch st.BackendState {
	case "NeedsLogin", "Stopped":
	default:
		t.Fatalf("fresh tailscaled: BackendState %q, want NeedsLogin or Stopped", st.BackendState)
	}
	if !strings.HasPrefix(st.Version, env.TailscaleVersion) {
		t.Errorf("tailscaled version %q, want the stamp %q", st.Version, env.TailscaleVersion)
	}
	out, err := n.CLI(10*time.Second, "version")
	if err != nil {
		t.Fatal(err)
	}
	if first, _, _ := strings.Cut(out, "\n"); strings.TrimSpace(first) != env.TailscaleVersion {
		t.Errorf("tailscale version printed %q, want %q", first, env.TailscaleVersion)
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(n.SOCKSPort)), 5*time.Second)
	if err != nil {
		t.Fatalf("SOCKS5 listener of tailscaled: %v", err)
	}
	c.Close()
	t.Logf("tailscaled %s: BackendState %s, version %s", n.Name, st.BackendState, st.Version)
}

// TestHarnessHostsAndCA: inside the run's namespace the test host names
// resolve to 127.0.0.1, and a TLS server with a certificate from the run's
// CA is trusted by HTTPClient under that name, and not under another.
func TestHarnessHostsAndCA(t *testing.T) {
	env := requireHosts(t)
	for _, h := range testHosts {
		addrs, err := net.LookupHost(h)
		if err != nil || len(addrs) == 0 || addrs[0] != "127.0.0.1" {
			t.Fatalf("%s resolves to %v (%v), want 127.0.0.1", h, addrs, err)
		}
	}
	leaf, err := env.CA.Issue(time.Hour, "headscale.e2e.test")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := leaf.TLS()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	resp, err := env.HTTPClient().Get("https://headscale.e2e.test:" + port + "/")
	if err != nil {
		t.Fatalf("GET over TLS under the test name: %v", err)
	}
	resp.Body.Close()
	if _, err := env.HTTPClient().Get("https://nginx.e2e.test:" + port + "/"); err == nil {
		t.Fatal("a certificate for headscale.e2e.test was accepted for nginx.e2e.test")
	}
}
