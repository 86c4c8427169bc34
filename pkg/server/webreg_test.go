package server_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/pkg/server"
	"tailscale.com/types/key"
)

// TestWebRegistrationExpiry: a web registration nobody completes expires;
// the client waiting on it is given a new URL at that moment, the old
// auth ID no longer registers anything and its page says so.
func TestWebRegistrationExpiry(t *testing.T) {
	const ttl = 500 * time.Millisecond
	ts := startServerWith(t, "", "", func(s *server.Server) { s.SetRegistrationTTL(ttl) })
	ts.CreateUser(t, "alice")
	c := ts.WebClient(t, key.MachinePrivate{}, "slowpoke")
	first := c.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, resp, err := c.Register(ctx, first, key.NodePublic{})
	if err != nil || resp.AuthURL == "" || resp.AuthURL == first || resp.MachineAuthorized {
		t.Fatalf("follow-up of an expiring registration: %v %+v", err, resp)
	}
	if waited := time.Since(start); waited > 10*time.Second {
		t.Errorf("the follow-up waited %v for a %v registration", waited, ttl)
	}
	old := servertest.AuthID(first)
	res, body, err := ts.API("POST", "/api/v1/auth/register", []byte(`{"authId": "`+old+`", "user": "alice"}`))
	if err != nil || res.StatusCode != http.StatusNotFound || !strings.Contains(string(body), "no pending registration") {
		t.Errorf("registering the expired ID: %v %v %s", err, res.StatusCode, body)
	}
	page, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Get(ts.URL + "/register/" + old)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(page.Body)
	page.Body.Close()
	if page.StatusCode != http.StatusNotFound || !strings.Contains(string(b), "expired") {
		t.Errorf("page of the expired ID: %d %s", page.StatusCode, b)
	}
	if got := len(ts.State().Nodes()); got != 0 {
		t.Errorf("%d nodes after an expired registration", got)
	}
}
