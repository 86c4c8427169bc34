//go:build linux

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sshAttempt is one `ssh` run from a node to another node's Tailscale SSH
// server, through `tailscale nc` (the node is in userspace mode).
type sshAttempt struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	mu     sync.Mutex
	stderr strings.Builder
	authID chan string // the first auth ID the server's banner names
	done   chan error
}

var authIDRE = regexp.MustCompile(`--auth-id (\S+)`)

// startSSH runs `ssh root@<to> echo <marker>` from from without waiting.
func startSSH(t *testing.T, from, to *Node, marker string) *sshAttempt {
	t.Helper()
	ssh, err := exec.LookPath("ssh")
	if err != nil {
		t.Skip("no ssh client on this machine")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	a := &sshAttempt{authID: make(chan string, 1), done: make(chan error, 1)}
	a.cmd = exec.CommandContext(ctx, ssh, "-F", "/dev/null",
		"-o", "ProxyCommand="+from.env.Tailscale+" --socket "+from.Socket+" nc %h %p",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
		"root@"+to.IPv4().String(), "echo", marker)
	a.cmd.Stdout = &a.stdout
	a.cmd.WaitDelay = 5 * time.Second
	pipe, err := a.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(pipe)
		sent := false
		for sc.Scan() {
			line := sc.Text()
			a.mu.Lock()
			a.stderr.WriteString(line + "\n")
			a.mu.Unlock()
			if m := authIDRE.FindStringSubmatch(line); m != nil && !sent {
				a.authID <- m[1]
				sent = true
			}
		}
		a.done <- a.cmd.Wait()
	}()
	return a
}

func (a *sshAttempt) errText() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stderr.String()
}

// waitAuthID returns the auth ID the held connection shows its user.
func (a *sshAttempt) waitAuthID(t *testing.T) string {
	t.Helper()
	select {
	case id := <-a.authID:
		return id
	case err := <-a.done:
		t.Fatalf("ssh ended before showing an auth ID: %v\n%s", err, a.errText())
	case <-time.After(90 * time.Second):
		t.Fatalf("ssh showed no auth ID:\n%s", a.errText())
	}
	return ""
}

// wait returns ssh's exit error (nil on success).
func (a *sshAttempt) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-a.done:
		return err
	case <-time.After(90 * time.Second):
		t.Fatalf("ssh still running:\n%s", a.errText())
	}
	return nil
}

// TestSSHCheck runs a policy SSH "check" rule with official clients: the
// destination runs Tailscale SSH (tailscale up --ssh), a real ssh client
// connects from another node; the connection is held with an auth ID in
// the user's terminal until `headscale auth reject` or `auth approve`,
// and after an approval the next connection is let in at once.
func TestSSHCheck(t *testing.T) {
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("no ssh client on this machine")
	}
	policyPath := filepath.Join(t.TempDir(), "policy.hujson")
	if err := os.WriteFile(policyPath, []byte(`{
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "ssh": [{"action": "check", "src": ["alice@"], "dst": ["alice@"], "users": ["root"]}],
}`), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := StartServer(t, ServerOptions{ExtraConfig: "policy:\n  mode: file\n  path: " + strconv.Quote(policyPath) + "\n"})
	srv.CreateUser(t, "alice")
	k := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	client := StartNode(t, srv, "laptop", NodeOptions{})
	host := StartNode(t, srv, "box", NodeOptions{})
	client.MustUp(k.Key)
	host.MustUp(k.Key, "--ssh")
	client.WaitForPeer(host, peerTimeout)
	host.WaitForPeer(client, peerTimeout)

	// Rejected.
	a := startSSH(t, client, host, "never")
	id := a.waitAuthID(t)
	t.Logf("held with auth ID %s", id)
	if out, err := srv.CLI(t, "auth", "reject", "--auth-id", id); err != nil {
		t.Fatalf("auth reject: %v %s", err, out)
	}
	if err := a.wait(t); err == nil || strings.Contains(a.stdout.String(), "never") {
		t.Fatalf("rejected connection ran the command: %v %q\n%s", err, a.stdout.String(), a.errText())
	}
	if !strings.Contains(a.errText(), "rejected") {
		t.Errorf("the user was not told the connection was rejected:\n%s", a.errText())
	}

	// Approved.
	start := time.Now()
	a = startSSH(t, client, host, "approved-ok")
	id = a.waitAuthID(t)
	if out, err := srv.CLI(t, "auth", "approve", "--auth-id", id); err != nil {
		t.Fatalf("auth approve: %v %s", err, out)
	}
	if err := a.wait(t); err != nil || !strings.Contains(a.stdout.String(), "approved-ok") {
		t.Fatalf("approved connection: %v %q\n%s", err, a.stdout.String(), a.errText())
	}
	t.Logf("held, approved and ran in %v; the user saw:\n%s", time.Since(start).Round(time.Millisecond), a.errText())

	// Within the check period: in at once, no auth ID.
	a = startSSH(t, client, host, "again-ok")
	if err := a.wait(t); err != nil || !strings.Contains(a.stdout.String(), "again-ok") {
		t.Fatalf("second connection: %v %q\n%s", err, a.stdout.String(), a.errText())
	}
	if strings.Contains(a.errText(), "--auth-id") {
		t.Errorf("second connection within the check period was held again:\n%s", a.errText())
	}
	if err := srv.logContains("outcome=accepted-within-check-period"); err != nil {
		t.Error(err)
	}
}
