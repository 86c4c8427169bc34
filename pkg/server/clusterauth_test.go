package server_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
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
