package cli

import (
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestNodesApprove: `nodes approve -i` approves a node waiting for device
// approval; `nodes list` shows an Approved column only while approval is
// on or a node waits (Headscale's table otherwise), and -o json carries
// pending_approval only for a waiting node; nodes that existed when the
// setting was turned on are approved.
func TestNodesApprove(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, "")
	cli := func(args ...string) string {
		t.Helper()
		code, out, stderr := run(t, append([]string{"-c", ts.ConfigPath}, args...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		return out
	}
	cols := func(l string) []string { return regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(l), -1) }
	header := func() []string {
		t.Helper()
		h, _, _ := strings.Cut(cli("nodes", "list"), "\n")
		return cols(h)
	}
	jsonNodes := func() []map[string]any {
		t.Helper()
		var nodes []map[string]any
		if err := json.Unmarshal([]byte(cli("nodes", "list", "-o", "json")), &nodes); err != nil {
			t.Fatal(err)
		}
		return nodes
	}
	uid := ts.CreateUser(t, "alice")
	old := ts.RegisterNode(t, ts.CreatePreAuthKey(t, uid, true, time.Now().Add(time.Hour)), "old")
	if h := header(); slices.Contains(h, "Approved") || h[len(h)-1] != "Expired" {
		t.Errorf("without device approval the table is not Headscale's: %q", h)
	}

	// The setting turned on.
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, dir, "node:\n  require_approval: true\n")
	authKey := ts.CreatePreAuthKey(t, uid, true, time.Now().Add(time.Hour))
	c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: ts.URL, MachineKey: key.NewMachine()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if resp, err := c.Register(ctx, tsp.RegisterOpts{NodeKey: key.NewNode(), AuthKey: authKey, Hostinfo: &tailcfg.Hostinfo{Hostname: "fresh"}}); err != nil || resp.MachineAuthorized {
		t.Fatalf("registering fresh: %v %+v", err, resp)
	}
	if h := header(); h[len(h)-1] != "Approved" {
		t.Errorf("columns %q, want Approved last", h)
	}
	var freshID string
	for _, line := range strings.Split(strings.TrimSpace(cli("nodes", "list")), "\n")[1:] {
		f := cols(line)
		switch {
		case slices.Contains(f, "fresh"):
			freshID = f[0]
			if f[len(f)-1] != "no" {
				t.Errorf("waiting node's row: %q", line)
			}
		case f[0] == old.ID && f[len(f)-1] != "yes":
			t.Errorf("a node that existed before approval was required is not approved: %q", line)
		}
	}
	if freshID == "" {
		t.Fatal("fresh not listed")
	}
	for _, n := range jsonNodes() {
		_, pending := n["pending_approval"]
		if want := n["given_name"] == "fresh"; pending != want {
			t.Errorf("-o json: node %v pending_approval present %v, want %v", n["given_name"], pending, want)
		}
	}

	if out := cli("nodes", "approve", "-i", freshID); !strings.Contains(out, "Node approved") {
		t.Errorf("nodes approve: %q", out)
	}
	var approved map[string]any
	if err := json.Unmarshal([]byte(cli("nodes", "approve", "--identifier", freshID, "-o", "json")), &approved); err != nil {
		t.Fatal(err)
	}
	if _, pending := approved["pending_approval"]; pending || approved["given_name"] != "fresh" {
		t.Errorf("nodes approve -o json: %v", approved)
	}
	for _, n := range jsonNodes() {
		if _, pending := n["pending_approval"]; pending {
			t.Errorf("node %v still waits", n["given_name"])
		}
	}
	if code, _, stderr := run(t, "-c", ts.ConfigPath, "nodes", "approve"); code == 0 || !strings.Contains(stderr, "--identifier/-i") {
		t.Errorf("nodes approve without -i: %d %q", code, stderr)
	}
	if code, _, stderr := run(t, "-c", ts.ConfigPath, "nodes", "approve", "-i", "999"); code == 0 || !strings.Contains(stderr, "not found") {
		t.Errorf("nodes approve -i 999: %d %q", code, stderr)
	}
	if help := cli("nodes", "approve", "--help"); !strings.Contains(help, "this server's extension") || !strings.Contains(help, "-i, --identifier") {
		t.Errorf("nodes approve --help:\n%s", help)
	}

	// Turned off again, with every node approved: Headscale's table.
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	ts = startServer(t, dir, "")
	if h := header(); slices.Contains(h, "Approved") {
		t.Errorf("approval off and no node waiting, yet the table has %q", h)
	}
}
