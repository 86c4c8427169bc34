package control_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/control"
	"github.com/hsctl/headscale/pkg/pendingreg"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

func TestAuthURL(t *testing.T) {
	id := pendingreg.NewID()
	for _, tc := range []struct{ serverURL, want string }{
		{"https://hs.example.com", "https://hs.example.com/register/" + id},
		{"https://hs.example.com/", "https://hs.example.com/register/" + id},
		{"https://example.com/headscale", "https://example.com/headscale/register/" + id},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080/register/" + id},
	} {
		if got := control.AuthURL(tc.serverURL, id); got != tc.want {
			t.Errorf("AuthURL(%q) = %q, want %q", tc.serverURL, got, tc.want)
		}
	}
}

// noKeepAlive fetches pages without leaving connections (and their
// goroutines) behind.
var noKeepAlive = &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

// apiNode calls the API and returns the node of its {"node": ...} answer,
// failing t unless the status is want (then the node is zero).
func apiNode(t *testing.T, ts *servertest.Server, method, path, body string, want int) api.Node {
	t.Helper()
	resp, out, err := ts.API(method, path, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %d %s (want %d)", method, path, resp.StatusCode, out, want)
	}
	var v struct {
		Node api.Node `json:"node"`
	}
	if want == http.StatusOK {
		if err := json.Unmarshal(out, &v); err != nil {
			t.Fatalf("%s %s: %v %s", method, path, err, out)
		}
	}
	return v.Node
}

// followup is a follow-up request started in the background.
type followup struct {
	done chan struct{}
	at   time.Time
	resp *tailcfg.RegisterResponse
	err  error
}

func startFollowup(c *servertest.WebClient, authURL string) *followup {
	f := &followup{done: make(chan struct{})}
	go func() {
		defer close(f.done)
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_, f.resp, f.err = c.Register(ctx, authURL, key.NodePublic{})
		f.at = time.Now()
	}()
	return f
}

// wait returns the follow-up's answer, failing t unless it came within
// a second of since.
func (f *followup) wait(t *testing.T, since time.Time) *tailcfg.RegisterResponse {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(30 * time.Second):
		t.Fatal("follow-up still waiting 30 s after the decision")
	}
	if f.err != nil {
		t.Fatalf("follow-up: %v", f.err)
	}
	if d := f.at.Sub(since); d > time.Second {
		t.Errorf("follow-up answered %v after the decision (want within 1 s)", d)
	}
	return f.resp
}

// TestWebRegistration drives web registration over real Noise
// connections: the AuthURL and its page, the follow-up waiting for each
// way of completing or refusing it, renewal of dead URLs, re-login and
// --force-reauth, and advertised tags under tagOwners.
func TestWebRegistration(t *testing.T) {
	ts := servertest.Start(t, servertest.Options{ExtraYAML: "policy:\n  mode: database\n"})
	ts.CreateUser(t, "alice")
	ts.CreateUser(t, "bob")
	ts.MustAPI(t, "PUT", "/api/v1/policy", `{"policy": "{\"tagOwners\": {\"tag:web\": [\"alice@\"]}, \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}"}`)
	ctx := context.Background()
	const serverURL = "http://127.0.0.1:8080" // servertest's server_url

	t.Run("AuthURL, page, nodes register", func(t *testing.T) {
		c := ts.WebClient(t, key.MachinePrivate{}, "laptop")
		authURL := c.Start(t)
		id := servertest.AuthID(authURL)
		// Under server_url, not the address the client dialled (behind a
		// reverse proxy they differ).
		if authURL != serverURL+"/register/"+id || !pendingreg.ValidID(id) {
			t.Fatalf("AuthURL %q", authURL)
		}
		pageURL := ts.URL + "/register/" + id
		res, err := noKeepAlive.Get(pageURL)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(string(page), "headscale nodes register --user USERNAME --key "+id) || !strings.Contains(string(page), "laptop") {
			t.Fatalf("page: %d %s", res.StatusCode, page)
		}
		f := startFollowup(c, authURL)
		n := apiNode(t, ts, "POST", "/api/v1/node/register?"+url.Values{"user": {"alice"}, "key": {id}}.Encode(), "", 200)
		resp := f.wait(t, time.Now())
		if !resp.MachineAuthorized || resp.Login.LoginName != "alice" || resp.AuthURL != "" || resp.Error != "" {
			t.Errorf("follow-up answer: %+v", resp)
		}
		if n.User == nil || n.User.Name != "alice" || n.RegisterMethod != "REGISTER_METHOD_CLI" || n.GivenName != "laptop" {
			t.Errorf("registered node: %+v", n)
		}
		// Single use.
		apiNode(t, ts, "POST", "/api/v1/auth/register", `{"authId": "`+id+`", "user": "bob"}`, http.StatusConflict)
		res, err = noKeepAlive.Get(pageURL)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 404 {
			t.Errorf("page of a completed registration: %d", res.StatusCode)
		}
		// A restarted client asking with its registered key is authorized,
		// also with the follow-up URL it had (its ID long forgotten).
		for _, fu := range []string{"", authURL, serverURL + "/register/" + pendingreg.NewID()} {
			if _, resp, err := c.Register(ctx, fu, key.NodePublic{}); err != nil || !resp.MachineAuthorized || resp.AuthURL != "" {
				t.Errorf("status check with follow-up %q: %v %+v", fu, err, resp)
			}
		}
	})

	t.Run("auth register, with the follow-up arriving late", func(t *testing.T) {
		c := ts.WebClient(t, key.MachinePrivate{}, "desk")
		authURL := c.Start(t)
		apiNode(t, ts, "POST", "/api/v1/auth/register", `{"authId": "`+servertest.AuthID(authURL)+`", "user": "bob"}`, 200)
		resp := startFollowup(c, authURL).wait(t, time.Now())
		if !resp.MachineAuthorized || resp.Login.LoginName != "bob" {
			t.Errorf("follow-up answer: %+v", resp)
		}
	})

	t.Run("reject, and approve needs a user", func(t *testing.T) {
		c := ts.WebClient(t, key.MachinePrivate{}, "stranger")
		authURL := c.Start(t)
		id := servertest.AuthID(authURL)
		_, out, _ := ts.API("POST", "/api/v1/auth/approve", []byte(`{"authId": "`+id+`"}`))
		if !strings.Contains(string(out), "auth register --auth-id") {
			t.Errorf("auth approve of a registration: %s", out)
		}
		apiNode(t, ts, "POST", "/api/v1/auth/register", `{"authId": "`+id+`", "user": "nobody"}`, http.StatusNotFound)
		f := startFollowup(c, authURL)
		ts.MustAPI(t, "POST", "/api/v1/auth/reject", `{"authId": "`+id+`"}`)
		resp := f.wait(t, time.Now())
		if resp.MachineAuthorized || !strings.Contains(resp.Error, "rejected") {
			t.Errorf("follow-up answer: %+v", resp)
		}
		apiNode(t, ts, "POST", "/api/v1/auth/register", `{"authId": "`+id+`", "user": "alice"}`, http.StatusConflict)
	})

	t.Run("dead and foreign URLs are renewed", func(t *testing.T) {
		c := ts.WebClient(t, key.MachinePrivate{}, "renew")
		for _, dead := range []string{
			ts.URL + "/register/" + pendingreg.NewID(), // expired, or forgotten by a restart
			ts.URL + "/register/nope",
			"https://elsewhere.example/x",
		} {
			_, resp, err := c.Register(ctx, dead, key.NodePublic{})
			if err != nil || resp.AuthURL == "" || resp.AuthURL == dead || !strings.HasPrefix(resp.AuthURL, serverURL+"/register/") {
				t.Errorf("follow-up of %s: %v %+v", dead, err, resp)
			}
		}
		// Another machine cannot wait on (or learn the outcome of) c's
		// registration.
		mine := c.Start(t)
		other := ts.WebClient(t, key.MachinePrivate{}, "other")
		_, resp, err := other.Register(ctx, mine, key.NodePublic{})
		if err != nil || resp.AuthURL == "" || resp.AuthURL == mine {
			t.Errorf("follow-up of another machine's URL: %v %+v", err, resp)
		}
		// Bad input: 4xx with a reason.
		apiNode(t, ts, "POST", "/api/v1/node/register?user=alice&key=nope", "", http.StatusNotFound)
		apiNode(t, ts, "POST", "/api/v1/node/register?user=alice", "", http.StatusBadRequest)
		apiNode(t, ts, "POST", "/api/v1/auth/register", `{"authId": "`+servertest.AuthID(mine)+`"}`, http.StatusBadRequest)
		apiNode(t, ts, "POST", "/api/v1/auth/reject", `{"authId": "`+pendingreg.NewID()+`"}`, http.StatusNotFound)
	})

	t.Run("re-login keeps the node, another user gets a new one", func(t *testing.T) {
		c := ts.WebClient(t, key.MachinePrivate{}, "phone")
		first := apiNode(t, ts, "POST", "/api/v1/auth/register", `{"authId": "`+servertest.AuthID(c.Start(t))+`", "user": "alice"}`, 200)
		ts.MustAPI(t, "POST", "/api/v1/node/"+first.ID+"/approve_routes", `{"routes": []}`)
		// --force-reauth of a live node: a new node key, the old one
		// named, and no auth key: the server asks for a login.
		old := c.Key.Public()
		c.Key = key.NewNode()
		_, resp, err := c.Register(ctx, "", old)
		if err != nil || resp.AuthURL == "" || resp.MachineAuthorized {
			t.Fatalf("force-reauth: %v %+v", err, resp)
		}
		again := apiNode(t, ts, "POST", "/api/v1/node/register?user=alice&key="+servertest.AuthID(resp.AuthURL), "", 200)
		if again.ID != first.ID || strings.Join(again.IPAddresses, ",") != strings.Join(first.IPAddresses, ",") || again.NodeKey == first.NodeKey {
			t.Errorf("same-user re-login: %+v, was %+v", again, first)
		}
		// Expired, then logged in again as alice: same node.
		ts.MustAPI(t, "POST", "/api/v1/node/"+first.ID+"/expire", "")
		c.Key = key.NewNode()
		_, resp, _ = c.Register(ctx, "", key.NodePublic{})
		again = apiNode(t, ts, "POST", "/api/v1/node/register?user=alice&key="+servertest.AuthID(resp.AuthURL), "", 200)
		if again.ID != first.ID || strings.Join(again.IPAddresses, ",") != strings.Join(first.IPAddresses, ",") {
			t.Errorf("re-login after expiry: %+v, was %+v", again, first)
		}
		// As bob: a new node; alice's stays as it was (as in Headscale).
		c.Key = key.NewNode()
		_, resp, _ = c.Register(ctx, "", key.NodePublic{})
		f := startFollowup(c, resp.AuthURL)
		bobs := apiNode(t, ts, "POST", "/api/v1/auth/register", `{"authId": "`+servertest.AuthID(resp.AuthURL)+`", "user": "bob"}`, 200)
		if r := f.wait(t, time.Now()); r.Login.LoginName != "bob" {
			t.Errorf("follow-up as bob: %+v", r)
		}
		if bobs.ID == first.ID || bobs.User.Name != "bob" || bobs.MachineKey != again.MachineKey || bobs.NodeKey == again.NodeKey ||
			strings.Join(bobs.IPAddresses, ",") == strings.Join(first.IPAddresses, ",") {
			t.Errorf("another user's re-login: %+v, alice's %+v", bobs, again)
		}
		kept := apiNode(t, ts, "GET", "/api/v1/node/"+first.ID, "", http.StatusOK)
		if kept.User == nil || kept.User.Name != "alice" || kept.NodeKey != again.NodeKey || strings.Join(kept.IPAddresses, ",") != strings.Join(first.IPAddresses, ",") {
			t.Errorf("alice's node after the machine logged in as bob: %+v, was %+v", kept, again)
		}
	})

	t.Run("advertised tags under tagOwners", func(t *testing.T) {
		c := ts.WebClient(t, key.MachinePrivate{}, "web1", "tag:web")
		authURL := c.Start(t)
		id := servertest.AuthID(authURL)
		// bob does not own tag:web: refused, and the registration waits on.
		apiNode(t, ts, "POST", "/api/v1/auth/register", `{"authId": "`+id+`", "user": "bob"}`, http.StatusBadRequest)
		f := startFollowup(c, authURL)
		n := apiNode(t, ts, "POST", "/api/v1/auth/register", `{"authId": "`+id+`", "user": "alice"}`, 200)
		resp := f.wait(t, time.Now())
		if strings.Join(n.Tags, ",") != "tag:web" || n.User == nil || n.User.Name == "alice" || !resp.MachineAuthorized {
			t.Errorf("tagged registration: node %+v, answer %+v", n, resp)
		}
	})
}
