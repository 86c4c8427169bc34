//go:build linux

package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/tstest"
)

// TestDeviceApproval: with node.require_approval, real tailscaled
// registered with a plain pre-auth key shows NeedsMachineAuth and can reach
// no one (nor be reached); `headscale nodes approve` brings it to Running
// with traffic both ways; a node registered with a tagged pre-auth key is
// Running at once.
func TestDeviceApproval(t *testing.T) {
	requireEnv(t)
	srv := StartServer(t, ServerOptions{RequireApproval: true})
	srv.CreateUser(t, "alice")
	plain := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true, Expiration: "1h"})
	tagged := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true, Expiration: "1h", Tags: []string{"tag:server"}})

	server := StartNode(t, srv, "approval-server", NodeOptions{})
	server.MustUp(tagged.Key) // Running at once: no approval

	laptop := StartNode(t, srv, "approval-laptop", NodeOptions{})
	up := &webUp{done: make(chan struct{})}
	go func() {
		defer close(up.done)
		// Waits, printing the admin's approval hint, until approved.
		up.out, up.err = laptop.Up(plain.Key, "--timeout", "90s")
	}()
	tstest.WaitFor(t, 60*time.Second, laptop.Name+" to need machine authorisation", func() error {
		st, err := laptop.Status()
		if err != nil {
			return err
		}
		if st.BackendState != "NeedsMachineAuth" {
			return fmt.Errorf("backend state %s", st.BackendState)
		}
		return nil
	})
	info, err := srv.findNode(t, laptop.Name)
	if err != nil {
		t.Fatal(err)
	}
	var listed []struct {
		GivenName       string `json:"given_name"`
		PendingApproval bool   `json:"pending_approval"`
	}
	srv.cliJSON(t, &listed, "nodes", "list", "-o", "json")
	for _, n := range listed {
		if want := n.GivenName == laptop.Name; n.PendingApproval != want {
			t.Errorf("nodes list: %s pending_approval %v, want %v", n.GivenName, n.PendingApproval, want)
		}
	}
	if st := laptop.MustStatus(); len(st.Peer) != 0 {
		t.Errorf("the waiting laptop has peers: %v", peerNames(st))
	}
	if st := server.MustStatus(); len(st.Peer) != 0 {
		t.Errorf("the server sees the waiting laptop: %v", peerNames(st))
	}
	laptopIP, serverIP := info.IPAddresses[0], server.IPv4()
	if out, err := server.CLI(15*time.Second, "ping", "-c", "1", "--timeout", "3s", laptopIP); err == nil || strings.Contains(out, "pong from") {
		t.Errorf("the server reached the waiting laptop: %v %s", err, out)
	}
	if out, err := laptop.CLI(15*time.Second, "ping", "-c", "1", "--timeout", "3s", serverIP.String()); err == nil || strings.Contains(out, "pong from") {
		t.Errorf("the waiting laptop reached the server: %v %s", err, out)
	}

	if _, err := srv.CLI(t, "nodes", "approve", "-i", string(info.ID)); err != nil {
		t.Fatal(err)
	}
	approved := time.Now()
	tstest.WaitFor(t, 30*time.Second, laptop.Name+" to be Running", func() error {
		st, err := laptop.Status()
		if err != nil {
			return err
		}
		if st.BackendState != "Running" {
			return fmt.Errorf("backend state %s", st.BackendState)
		}
		return nil
	})
	t.Logf("Running %v after the approval (status polled)", time.Since(approved).Round(time.Millisecond))
	select {
	case <-up.done:
		if up.err != nil {
			t.Errorf("tailscale up: %v\n%s", up.err, up.out)
		}
	case <-time.After(60 * time.Second):
		t.Error("tailscale up still waiting after the approval")
	}
	laptop.WaitForPeer(server, 30*time.Second)
	server.WaitForPeer(laptop, 30*time.Second)
	if out, err := laptop.Ping(serverIP, 30*time.Second); err != nil {
		t.Errorf("laptop → server after approval: %v %s", err, out)
	}
	if out, err := server.Ping(laptop.IPv4(), 30*time.Second); err != nil {
		t.Errorf("server → laptop after approval: %v %s", err, out)
	}
}
