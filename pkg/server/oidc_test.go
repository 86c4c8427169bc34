package server_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/oidctest"
	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/server"
	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/types/key"
)

// oidcYAML configures OIDC against idp.
func oidcYAML(idp *oidctest.Provider, onlyIfAvailable bool) string {
	return fmt.Sprintf("oidc:\n  issuer: %s\n  client_id: hs\n  client_secret: oidcTestClientSecret0123\n  only_start_if_oidc_is_available: %v\n",
		idp.Issuer(), onlyIfAvailable)
}

// TestOIDCProviderDownAtStart: with only_start_if_oidc_is_available the
// server refuses to start while its provider cannot be reached, and says
// which key to change; without it the server starts (start-up does not
// wait for the provider), the login page says the provider cannot be
// reached, and logins go to the provider once it answers.
func TestOIDCProviderDownAtStart(t *testing.T) {
	idp := oidctest.New(t, oidctest.Options{
		Clients: []oidctest.Client{{ID: "hs", Secret: "oidcTestClientSecret0123", RedirectURIGlobs: []string{"http://127.0.0.1:*/oidc/callback"}}},
	})

	t.Run("only_start_if_oidc_is_available: true", func(t *testing.T) {
		opts := servertest.Options{ExtraYAML: oidcYAML(idp, true)}
		path := servertest.WriteConfig(t, &opts)
		cfg, _, err := config.Load(config.LoadOptions{Path: path})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		s, err := server.New(ctx, cfg, slog.New(slog.DiscardHandler), "test")
		if err == nil {
			s.Close()
			t.Fatal("the server started without its identity provider")
		}
		if !strings.Contains(err.Error(), "only_start_if_oidc_is_available") || !strings.Contains(err.Error(), "cannot be reached") {
			t.Errorf("error %q; want it to say the provider cannot be reached and name the key", err)
		}
	})

	t.Run("only_start_if_oidc_is_available: false", func(t *testing.T) {
		ts := servertest.Start(t, servertest.Options{ExtraYAML: oidcYAML(idp, false)})
		c := ts.WebClient(t, key.NewMachine(), "laptop")
		authURL := c.Start(t)
		page := ts.URL + "/register/" + servertest.AuthID(authURL)
		noRedirect := &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		get := func() (int, string, string) {
			resp, err := noRedirect.Get(page)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, resp.Header.Get("Location"), string(b)
		}
		if code, _, body := get(); code != http.StatusServiceUnavailable || !strings.Contains(body, "cannot be reached") {
			t.Errorf("login page with the provider down: %d %s", code, body)
		}
		tstest.WaitFor(t, 30*time.Second, "the log to say the provider cannot be reached", func() error {
			if !strings.Contains(ts.Logs(), "the identity provider cannot be reached") {
				return fmt.Errorf("not logged yet")
			}
			return nil
		})
		if err := idp.Serve(); err != nil {
			t.Fatal(err)
		}
		code, loc, body := get()
		if code != http.StatusFound || !strings.HasPrefix(loc, idp.Issuer()+"/") {
			t.Fatalf("login page with the provider back: %d to %q %s", code, loc, body)
		}
		for _, want := range []string{"nonce=", "state=", "client_id=hs"} {
			if !strings.Contains(loc, want) {
				t.Errorf("the redirect to the provider lacks %s: %s", want, loc)
			}
		}
	})
}

// oidcServer is a server whose server_url is its own listener, so the
// provider sends browsers back to it, logging in through idp.
func oidcServer(t *testing.T, idp *oidctest.Provider, extra string) *servertest.Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return servertest.Start(t, servertest.Options{ExtraYAML: "server_url: http://" + addr + "\nlisten_addr: " + addr + "\n" +
		oidcYAML(idp, true) + extra})
}

// oidcBrowserLogin follows link as user at a fresh browser (oidctest's
// CompleteLogin); it returns the server's last page.
func oidcBrowserLogin(t *testing.T, idp *oidctest.Provider, link, user, pw string) (int, string) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	code, page, err := idp.CompleteLogin(t.Context(), &http.Client{Jar: jar, Timeout: 10 * time.Second}, link, user, pw)
	if err != nil {
		t.Fatal(err)
	}
	return code, page
}

// TestOIDCUsersAndSSHChecks: a login creates the user from the provider's
// claims and registers the node for it; a login whose name is taken by a
// user made with the CLI is refused (nobody takes over a local user by
// choosing its name at the provider); the owner of an SSH check's source
// node approves it by logging in, and nobody else can.
func TestOIDCUsersAndSSHChecks(t *testing.T) {
	idp := oidctest.Start(t, oidctest.Options{
		Clients: []oidctest.Client{{ID: "hs", Secret: "oidcTestClientSecret0123", RedirectURIGlobs: []string{"http://127.0.0.1:*/oidc/callback"}}},
		Users: []oidctest.User{
			{Username: "alice", Password: "alice-pw", Email: "alice@example.com", EmailVerified: true, Name: "Alice A", Groups: []string{"eng"}},
			{Username: "bob", Password: "bob-pw", Email: "bob@example.com", EmailVerified: true},
			{Username: "carol", Password: "carol-pw", Email: "carol@example.com", EmailVerified: true},
		},
	})
	ts := oidcServer(t, idp, "")
	st := ts.State()
	ts.CreateUser(t, "carol") // a local user of the name carol has at the provider

	register := func(user, pw, host string) (int, string, *servertest.WebClient) {
		c := ts.WebClient(t, key.NewMachine(), host)
		link := c.Start(t)
		code, page := oidcBrowserLogin(t, idp, link, user, pw)
		return code, page, c
	}
	code, page, aliceClient := register("alice", "alice-pw", "alice-laptop")
	if code != http.StatusOK || !strings.Contains(page, "Device registered") {
		t.Fatalf("alice's login: %d %s", code, page)
	}
	n, ok := st.NodeByMachineKey(aliceClient.Machine.Public())
	if !ok {
		t.Fatal("alice's node is not registered")
	}
	u, ok := st.User(n.UserID)
	a, _ := idp.User("alice")
	if !ok || u.Name != "alice" || u.Email != "alice@example.com" || u.DisplayName != "Alice A" || u.Provider != "oidc" ||
		u.ProviderID != idp.Issuer()+"/"+a.Subject || strings.Join(u.Groups, ",") != "eng" || n.RegisterMethod != "oidc" {
		t.Errorf("alice's node %+v, user %+v", n, u)
	}

	if code, page, _ := register("carol", "carol-pw", "carol-laptop"); code != http.StatusForbidden || !strings.Contains(page, "already exists") {
		t.Errorf("carol's login over a local user: %d %s; want 403 saying the name exists", code, page)
	}
	for _, n := range st.Nodes() {
		if n.Hostname == "carol-laptop" {
			t.Errorf("a refused login registered %s", n.Hostname)
		}
	}

	ts.CreateUser(t, "servers")
	srvKey := ts.CreatePreAuthKey(t, userID(t, st, "servers"), false, time.Time{})
	server := ts.RegisterNode(t, srvKey, "server")
	dst, _ := st.NodeByMachineKey(server.Machine.Public())
	check, err := ts.SSHChecks().Begin(n.ID, dst.ID, "root")
	if err != nil {
		t.Fatal(err)
	}
	link := ts.URL + "/auth/" + check.ID
	if code, page := oidcBrowserLogin(t, idp, link, "bob", "bob-pw"); code != http.StatusForbidden || !strings.Contains(page, "only the owner of alice-laptop") {
		t.Errorf("bob approving alice's connection: %d %s", code, page)
	}
	if c, _ := ts.SSHChecks().Get(check.ID); c.Verdict != sshcheck.Pending {
		t.Fatalf("after bob's login the check is %v", c.Verdict)
	}
	if code, page := oidcBrowserLogin(t, idp, link, "alice", "alice-pw"); code != http.StatusOK || !strings.Contains(page, "alice-laptop to server as root") {
		t.Errorf("alice approving her connection: %d %s", code, page)
	}
	if c, _ := ts.SSHChecks().Get(check.ID); c.Verdict != sshcheck.Approved {
		t.Errorf("after alice's login the check is %v; want approved", c.Verdict)
	}
}

func userID(t *testing.T, st *state.State, name string) string {
	t.Helper()
	for _, u := range st.Users() {
		if u.Name == name {
			return fmt.Sprint(u.ID)
		}
	}
	t.Fatalf("no user %s", name)
	return ""
}
