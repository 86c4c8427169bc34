package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/oidctest"
	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// getPage fetches path from ts without keep-alive and returns the status
// and body.
func getPage(t *testing.T, ts *servertest.Server, path string) (int, string) {
	t.Helper()
	res, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}).Get(ts.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// waitUser waits until ts knows user name (created on another server).
func waitUser(t *testing.T, ts *servertest.Server, name string) {
	t.Helper()
	tstest.WaitFor(t, 30*time.Second, "user "+name+" known to "+ts.URL, func() error {
		for _, u := range ts.State().Users() {
			if u.Name == name {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
}

// followUp sends c's follow-up request for authURL in the background; the
// channel receives its outcome.
type followUpResult struct {
	resp *tailcfg.RegisterResponse
	err  error
}

func followUp(ctx context.Context, c *servertest.WebClient, authURL string) <-chan followUpResult {
	ch := make(chan followUpResult, 1)
	go func() {
		_, resp, err := c.Register(ctx, authURL, key.NodePublic{})
		ch <- followUpResult{resp, err}
	}()
	return ch
}

// TestClusterWebRegistration: with two servers serving one tailnet, each
// step of a web registration may reach either: a registration begun on a
// is shown by b's register page, approved through b's API, and the client
// waiting on a is answered with its node; a client whose follow-up reaches
// b waits there for an approval made on a; a rejection on b reaches the
// client waiting on a; and an auth ID is single use across the servers.
func TestClusterWebRegistration(t *testing.T) {
	db := pg.Database(t)
	srvs := startServers(t, db, "a", "b")
	a, b := srvs[0], srvs[1]
	a.CreateUser(t, "alice")
	waitUser(t, b, "alice")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	secret := func(authURL string) string {
		id := servertest.AuthID(authURL)
		a.NoteSecret(id)
		b.NoteSecret(id)
		return id
	}

	t.Run("begun on a, approved on b", func(t *testing.T) {
		c := a.WebClient(t, key.MachinePrivate{}, "laptop")
		authURL := c.Start(t)
		id := secret(authURL)
		// b's register page shows it.
		if code, body := getPage(t, b, "/register/"+id); code != http.StatusOK || !strings.Contains(body, "laptop") || !strings.Contains(body, id) {
			t.Fatalf("b's register page of a's registration: %d %s", code, body)
		}
		done := followUp(ctx, c, authURL)
		start := time.Now()
		res, body, err := b.API("POST", "/api/v1/auth/register", []byte(`{"authId": "`+id+`", "user": "alice"}`))
		if err != nil || res.StatusCode != http.StatusOK || !strings.Contains(string(body), `"laptop"`) {
			t.Fatalf("auth register on b: %v %v %s", err, res.StatusCode, body)
		}
		var r followUpResult
		select {
		case r = <-done:
		case <-ctx.Done():
			t.Fatal("the follow-up on a was not answered after the approval on b")
		}
		if r.err != nil || !r.resp.MachineAuthorized || r.resp.User.DisplayName == "" && r.resp.Login.LoginName == "" {
			t.Fatalf("follow-up on a after the approval on b: %v %+v", r.err, r.resp)
		}
		t.Logf("approval on b answered the client on a in %v", time.Since(start))
		if n, ok := a.State().NodeByNodeKey(c.Key.Public()); !ok || n.Hostname != "laptop" {
			t.Errorf("a holds no node laptop: %v %+v", ok, n)
		}
		// Single use, on either server.
		for _, s := range srvs {
			res, body, err := s.API("POST", "/api/v1/auth/register", []byte(`{"authId": "`+id+`", "user": "alice"}`))
			if err != nil || res.StatusCode != http.StatusConflict {
				t.Errorf("registering the used ID again: %v %v %s", err, res.StatusCode, body)
			}
		}
		if code, body := getPage(t, b, "/register/"+id); code != http.StatusNotFound || !strings.Contains(body, "already completed") {
			t.Errorf("b's page of the completed registration: %d %s", code, body)
		}
	})

	t.Run("follow-up on b, approved on a", func(t *testing.T) {
		c := a.WebClient(t, key.MachinePrivate{}, "desktop")
		authURL := c.Start(t)
		id := secret(authURL)
		// The follow-up comes through b (the balancer moved the client).
		cb := b.WebClient(t, c.Machine, "desktop")
		cb.Key = c.Key
		done := followUp(ctx, cb, authURL)
		// The approval may come before b reads the registration or while
		// b waits on it: either must answer the client with its node.
		res, body, err := a.API("POST", "/api/v1/node/register?user=alice&key="+id, nil)
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("nodes register on a: %v %v %s", err, res.StatusCode, body)
		}
		var r followUpResult
		select {
		case r = <-done:
		case <-ctx.Done():
			t.Fatal("the follow-up on b was not answered after the approval on a")
		}
		if r.err != nil || !r.resp.MachineAuthorized {
			t.Fatalf("follow-up on b after the approval on a: %v %+v", r.err, r.resp)
		}
	})

	t.Run("rejected on b", func(t *testing.T) {
		c := a.WebClient(t, key.MachinePrivate{}, "intruder")
		authURL := c.Start(t)
		id := secret(authURL)
		done := followUp(ctx, c, authURL)
		res, body, err := b.API("POST", "/api/v1/auth/reject", []byte(`{"authId": "`+id+`"}`))
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("auth reject on b: %v %v %s", err, res.StatusCode, body)
		}
		var r followUpResult
		select {
		case r = <-done:
		case <-ctx.Done():
			t.Fatal("the follow-up on a was not answered after the rejection on b")
		}
		if r.err != nil || r.resp.MachineAuthorized || !strings.Contains(r.resp.Error, "rejected") {
			t.Fatalf("follow-up on a after the rejection on b: %v %+v", r.err, r.resp)
		}
		if _, ok := a.State().NodeByNodeKey(c.Key.Public()); ok {
			t.Error("a rejected registration made a node")
		}
	})

	t.Run("unknown ID", func(t *testing.T) {
		id := "hskey-authreq-0123456789abcdef01234567"
		if code, _ := getPage(t, b, "/register/"+id); code != http.StatusNotFound {
			t.Errorf("page of an unknown ID: %d", code)
		}
		res, body, _ := b.API("POST", "/api/v1/auth/register", []byte(`{"authId": "`+id+`", "user": "alice"}`))
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("registering an unknown ID: %v %s", res.StatusCode, body)
		}
	})
}

// TestClusterSSHCheck: with two servers serving one tailnet, an SSH check
// the destination holds on a is approved through b's API and the
// destination's follow-up on a is accepted; the approval is remembered on
// both servers for the pair's check period, and known to a server started
// after it; and a check opened on b whose
// follow-up reaches a is rejected on b and refused on a.
func TestClusterSSHCheck(t *testing.T) {
	db := pg.Database(t)
	shared := t.TempDir()
	pol := filepath.Join(shared, "policy.hujson")
	os.WriteFile(pol, []byte(`{
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "ssh": [{"action": "check", "src": ["alice@"], "dst": ["alice@"], "users": ["root", "alice"]}],
}`), 0o600)
	var srvs []*servertest.Server
	for _, n := range []string{"a", "b"} {
		srvs = append(srvs, servertest.Start(t, servertest.Options{Postgres: &db, Several: true,
			ExtraYAML: clusterYAML(t, shared, n) + "policy:\n  mode: file\n  path: " + pol + "\n"}))
	}
	a, b := srvs[0], srvs[1]
	user := a.CreateUser(t, "alice")
	k := a.CreatePreAuthKey(t, user, true, time.Now().Add(time.Hour))
	laptop, server := a.RegisterNode(t, k, "laptop"), a.RegisterNode(t, k, "server")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// session opens a map session of n on ts (a client of n's machine
	// key) and returns it with the check URL of its SSH policy and its
	// own node ID.
	session := func(ts *servertest.Server, n *servertest.Node, host string) (*tsp.MapSession, string, tailcfg.NodeID) {
		t.Helper()
		c := n.Client
		if ts != a {
			tstest.WaitFor(t, 30*time.Second, host+" known to "+ts.URL, func() error {
				if _, ok := ts.State().NodeByNodeKey(n.Key.Public()); !ok {
					return fmt.Errorf("not yet")
				}
				return nil
			})
			var err error
			if c, err = tsp.NewClient(tsp.ClientOpts{ServerURL: ts.URL, MachineKey: n.Machine}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
		}
		sess, full := openMap(t, ctx, c, n.Key, host)
		if full.SSHPolicy != nil {
			for _, r := range full.SSHPolicy.Rules {
				if r.Action != nil && r.Action.HoldAndDelegate != "" {
					return sess, r.Action.HoldAndDelegate, full.Node.ID
				}
			}
		}
		t.Fatalf("%s's SSH policy on %s has no check rule: %+v", host, ts.URL, full.SSHPolicy)
		return nil, "", 0
	}
	type answer struct {
		code   int
		action *tailcfg.SSHAction
		body   string
	}
	ask := func(sess *tsp.MapSession, u string) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			code, act, body := sshAsk(t, ctx, sess, u)
			ch <- answer{code, act, body}
		}()
		return ch
	}
	wait := func(ch <-chan answer, what string) answer {
		t.Helper()
		select {
		case got := <-ch:
			return got
		case <-ctx.Done():
			t.Fatalf("%s: no answer", what)
		}
		return answer{}
	}
	decide := func(ts *servertest.Server, verb, id string) {
		t.Helper()
		res, body, err := ts.API("POST", "/api/v1/auth/"+verb, []byte(`{"authId": "`+id+`"}`))
		if err != nil || res.StatusCode != http.StatusOK {
			t.Fatalf("auth %s on %s: %v %v %s", verb, ts.URL, err, res.StatusCode, body)
		}
	}

	sessServerA, check, serverID := session(a, server, "server")
	_, _, laptopID := session(a, laptop, "laptop")
	first := expand(check, laptopID, serverID, "root")
	got := wait(ask(sessServerA, first), "first request")
	if got.code != http.StatusOK {
		t.Fatalf("first request on a: %d %s", got.code, got.body)
	}
	id := authID(t, got.action)
	a.NoteSecret(id)
	b.NoteSecret(id)
	held := ask(sessServerA, expand(got.action.HoldAndDelegate, laptopID, serverID, "root"))
	decide(b, "approve", id)
	if got := wait(held, "follow-up on a after the approval on b"); got.code != http.StatusOK || !got.action.Accept {
		t.Fatalf("follow-up on a after the approval on b: %d %s", got.code, got.body)
	}
	// Deciding again, on either server, conflicts.
	for _, ts := range srvs {
		if res, body, _ := ts.API("POST", "/api/v1/auth/reject", []byte(`{"authId": "`+id+`"}`)); res.StatusCode != http.StatusConflict {
			t.Errorf("rejecting the approved check on %s: %d %s", ts.URL, res.StatusCode, body)
		}
	}
	// The pair is approved for its check period on both servers, and on
	// a server started after the approval.
	late := servertest.Start(t, servertest.Options{Postgres: &db, Several: true,
		ExtraYAML: clusterYAML(t, shared, "late") + "policy:\n  mode: file\n  path: " + pol + "\n"})
	sessServerB, _, _ := session(b, server, "server")
	sessServerLate, _, _ := session(late, server, "server")
	for name, sess := range map[string]*tsp.MapSession{"a": sessServerA, "b": sessServerB, "late": sessServerLate} {
		if got := wait(ask(sess, first), "second connection"); got.code != http.StatusOK || !got.action.Accept || got.action.HoldAndDelegate != "" {
			t.Errorf("second connection within the check period on %s: %d %s", name, got.code, got.body)
		}
	}

	// The reverse pair (laptop is the destination): held on b, the
	// follow-up reaches a, rejected on b.
	sessLaptopB, checkLaptop, _ := session(b, laptop, "laptop")
	sessLaptopA, _, _ := session(a, laptop, "laptop")
	got = wait(ask(sessLaptopB, expand(checkLaptop, serverID, laptopID, "root")), "reverse first request")
	if got.code != http.StatusOK {
		t.Fatalf("reverse first request on b: %d %s", got.code, got.body)
	}
	id = authID(t, got.action)
	a.NoteSecret(id)
	b.NoteSecret(id)
	held = ask(sessLaptopA, expand(got.action.HoldAndDelegate, serverID, laptopID, "root"))
	decide(b, "reject", id)
	if got := wait(held, "follow-up on a after the rejection on b"); got.code != http.StatusOK || !got.action.Reject || got.action.Accept {
		t.Fatalf("follow-up on a after the rejection on b: %d %s", got.code, got.body)
	}
}

// TestClusterOIDCLogin: with two servers behind a round-robin balancer,
// an OIDC login's steps reach alternate servers (the register page and
// the redirect to the provider, the provider's callback, the
// confirmation), and the client, waiting on the first server, is
// registered.
func TestClusterOIDCLogin(t *testing.T) {
	idp := oidctest.Start(t, oidctest.Options{
		Clients: []oidctest.Client{{ID: "hs", Secret: "oidcTestClientSecret0123", RedirectURIGlobs: []string{"http://127.0.0.1:*/oidc/callback"}}},
		Users:   []oidctest.User{{Username: "alice", Password: "alice-pw", Email: "alice@example.com", EmailVerified: true}},
	})
	db := pg.Database(t)
	shared := t.TempDir()
	// The balancer's address is known before the servers start: it
	// finds them through srvs once they do.
	srvs := make([]*servertest.Server, 2)
	var n atomic.Int64
	proxy := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		u, _ := url.Parse(srvs[int(n.Add(1)-1)%len(srvs)].URL)
		r.SetURL(u)
	}})
	t.Cleanup(proxy.Close)
	for i, name := range []string{"a", "b"} {
		srvs[i] = servertest.Start(t, servertest.Options{Postgres: &db, Several: true,
			ExtraYAML: clusterYAML(t, shared, name) + "server_url: " + proxy.URL + "\n" + oidcYAML(idp, true)})
	}
	a := srvs[0]
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	c := a.WebClient(t, key.MachinePrivate{}, "alice-laptop")
	link := c.Start(t)
	id := servertest.AuthID(link)
	for _, s := range srvs {
		s.NoteSecret(id)
	}
	done := followUp(ctx, c, link)
	before := n.Load()
	code, page := oidcBrowserLogin(t, idp, link, "alice", "alice-pw")
	if code != http.StatusOK || !strings.Contains(page, "Device registered") {
		t.Fatalf("alice's login through the balancer: %d %s", code, page)
	}
	if steps := n.Load() - before; steps < 3 {
		t.Errorf("the login took %d requests through the balancer; want at least 3 (page, callback, confirmation)", steps)
	}
	var r followUpResult
	select {
	case r = <-done:
	case <-ctx.Done():
		t.Fatal("the follow-up on a was not answered after the login")
	}
	if r.err != nil || !r.resp.MachineAuthorized {
		t.Fatalf("follow-up on a after the login: %v %+v", r.err, r.resp)
	}
	for _, s := range srvs {
		tstest.WaitFor(t, 30*time.Second, "alice-laptop known to "+s.URL, func() error {
			n, ok := s.State().NodeByMachineKey(c.Machine.Public())
			if !ok || n.RegisterMethod != "oidc" {
				return fmt.Errorf("node %+v, %v", n, ok)
			}
			return nil
		})
	}
}
