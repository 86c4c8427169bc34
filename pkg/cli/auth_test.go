package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// TestAuthApproveReject resolves real pending SSH checks with
// `headscale auth approve|reject --auth-id`, locally over the unix socket
// and remotely with an API key; the node's held request gets the verdict.
func TestAuthApproveReject(t *testing.T) {
	addr := freePort(t)
	cfg := startServer(t, t.TempDir(), "listen_addr: "+addr+"\nserver_url: http://"+addr+"\n").ConfigPath
	if code, _, stderr := run(t, "-c", cfg, "users", "create", "alice"); code != 0 {
		t.Fatal(stderr)
	}
	code, authKey, stderr := run(t, "-c", cfg, "preauthkeys", "create", "--user", "1", "--reusable")
	if code != 0 {
		t.Fatal(stderr)
	}
	code, apiKey, stderr := run(t, "-c", cfg, "apikeys", "create")
	if code != 0 {
		t.Fatal(stderr)
	}
	remote := []string{"HEADSCALE_CLI_ADDRESS=http://" + addr, "HEADSCALE_CLI_API_KEY=" + strings.TrimSpace(apiKey)}

	// One node, both the SSH client's and the server's end.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: "http://" + addr, MachineKey: key.NewMachine()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	nk := key.NewNode()
	if _, err := c.Register(ctx, tsp.RegisterOpts{NodeKey: nk, AuthKey: strings.TrimSpace(authKey), Hostinfo: &tailcfg.Hostinfo{Hostname: "box"}}); err != nil {
		t.Fatal(err)
	}
	sess, err := c.Map(ctx, tsp.MapOpts{NodeKey: nk, Stream: true, Hostinfo: &tailcfg.Hostinfo{Hostname: "box"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	full, err := sess.Next()
	if err != nil {
		t.Fatal(err)
	}
	ask := func(u string) *tailcfg.SSHAction {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
		res, err := sess.NoiseRoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		var a tailcfg.SSHAction
		if res.StatusCode != http.StatusOK || json.Unmarshal(b, &a) != nil {
			t.Fatalf("GET %s: %d %s", u, res.StatusCode, b)
		}
		return &a
	}
	id := int64(full.Node.ID)
	hold := func() (string, string) {
		t.Helper()
		a := ask(fmt.Sprintf("https://control/machine/ssh/action/%d/to/%d?local_user=root", id, id))
		u, err := url.Parse(a.HoldAndDelegate)
		if err != nil || u.Query().Get("auth_id") == "" {
			t.Fatalf("want HoldAndDelegate with an auth_id, got %+v", a)
		}
		return u.Query().Get("auth_id"), a.HoldAndDelegate
	}
	verdict := func(next string) chan *tailcfg.SSHAction {
		ch := make(chan *tailcfg.SSHAction, 1)
		go func() { ch <- ask(next) }()
		return ch
	}
	get := func(ch chan *tailcfg.SSHAction) *tailcfg.SSHAction {
		t.Helper()
		select {
		case a := <-ch:
			return a
		case <-time.After(10 * time.Second):
			t.Fatal("held request still blocked after the verdict")
		}
		return nil
	}

	// Reject remotely first (a rejection is not remembered).
	authID, next := hold()
	ch := verdict(next)
	if code, out, stderr := runEnv(t, remote, "-c", cfg, "auth", "reject", "--auth-id", authID); code != 0 || !strings.Contains(out, "rejected") {
		t.Fatalf("remote auth reject: %d %q %q", code, out, stderr)
	}
	if a := get(ch); !a.Reject || a.Accept {
		t.Fatalf("after reject: %+v", a)
	}

	// Approve locally over the socket.
	authID, next = hold()
	ch = verdict(next)
	if code, out, stderr := run(t, "-c", cfg, "auth", "approve", "--auth-id", authID, "-o", "json"); code != 0 || strings.TrimSpace(out) != "{}" {
		t.Fatalf("auth approve: %d %q %q", code, out, stderr)
	}
	if a := get(ch); !a.Accept || a.Reject {
		t.Fatalf("after approve: %+v", a)
	}

	// Mistakes say what is wrong.
	for _, tc := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"auth", "approve", "--auth-id", authID}, "already approved"},
		{nil, []string{"auth", "approve", "--auth-id", "sshcheck-nope"}, "no pending authentication sshcheck-nope"},
		{remote, []string{"auth", "reject", "--auth-id", "sshcheck-nope"}, "no pending authentication sshcheck-nope"},
		{nil, []string{"auth", "approve"}, "auth-id"},
	} {
		code, _, stderr := runEnv(t, tc.env, append([]string{"-c", cfg}, tc.args...)...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: %d %q, want exit 1 and %q", tc.args, code, stderr, tc.want)
		}
	}
}
