package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
)

// sshAsk fetches an SSH action URL over a node's own Noise connection, as
// tailscaled's SSH server does (LocalBackend.DoNoiseRequest: the URL is
// used as is). It returns the status, the action (on 200) and the body.
func sshAsk(t *testing.T, ctx context.Context, sess *tsp.MapSession, u string) (int, *tailcfg.SSHAction, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", u, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := sess.NoiseRoundTrip(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		return res.StatusCode, nil, string(b)
	}
	var a tailcfg.SSHAction
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("GET %s: %v: %s", u, err, b)
	}
	return res.StatusCode, &a, string(b)
}

// expand fills in a HoldAndDelegate URL's variables as tailssh does.
func expand(u string, src, dst tailcfg.NodeID, localUser string) string {
	return strings.NewReplacer("$SRC_NODE_ID", fmt.Sprint(int64(src)), "$DST_NODE_ID", fmt.Sprint(int64(dst)), "$LOCAL_USER", url.QueryEscape(localUser)).Replace(u)
}

// authID returns the auth_id a HoldAndDelegate URL carries.
func authID(t *testing.T, a *tailcfg.SSHAction) string {
	t.Helper()
	if a == nil || a.HoldAndDelegate == "" {
		t.Fatalf("want HoldAndDelegate, got %+v", a)
	}
	u, err := url.Parse(a.HoldAndDelegate)
	if err != nil {
		t.Fatal(err)
	}
	id := u.Query().Get("auth_id")
	if !strings.HasPrefix(id, sshcheck.IDPrefix) || !strings.Contains(a.Message, "headscale auth approve --auth-id "+id) {
		t.Fatalf("HoldAndDelegate %q, message %q: want an auth_id and the approve command", a.HoldAndDelegate, a.Message)
	}
	return id
}

// TestSSHCheckOverNoise runs SSH check rules end to end at the protocol
// level: the destination node takes the check URL from its own SSH policy
// and asks over its Noise connection; the server holds and delegates to a
// URL with an auth ID; the follow-up blocks until an admin approves or
// rejects through the API; an approval lets the next connection from the
// same source in at once.
func TestSSHCheckOverNoise(t *testing.T) {
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.hujson")
	os.WriteFile(pol, []byte(`{
  "tagOwners": {"tag:bot": ["alice@"]},
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "ssh": [{"action": "check", "src": ["alice@"], "dst": ["alice@"], "users": ["root", "alice"]}],
}`), 0o600)
	ts := startServerWith(t, dir, "policy:\n  mode: file\n  path: "+pol+"\n", nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	alice, err := ts.State().CreateUser(ctx, store.User{Name: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	k := ts.makeKey(t, alice.ID, true, time.Now().Add(time.Hour))
	cLaptop, cServer := newClient(t, ts.URL), newClient(t, ts.URL)
	nkLaptop, msg := register(t, cLaptop, k, "laptop")
	if msg != "" {
		t.Fatal(msg)
	}
	nkServer, msg := register(t, cServer, k, "server")
	if msg != "" {
		t.Fatal(msg)
	}
	if msg := registerWithTags(t, ts.URL, k, "bot", []string{"tag:bot"}); msg != "" {
		t.Fatal(msg)
	}
	sServer, full := openMap(t, ctx, cServer, nkServer, "server")
	sLaptop, fullLaptop := openMap(t, ctx, cLaptop, nkLaptop, "laptop")
	server, laptop := full.Node.ID, fullLaptop.Node.ID
	var bot tailcfg.NodeID
	for _, p := range full.Peers {
		if p.ComputedName == "bot" || strings.HasPrefix(p.Name, "bot.") {
			bot = p.ID
		}
	}
	if bot == 0 {
		t.Fatalf("no bot among server's peers")
	}

	// The check URL, from the destination's SSH policy.
	var check string
	if full.SSHPolicy != nil {
		for _, r := range full.SSHPolicy.Rules {
			if r.Action != nil && r.Action.HoldAndDelegate != "" {
				check = r.Action.HoldAndDelegate
			}
		}
	}
	if check == "" {
		t.Fatalf("server's SSH policy has no check rule: %+v", full.SSHPolicy)
	}
	// tailscaled fetches it as is through its Noise client, which only
	// routes https URLs through the Noise connection.
	if !strings.HasPrefix(check, "https://") {
		t.Fatalf("check URL %q: want https (an http URL would be dialled directly, not over Noise)", check)
	}
	first := expand(check, laptop, server, "root")

	api := func(verb, id string) string {
		return doAPI(t, ts.SocketHandler(), "POST", "/api/v1/auth/"+verb, fmt.Sprintf(`{"authId": %q}`, id))
	}
	type answer struct {
		code   int
		action *tailcfg.SSHAction
		body   string
	}
	followUp := func(sess *tsp.MapSession, a *tailcfg.SSHAction, src, dst tailcfg.NodeID) chan answer {
		ch := make(chan answer, 1)
		u := expand(a.HoldAndDelegate, src, dst, "root")
		go func() {
			code, act, body := sshAsk(t, ctx, sess, u)
			ch <- answer{code, act, body}
		}()
		select {
		case got := <-ch:
			t.Fatalf("follow-up returned before any verdict: %+v", got)
		case <-time.After(300 * time.Millisecond):
		}
		return ch
	}
	wait := func(ch chan answer) answer {
		t.Helper()
		select {
		case got := <-ch:
			return got
		case <-time.After(10 * time.Second):
			t.Fatal("follow-up still blocked after the verdict")
		}
		return answer{}
	}

	// Approve: held, approved through the API, accepted.
	code, a, body := sshAsk(t, ctx, sServer, first)
	if code != http.StatusOK {
		t.Fatalf("first request: %d %s", code, body)
	}
	id := authID(t, a)
	if a.Accept || a.Reject || !strings.Contains(a.Message, "laptop") || !strings.Contains(a.Message, "server") {
		t.Fatalf("first answer: %+v", a)
	}
	ch := followUp(sServer, a, laptop, server)
	if out := api("approve", id); strings.TrimSpace(out) != "{}" {
		t.Fatalf("approve: %s", out)
	}
	if got := wait(ch); got.code != http.StatusOK || !got.action.Accept || got.action.Reject || !got.action.AllowAgentForwarding {
		t.Fatalf("after approval: %d %s", got.code, got.body)
	}
	// The same pair again, within the check period: accepted at once.
	if code, a, body := sshAsk(t, ctx, sServer, first); code != http.StatusOK || !a.Accept || a.HoldAndDelegate != "" {
		t.Fatalf("second connection within the check period: %d %s", code, body)
	}
	// Deciding twice conflicts; an unknown ID is 404 with a reason.
	if out := api("reject", id); !strings.Contains(out, `"status":409`) || !strings.Contains(out, "already approved") {
		t.Fatalf("reject after approve: %s", out)
	}
	if out := api("approve", sshcheck.IDPrefix+"0123"); !strings.Contains(out, `"status":404`) || !strings.Contains(out, "no pending authentication") {
		t.Fatalf("approve unknown: %s", out)
	}

	// Reject: the reverse pair (laptop is the destination, asking on its
	// own connection) is not covered by the approval above.
	reverse := expand(check, server, laptop, "root")
	code, a, body = sshAsk(t, ctx, sLaptop, reverse)
	if code != http.StatusOK {
		t.Fatalf("reverse: %d %s", code, body)
	}
	id = authID(t, a)
	ch = followUp(sLaptop, a, server, laptop)
	if out := api("reject", id); strings.TrimSpace(out) != "{}" {
		t.Fatalf("reject: %s", out)
	}
	if got := wait(ch); got.code != http.StatusOK || !got.action.Reject || got.action.Accept || !strings.Contains(got.action.Message, "rejected") {
		t.Fatalf("after rejection: %d %s", got.code, got.body)
	}
	// A rejection is not remembered: the next connection is held again.
	if _, a, _ := sshAsk(t, ctx, sLaptop, reverse); a == nil || a.HoldAndDelegate == "" {
		t.Fatalf("after a rejection: %+v, want held again", a)
	}

	// Only the destination may ask, about nodes that exist.
	for _, tc := range []struct {
		name string
		sess *tsp.MapSession
		u    string
		code int
		want string
	}{
		{"another machine", sLaptop, first, http.StatusForbidden, "only the destination node"},
		{"unknown destination", sServer, expand(check, laptop, 99999, "root"), http.StatusNotFound, "unknown destination node 99999"},
		{"unknown source", sServer, expand(check, 99999, server, "root"), http.StatusNotFound, "unknown source node 99999"},
		{"bad node ID", sServer, strings.Replace(first, fmt.Sprintf("/to/%d", int64(server)), "/to/x", 1), http.StatusBadRequest, "must be a number"},
		{"auth ID of another pair", sServer, first + "&auth_id=" + url.QueryEscape(authID(t, a)), http.StatusForbidden, "belongs to another"},
	} {
		if code, _, body := sshAsk(t, ctx, tc.sess, tc.u); code != tc.code || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %q, want %d %q", tc.name, code, body, tc.code, tc.want)
		}
	}

	// A tagged source cannot pass a check.
	if code, a, body := sshAsk(t, ctx, sServer, expand(check, bot, server, "root")); code != http.StatusOK || !a.Reject || !strings.Contains(a.Message, "tagged") {
		t.Fatalf("tagged source: %d %s", code, body)
	}

	// A forgotten auth ID (say, the server restarted) is replaced by a new
	// check instead of leaving the client retrying a dead one.
	stale := first + "&auth_id=" + sshcheck.IDPrefix + strings.Repeat("0", 32)
	if code, a, body := sshAsk(t, ctx, sServer, stale); code != http.StatusOK || authID(t, a) == sshcheck.IDPrefix+strings.Repeat("0", 32) {
		t.Fatalf("stale auth ID: %d %s", code, body)
	}
}
