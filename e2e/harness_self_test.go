//go:build linux

package e2e

import (
	"net"
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
