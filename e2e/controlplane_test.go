//go:build linux

package e2e

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
	"tailscale.com/tailcfg"
)

// Deadlines for conditions that involve the control plane reacting. They
// are generous because the machine is small and shared; nothing asserts on
// how quickly a condition became true.
const (
	peerTimeout   = 60 * time.Second
	pingTimeout   = 60 * time.Second
	removeTimeout = 90 * time.Second
)

// randomBytes returns n random bytes.
func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// startPair starts two nodes, node-a and node-b, logs both in to srv with
// key and waits until each lists the other as an online peer.
func startPair(t *testing.T, srv *Server, key string, opts NodeOptions) (a, b *Node) {
	t.Helper()
	a = StartNode(t, srv, "node-a", opts)
	b = StartNode(t, srv, "node-b", opts)
	a.MustUp(key)
	b.MustUp(key)
	a.WaitForPeer(b, peerTimeout)
	b.WaitForPeer(a, peerTimeout)
	return a, b
}

// mustPing pings to's IPv4 from from and returns the pong line.
func mustPing(t *testing.T, from, to *Node) string {
	t.Helper()
	out, err := from.Ping(to.IPv4(), pingTimeout)
	if err != nil {
		t.Fatalf("ping %s -> %s: %v\n%s", from.Name, to.Name, err, out)
	}
	t.Logf("ping %s -> %s: %s", from.Name, to.Name, out)
	return out
}

// waitServerOnline waits until `nodes list` shows every named node online.
func waitServerOnline(t *testing.T, srv *Server, names ...string) {
	t.Helper()
	tstest.WaitFor(t, peerTimeout, "every named node online in `nodes list`", func() error {
		for _, name := range names {
			n, err := srv.findNode(t, name)
			if err != nil {
				return err
			}
			if !n.Online {
				return fmt.Errorf("nodes list: %s not online", name)
			}
		}
		return nil
	})
}

// TestTwoNodesMesh logs two nodes in with a reusable key and checks that they
// see each other, ping each other, and move 1 MiB across the tailnet.
func TestTwoNodesMesh(t *testing.T) {
	srv := StartServer(t, ServerOptions{})
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	a, b := startPair(t, srv, key.Key, NodeOptions{})

	// The server's view agrees with the clients'.
	waitServerOnline(t, srv, a.Name, b.Name)
	for _, n := range []*Node{a, b} {
		info, err := srv.findNode(t, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		if info.User.Name != "alice" {
			t.Errorf("nodes list: %s belongs to %q, want alice", n.Name, info.User.Name)
		}
		for _, ip := range mustIPs(t, n) {
			if !info.HasIP(ip) {
				t.Errorf("nodes list: %s has %v, client reports %v", n.Name, info.IPAddresses, ip)
			}
		}
	}

	// Each client holds the capabilities Headscale gives every node.
	for _, n := range []*Node{a, b} {
		st := n.MustStatus()
		for _, c := range []tailcfg.NodeCapability{tailcfg.CapabilityAdmin, tailcfg.CapabilitySSH,
			tailcfg.CapabilityFileSharing, tailcfg.NodeAttrDefaultAutoUpdate} {
			if st.Self == nil || !st.Self.CapMap.Contains(c) {
				t.Errorf("%s: the client's own capabilities lack %s", n.Name, c)
			}
		}
	}

	mustPing(t, a, b)
	mustPing(t, b, a)
	SendBytes(t, a, b, b.ListenPort, randomBytes(t, 1<<20))
}

// TestViaDERP forces both clients to relay through the server's embedded
// DERP and checks that pings and 1 MiB of data get through that way.
func TestViaDERP(t *testing.T) {
	srv := StartServer(t, ServerOptions{})
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	a, b := startPair(t, srv, key.Key, NodeOptions{Env: []string{"TS_DEBUG_ALWAYS_USE_DERP=1"}})

	for _, pair := range [][2]*Node{{a, b}, {b, a}} {
		out := mustPing(t, pair[0], pair[1])
		if !strings.Contains(out, "via DERP(") {
			t.Errorf("ping %s -> %s did not go via DERP: %s", pair[0].Name, pair[1].Name, out)
		}
	}
	SendBytes(t, a, b, b.ListenPort, randomBytes(t, 1<<20))

	// The relay's metrics saw both clients and the megabyte.
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", srv.MetricsPort))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	metric := func(name string) float64 {
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		return -1
	}
	if got := metric("headscale_derp_connections_total"); got < 2 {
		t.Errorf("headscale_derp_connections_total = %v, want >= 2", got)
	}
	if got := metric("headscale_derp_bytes_relayed_total"); got < 1<<20 {
		t.Errorf("headscale_derp_bytes_relayed_total = %v, want >= 1 MiB", got)
	}
}

// TestSingleUseKey checks that a non-reusable key registers one node only
// and that an expired key registers none, with clear messages.
func TestSingleUseKey(t *testing.T) {
	srv := StartServer(t, ServerOptions{})
	srv.CreateUser(t, "alice")
	once := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{})

	a := StartNode(t, srv, "first", NodeOptions{})
	a.MustUp(once.Key)

	b := StartNode(t, srv, "second", NodeOptions{})
	out, err := b.Up(once.Key, "--timeout", "30s")
	if err == nil {
		t.Fatalf("second node registered with a single-use key:\n%s", out)
	}
	t.Logf("reusing a single-use key: %v", err)
	if lo := strings.ToLower(out); !strings.Contains(lo, "used") && !strings.Contains(lo, "already") {
		t.Errorf("tailscale up with a used key: output does not say the key was used:\n%s", out)
	}

	var found bool
	for _, k := range srv.ListPreAuthKeys(t) {
		if k.ID == once.ID {
			found = true
			if !k.Used {
				t.Errorf("preauthkeys list: single-use key %s not marked used: %+v", k.ID, k)
			}
		}
	}
	if !found {
		t.Errorf("preauthkeys list: key %s missing", once.ID)
	}

	exp := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Expiration: "1h"})
	if !exp.Expiration.After(time.Now()) {
		t.Errorf("preauthkeys create --expiration 1h: expiration %v not in the future", exp.Expiration)
	}
	srv.ExpirePreAuthKey(t, string(exp.ID))
	c := StartNode(t, srv, "third", NodeOptions{})
	out, err = c.Up(exp.Key, "--timeout", "30s")
	if err == nil {
		t.Fatalf("node registered with an expired key:\n%s", out)
	}
	t.Logf("using an expired key: %v", err)
	if !strings.Contains(strings.ToLower(out), "expired") {
		t.Errorf("tailscale up with an expired key: output does not say the key expired:\n%s", out)
	}

	nodes := srv.ListNodes(t)
	if len(nodes) != 1 || nodes[0].Name != a.Name {
		t.Errorf("nodes list: want only %s, got %+v", a.Name, nodes)
	}
}

// TestEphemeralNodeRemoved checks that an ephemeral node which vanishes
// without logging out is deleted after the inactivity timeout, and that its
// peers stop seeing it.
func TestEphemeralNodeRemoved(t *testing.T) {
	srv := StartServer(t, ServerOptions{EphemeralInactivityTimeout: 5 * time.Second})
	srv.CreateUser(t, "alice")
	ephKey := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Ephemeral: true})
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})

	e := StartNode(t, srv, "ephemeral", NodeOptions{})
	n := StartNode(t, srv, "normal", NodeOptions{})
	e.MustUp(ephKey.Key)
	n.MustUp(key.Key)
	n.WaitForPeer(e, peerTimeout)
	e.WaitForPeer(n, peerTimeout)
	if _, err := srv.findNode(t, e.Name); err != nil {
		t.Fatal(err)
	}

	e.Kill()
	tstest.WaitFor(t, removeTimeout, "the ephemeral node to go", func() error {
		st, err := n.Status()
		if err != nil {
			return err
		}
		if p := findPeer(st, e.Name); p != nil {
			return fmt.Errorf("%s still lists %s (online=%v)", n.Name, e.Name, p.Online)
		}
		if info, err := srv.findNode(t, e.Name); !errors.Is(err, errNodeNotFound) {
			if err != nil {
				return err
			}
			return fmt.Errorf("nodes list still has %s (id %s, online=%v)", e.Name, info.ID, info.Online)
		}
		return nil
	})

	// The normal node is untouched.
	if _, err := srv.findNode(t, n.Name); err != nil {
		t.Errorf("normal node: %v", err)
	}
}

// TestLogout checks that after `tailscale logout` on a node, its peer no
// longer treats it as a live peer and the server shows it removed or
// expired.
func TestLogout(t *testing.T) {
	srv := StartServer(t, ServerOptions{})
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	a, b := startPair(t, srv, key.Key, NodeOptions{})

	if err := a.Logout(); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, peerTimeout, "the logout to show", func() error {
		st, err := a.Status()
		if err != nil {
			return err
		}
		if st.BackendState != "NeedsLogin" {
			return fmt.Errorf("%s after logout: BackendState %q, want NeedsLogin", a.Name, st.BackendState)
		}
		return nil
	})
	tstest.WaitFor(t, removeTimeout, "the logged-out peer to go", func() error {
		st, err := b.Status()
		if err != nil {
			return err
		}
		p := findPeer(st, a.Name)
		if p == nil {
			t.Logf("%s no longer lists %s", b.Name, a.Name)
			return nil
		}
		if p.Expired || (p.KeyExpiry != nil && !p.KeyExpiry.After(time.Now())) {
			t.Logf("%s lists %s as expired (keyExpiry %v)", b.Name, a.Name, p.KeyExpiry)
			return nil
		}
		return fmt.Errorf("%s still lists %s as a live peer (online=%v, keyExpiry=%v)", b.Name, a.Name, p.Online, p.KeyExpiry)
	})
	tstest.WaitFor(t, removeTimeout, "the logged-out node to leave the server", func() error {
		info, err := srv.findNode(t, a.Name)
		if errors.Is(err, errNodeNotFound) {
			t.Logf("nodes list no longer has %s", a.Name)
			return nil
		}
		if err != nil {
			return err
		}
		if info.Expired(time.Now()) {
			t.Logf("nodes list shows %s expired at %v", a.Name, info.Expiry)
			return nil
		}
		return fmt.Errorf("nodes list: %s neither removed nor expired (expiry %v)", a.Name, info.Expiry)
	})
}

// TestServerRestart checks that nodes reconnect on their own after the
// server restarts and keep their addresses and MagicDNS names.
func TestServerRestart(t *testing.T) {
	srv := StartServer(t, ServerOptions{})
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	a, b := startPair(t, srv, key.Key, NodeOptions{})
	mustPing(t, a, b)

	type identity struct {
		ips     []netip.Addr
		dnsName string
	}
	snapshot := func(n *Node) identity {
		t.Helper()
		st := n.MustStatus()
		if st.Self == nil || st.Self.DNSName == "" {
			t.Fatalf("%s: no Self.DNSName in status", n.Name)
		}
		return identity{ips: st.Self.TailscaleIPs, dnsName: st.Self.DNSName}
	}
	before := map[*Node]identity{a: snapshot(a), b: snapshot(b)}
	for n, id := range before {
		t.Logf("%s before restart: %v %s", n.Name, id.ips, id.dnsName)
	}

	srv.Restart()

	waitServerOnline(t, srv, a.Name, b.Name)
	a.WaitForPeer(b, peerTimeout)
	b.WaitForPeer(a, peerTimeout)
	// Status and online flags could be stale; a node that joins only now
	// reaches a and b only through map sessions with the restarted server,
	// which shows that both reconnected by themselves.
	c := StartNode(t, srv, "node-c", NodeOptions{})
	c.MustUp(key.Key)
	a.WaitForPeer(c, peerTimeout)
	b.WaitForPeer(c, peerTimeout)
	mustPing(t, a, b)
	mustPing(t, b, a)

	for n, id := range before {
		now := snapshot(n)
		if fmt.Sprint(now.ips) != fmt.Sprint(id.ips) {
			t.Errorf("%s: IPs changed across restart: %v -> %v", n.Name, id.ips, now.ips)
		}
		if now.dnsName != id.dnsName {
			t.Errorf("%s: MagicDNS name changed across restart: %q -> %q", n.Name, id.dnsName, now.dnsName)
		}
		info, err := srv.findNode(t, n.Name)
		if err != nil {
			t.Fatal(err)
		}
		for _, ip := range id.ips {
			if !info.HasIP(ip) {
				t.Errorf("nodes list after restart: %s has %v, want %v", n.Name, info.IPAddresses, id.ips)
			}
		}
	}
}

// mustIPs returns the node's tailnet addresses, failing the test if it has
// none.
func mustIPs(t *testing.T, n *Node) []netip.Addr {
	t.Helper()
	ips, err := n.IPs()
	if err != nil {
		t.Fatal(err)
	}
	return ips
}
