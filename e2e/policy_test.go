//go:build linux

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"golang.org/x/net/proxy"
)

// Reload sends SIGHUP, as `systemctl reload headscale` does.
func (s *Server) Reload(t testing.TB) {
	t.Helper()
	if err := s.proc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
}

// logContains reports whether the server's log has a line containing sub.
func (s *Server) logContains(sub string) error {
	b, err := os.ReadFile(s.LogPath)
	if err != nil {
		return err
	}
	if !strings.Contains(string(b), sub) {
		return fmt.Errorf("server log lacks %q", sub)
	}
	return nil
}

// tryConnect opens a TCP connection from from to to's tailnet IPv4 at port
// through from's SOCKS5 proxy and exchanges a small payload with a
// listener on 127.0.0.1:port (where to's netstack delivers it). It returns
// nil only when the payload made the round trip and to attributes the
// connection to from.
func tryConnect(from, to *Node, port int, timeout time.Duration) error {
	results, stop, err := listenAs(to, port)
	if err != nil {
		return err
	}
	defer stop()
	socks, err := proxy.SOCKS5("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(from.SOCKSPort)), nil, &net.Dialer{Timeout: timeout})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := socks.(proxy.ContextDialer).DialContext(ctx, "tcp", net.JoinHostPort(to.IPv4().String(), strconv.Itoa(port)))
	if err != nil {
		return fmt.Errorf("%s -> %s:%d: %w", from.Name, to.Name, port, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	payload := []byte("policy probe " + from.Name)
	var hdr [8]byte
	binary.BigEndian.PutUint64(hdr[:], uint64(len(payload)))
	c.Write(hdr[:])
	c.Write(payload)
	var echo [sha256.Size]byte
	if _, err := io.ReadFull(c, echo[:]); err != nil {
		return fmt.Errorf("%s -> %s:%d: no answer: %w", from.Name, to.Name, port, err)
	}
	if echo != sha256.Sum256(payload) {
		return fmt.Errorf("%s -> %s:%d: wrong checksum", from.Name, to.Name, port)
	}
	select {
	case r := <-results:
		if r.err != nil {
			return r.err
		}
		if r.whois == nil || r.whois.Node == nil || !r.whois.Node.Hostinfo.Valid() || r.whois.Node.Hostinfo.Hostname() != from.Name {
			return fmt.Errorf("%s -> %s:%d: arrived as %s", from.Name, to.Name, port, whoisName(r.whois))
		}
	case <-time.After(timeout):
		return fmt.Errorf("%s -> %s:%d: receiver reported nothing", from.Name, to.Name, port)
	}
	return nil
}

// allowed waits until from reaches to at port.
func allowed(t *testing.T, from, to *Node, port int) {
	t.Helper()
	tstest.WaitFor(t, 45*time.Second, "a connection the policy allows", func() error { return tryConnect(from, to, port, 5*time.Second) })
	t.Logf("allowed: %s -> %s:%d", from.Name, to.Name, port)
}

// denied checks that from cannot reach to at port.
func denied(t *testing.T, from, to *Node, port int) {
	t.Helper()
	if err := tryConnect(from, to, port, 4*time.Second); err == nil {
		t.Errorf("%s -> %s:%d connected, want it refused by the policy", from.Name, to.Name, port)
		return
	}
	t.Logf("denied as expected: %s -> %s:%d", from.Name, to.Name, port)
}

// hasPeer reports whether n's status lists peer.
func hasPeer(n, peer *Node) bool {
	st, err := n.Status()
	return err == nil && findPeer(st, peer.Name) != nil
}

// TestPolicy runs four official clients under a policy file: a one-way
// user rule, a tag rule restricted to one port, autogroup:self, nodeAttrs, a live
// change by SIGHUP that takes effect without restarting the clients, and a
// broken policy that is refused while traffic keeps flowing under the old
// one.
func TestPolicy(t *testing.T) {
	env := requireEnv(t)
	policyPath := filepath.Join(t.TempDir(), "policy.hujson")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(policyPath, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	otherPort := env.FreePort(t)
	const base = `{
  // alice may open anything on bob's devices; not the other way round.
  "groups": {"group:admins": ["alice@"]},
  "tagOwners": {"tag:server": ["group:admins"]},
  "nodeAttrs": [{"target": ["bob@"], "attr": ["custom:e2e-attr"]}],
  "acls": [
    {"action": "accept", "src": ["alice@"], "dst": ["bob@:*"]},
    {"action": "accept", "src": ["bob@"], "dst": ["tag:server:SERVERPORT"]},
    {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self:*"]},
    EXTRA
  ],
}
`
	// Node ports are known only after the nodes exist; start with a policy
	// that has the rules but a placeholder port, then rewrite it.
	write(strings.NewReplacer("SERVERPORT", "1", "EXTRA", "").Replace(base))
	srv := StartServer(t, ServerOptions{ExtraConfig: "policy:\n  mode: file\n  path: " + strconv.Quote(policyPath) + "\n"})
	srv.CreateUser(t, "alice")
	srv.CreateUser(t, "bob")
	ka := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	kb := srv.CreatePreAuthKey(t, "bob", PreAuthKeyOptions{Reusable: true})
	ks := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true, Tags: []string{"tag:server"}})

	a1 := StartNode(t, srv, "alice-1", NodeOptions{})
	a2 := StartNode(t, srv, "alice-2", NodeOptions{})
	b1 := StartNode(t, srv, "bob-1", NodeOptions{})
	s1 := StartNode(t, srv, "server-1", NodeOptions{})
	a1.MustUp(ka.Key)
	a2.MustUp(ka.Key)
	b1.MustUp(kb.Key)
	s1.MustUp(ks.Key)

	serverPort := s1.ListenPort
	write(strings.NewReplacer("SERVERPORT", strconv.Itoa(serverPort), "EXTRA", "").Replace(base))
	srv.Reload(t)

	// A one-way rule makes both sides visible; with no rule between them
	// alice's device and the tagged server do not see each other.
	a1.WaitForPeer(b1, peerTimeout)
	b1.WaitForPeer(a1, peerTimeout)
	b1.WaitForPeer(s1, peerTimeout)
	a1.WaitForPeer(a2, peerTimeout)
	if hasPeer(a1, s1) || hasPeer(s1, a1) {
		t.Errorf("alice-1 and server-1 see each other with no rule between them")
	}

	// nodeAttrs: bob's device carries the attribute in its own node
	// capabilities; alice's does not.
	tstest.WaitFor(t, 10*time.Second, "the node attribute", func() error {
		st, err := b1.Status()
		if err != nil {
			return err
		}
		if st.Self == nil || !st.Self.CapMap.Contains("custom:e2e-attr") {
			return fmt.Errorf("bob-1's self capabilities lack custom:e2e-attr")
		}
		return nil
	})
	if st := a1.MustStatus(); st.Self != nil && st.Self.CapMap.Contains("custom:e2e-attr") {
		t.Errorf("alice-1 got bob's node attribute")
	}

	allowed(t, a1, b1, b1.ListenPort) // user rule, one way
	denied(t, b1, a1, a1.ListenPort)  // ... not the reverse
	allowed(t, b1, s1, serverPort)    // tag rule on its port
	denied(t, b1, s1, otherPort)      // ... no other port
	allowed(t, a1, a2, a2.ListenPort) // autogroup:self
	denied(t, a1, s1, s1.ListenPort)  // tagged nodes are not members
	denied(t, b1, a2, a2.ListenPort)  // self is per user

	// A live change: bob may now reach alice; the running clients follow
	// without a restart.
	start := time.Now()
	write(strings.NewReplacer("SERVERPORT", strconv.Itoa(serverPort), "EXTRA", `{"action": "accept", "src": ["bob@"], "dst": ["alice@:*"]},`).Replace(base))
	srv.Reload(t)
	allowed(t, b1, a1, a1.ListenPort)
	t.Logf("policy change took effect on the clients in %v", time.Since(start).Round(time.Millisecond))

	// A broken policy is refused; the one in force stays and traffic flows.
	write("{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"group:nobody\"], \"dst\": [\"*:*\"]},\n  ],\n}\n")
	srv.Reload(t)
	tstest.WaitFor(t, 10*time.Second, "the refused reload in the log", func() error { return srv.logContains("policy not reloaded") })
	if err := srv.logContains(policyPath + ":3:"); err != nil {
		t.Errorf("the refusal does not name file and line: %v", err)
	}
	allowed(t, b1, a1, a1.ListenPort)
	allowed(t, a1, b1, b1.ListenPort)
	denied(t, b1, s1, otherPort)
}
