//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"tailscale.com/client/local"
	"tailscale.com/client/tailscale/apitype"
	"tailscale.com/ipn/ipnstate"
)

// NodeOptions tunes a client node started by StartNode.
type NodeOptions struct {
	// Env is added to tailscaled's environment, e.g.
	// "TS_DEBUG_ALWAYS_USE_DERP=1".
	Env []string
	// State, when set, is written to the state directory as
	// tailscaled.state before tailscaled starts: a client that was
	// registered before (with another server) and comes back by itself,
	// without `tailscale up`.
	State []byte
}

// Node is an official tailscaled in userspace-networking mode, driven with
// the tailscale CLI over its own LocalAPI socket.
type Node struct {
	t   testing.TB
	env *Env
	srv *Server

	// Name is the hostname the node registers with.
	Name string
	// Dir is tailscaled's state directory; it survives Restart.
	Dir string
	// Socket is the LocalAPI unix socket.
	Socket string
	// LogPath receives tailscaled's output.
	LogPath string
	// UDPPort is tailscaled's WireGuard/disco port (--port).
	UDPPort int
	// SOCKSPort is the SOCKS5 proxy into the tailnet (--socks5-server).
	SOCKSPort int
	// ListenPort is reserved for test listeners receiving tailnet traffic
	// for this node (netstack forwards <node IP>:P to 127.0.0.1:P).
	ListenPort int

	extraEnv []string
	proc     *process
}

// StartNode starts tailscaled for a node called name that will log in to
// srv (srv may be nil for a node that never logs in) and waits until its
// LocalAPI answers. It is stopped when the test ends.
func StartNode(t testing.TB, srv *Server, name string, opts NodeOptions) *Node {
	t.Helper()
	env := requireEnv(t)
	n := &Node{
		t:          t,
		env:        env,
		srv:        srv,
		Name:       name,
		Dir:        t.TempDir(),
		UDPPort:    env.FreePort(t),
		SOCKSPort:  env.FreePort(t),
		ListenPort: env.FreePort(t),
		extraEnv:   opts.Env,
	}
	n.Socket = filepath.Join(n.Dir, "ts.sock")
	n.LogPath = filepath.Join(n.Dir, "tailscaled.log")
	if len(n.Socket) > 100 {
		t.Fatalf("socket path %q too long; use a shorter TMPDIR", n.Socket)
	}
	if opts.State != nil {
		if err := os.WriteFile(filepath.Join(n.Dir, "tailscaled.state"), opts.State, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	logTailOnFailure(t, "tailscaled "+name, n.LogPath, 60)
	t.Cleanup(func() {
		switch {
		case n.proc == nil:
		case slices.Contains(opts.Env, "TS_DEBUG_ALWAYS_USE_DERP=1"):
			// With UDP disabled by this knob, tailscaled (1.102) never
			// finishes shutting down (wireguard-go's BindClose waits for
			// a receive that cannot end): it would cost the full grace
			// period at every test's end.
			n.proc.kill()
		default:
			n.proc.stop(10 * time.Second)
		}
	})
	n.start()
	return n
}

func (n *Node) start() {
	n.t.Helper()
	args := []string{
		"--tun=userspace-networking",
		"--statedir", n.Dir,
		"--socket", n.Socket,
		"--port", fmt.Sprint(n.UDPPort),
		"--socks5-server", fmt.Sprintf("127.0.0.1:%d", n.SOCKSPort),
		"--no-logs-no-support",
	}
	env := []string{
		"TS_DISABLE_PORTMAPPER=1",
		"TS_ASSUME_NETWORK_UP_FOR_TEST=1",
		"TS_PANIC_IF_HIT_MAIN_CONTROL=1",
		// The run's roots (test CA, ACME servers'), and only those.
		"SSL_CERT_FILE=" + n.env.CAFile,
		"SSL_CERT_DIR=/nonexistent",
	}
	if n.srv == nil || !strings.HasPrefix(n.srv.URL, "https:") {
		// The embedded DERP is reached as server_url is: plain HTTP
		// needs the client's test knob.
		env = append(env, "TS_DEBUG_USE_DERP_HTTP=1")
	}
	env = append(env, n.extraEnv...)
	proc, err := startProcess("tailscaled "+n.Name, n.env.Tailscaled, args, env, n.LogPath)
	if err != nil {
		n.t.Fatal(err)
	}
	n.proc = proc
	err = tstest.Poll(30*time.Second, func() error {
		if err := proc.exited(); err != nil {
			return tstest.Permanent(err)
		}
		st, err := n.Status()
		if err != nil {
			return err
		}
		if st.BackendState == "" || st.BackendState == "NoState" {
			return fmt.Errorf("backend state %q", st.BackendState)
		}
		return nil
	})
	if err != nil {
		n.t.Fatalf("tailscaled %s not ready: %v", n.Name, err)
	}
}

// CLI runs `tailscale --socket SOCKET args...` with a timeout and returns
// its combined output.
func (n *Node) CLI(timeout time.Duration, args ...string) (string, error) {
	full := append([]string{"--socket", n.Socket}, args...)
	stdout, stderr, err := runCmd(timeout, n.env.Tailscale, full...)
	out := stdout + stderr
	if err != nil {
		return out, fmt.Errorf("%s: tailscale %s: %v: %s", n.Name, strings.Join(args, " "), err, strings.TrimSpace(out))
	}
	return out, nil
}

// Up runs `tailscale up` against the node's server with authKey and
// returns the combined output. Extra arguments are appended; they may
// include "--timeout", "20s" to replace the default --timeout 60s (the
// tailscale CLI rejects a flag given twice).
func (n *Node) Up(authKey string, extra ...string) (string, error) {
	n.t.Helper()
	if n.srv == nil {
		n.t.Fatalf("node %s has no server", n.Name)
	}
	args := []string{
		"up",
		"--login-server", n.srv.URL,
		"--auth-key", authKey,
		"--hostname", n.Name,
	}
	if !slices.ContainsFunc(extra, func(a string) bool {
		return a == "--timeout" || a == "-timeout" || strings.HasPrefix(a, "--timeout=") || strings.HasPrefix(a, "-timeout=")
	}) {
		args = append(args, "--timeout", "60s")
	}
	args = append(args, extra...)
	return n.CLI(2*time.Minute, args...)
}

// MustUp runs Up and fails the test unless the node ends up Running.
func (n *Node) MustUp(authKey string, extra ...string) {
	n.t.Helper()
	if out, err := n.Up(authKey, extra...); err != nil {
		n.t.Fatalf("tailscale up on %s failed: %v\n%s", n.Name, err, out)
	}
	tstest.WaitFor(n.t, 30*time.Second, "the node to be running", func() error {
		st, err := n.Status()
		if err != nil {
			return err
		}
		if st.BackendState != "Running" {
			return fmt.Errorf("%s: backend state %q, want Running", n.Name, st.BackendState)
		}
		return nil
	})
}

// Status returns the parsed `tailscale status --json`.
func (n *Node) Status() (*ipnstate.Status, error) {
	out, stderr, err := runCmd(30*time.Second, n.env.Tailscale, "--socket", n.Socket, "status", "--json")
	if err != nil {
		return nil, fmt.Errorf("%s: tailscale status --json: %v: %s", n.Name, err, strings.TrimSpace(out+stderr))
	}
	st := new(ipnstate.Status)
	if err := json.Unmarshal([]byte(out), st); err != nil {
		return nil, fmt.Errorf("%s: decoding status: %v", n.Name, err)
	}
	return st, nil
}

// MustStatus is Status failing the test on error.
func (n *Node) MustStatus() *ipnstate.Status {
	n.t.Helper()
	st, err := n.Status()
	if err != nil {
		n.t.Fatal(err)
	}
	return st
}

// IPs returns the node's own tailnet addresses.
func (n *Node) IPs() ([]netip.Addr, error) {
	st, err := n.Status()
	if err != nil {
		return nil, err
	}
	if st.Self == nil || len(st.Self.TailscaleIPs) == 0 {
		return nil, fmt.Errorf("%s: no tailnet IPs (state %s)", n.Name, st.BackendState)
	}
	return st.Self.TailscaleIPs, nil
}

// IPv4 returns the node's tailnet IPv4 address, failing the test if it has
// none.
func (n *Node) IPv4() netip.Addr {
	n.t.Helper()
	ips, err := n.IPs()
	if err != nil {
		n.t.Fatal(err)
	}
	for _, ip := range ips {
		if ip.Is4() {
			return ip
		}
	}
	n.t.Fatalf("%s: no IPv4 among %v", n.Name, ips)
	return netip.Addr{}
}

// findPeer returns the peer whose HostName is name, or nil.
func findPeer(st *ipnstate.Status, name string) *ipnstate.PeerStatus {
	for _, p := range st.Peer {
		if p.HostName == name {
			return p
		}
	}
	return nil
}

// peerNames lists the peers' host names, for error messages.
func peerNames(st *ipnstate.Status) []string {
	var names []string
	for _, p := range st.Peer {
		names = append(names, fmt.Sprintf("%s(online=%v)", p.HostName, p.Online))
	}
	return names
}

// WaitForPeer waits until this node's status lists peer as Online and
// returns that peer entry.
func (n *Node) WaitForPeer(peer *Node, timeout time.Duration) *ipnstate.PeerStatus {
	n.t.Helper()
	var found *ipnstate.PeerStatus
	tstest.WaitFor(n.t, timeout, "the peer", func() error {
		st, err := n.Status()
		if err != nil {
			return err
		}
		p := findPeer(st, peer.Name)
		if p == nil {
			return fmt.Errorf("%s does not list %s among peers %v", n.Name, peer.Name, peerNames(st))
		}
		if !p.Online {
			return fmt.Errorf("%s lists %s but not Online", n.Name, peer.Name)
		}
		found = p
		return nil
	})
	return found
}

// Ping runs `tailscale ping -c 1 --until-direct=false --timeout 5s IP`
// until it gets a pong or within passes, and returns the successful
// output (or the last output and error).
func (n *Node) Ping(peer netip.Addr, within time.Duration) (string, error) {
	var out string
	err := tstest.Poll(within, func() error {
		var err error
		out, err = n.CLI(15*time.Second, "ping", "-c", "1", "--until-direct=false", "--timeout", "5s", peer.String())
		if err == nil && !strings.Contains(out, "pong from") {
			err = fmt.Errorf("%s: no pong in output: %s", n.Name, out)
		}
		return err
	})
	return strings.TrimSpace(out), err
}

// Logout runs `tailscale logout`.
func (n *Node) Logout() error {
	_, err := n.CLI(60*time.Second, "logout")
	return err
}

// Stop stops tailscaled gracefully (SIGTERM), keeping its state directory.
func (n *Node) Stop() {
	n.proc.stop(10 * time.Second)
}

// Kill stops tailscaled with SIGKILL, so it cannot say goodbye to the
// server.
func (n *Node) Kill() {
	n.proc.kill()
}

// Restart stops tailscaled and starts it again on the same state directory
// and ports, waiting until its LocalAPI answers.
func (n *Node) Restart() {
	n.t.Helper()
	n.Stop()
	n.start()
}

// WhoIs asks this node's LocalAPI who owns addr (ip:port), as seen by this
// node.
func (n *Node) WhoIs(ctx context.Context, addr string) (*apitype.WhoIsResponse, error) {
	lc := &local.Client{Socket: n.Socket, UseSocketOnly: true}
	return lc.WhoIs(ctx, addr)
}
