//go:build linux

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/oidctest"
	"github.com/hsctl/headscale/internal/tstest"
)

// oidcSecret is the client secret the test provider and server share; the
// audit checks that it is in no log.
const oidcSecret = "oidcClientS3cretForTheE2eTests42"

// browserLogin is a person at a fresh browser following the AuthURL
// (oidctest's CompleteLogin); it returns the server's last answer.
func browserLogin(t *testing.T, idp *oidctest.Provider, authURL, user, pw string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	jar, _ := cookiejar.New(nil)
	code, page, err := idp.CompleteLogin(ctx, &http.Client{Jar: jar, Timeout: 30 * time.Second}, authURL, user, pw)
	if err != nil {
		t.Fatal(err)
	}
	return code, page
}

// TestOIDCLogin logs official clients in through a real OpenID provider
// (internal/oidctest) with PKCE: the AuthURL leads to the provider's form,
// the server asks to confirm the device, and the client is Running as the
// person's user. The allow lists turn away a wrong domain and a wrong
// group with a page that says why while the client stays logged out. A
// provider group named in the policy grants access, and losing it at the
// next login takes the access away. Two login tabs for one machine
// register it once. A short-lived ID token with use_expiry_from_token
// sends the node back to login, also across a tailscaled and a server
// restart.
func TestOIDCLogin(t *testing.T) {
	env := requireEnv(t)
	env.audit.addKey(t, "OIDC client secret", oidcSecret)
	idp := oidctest.Start(t, oidctest.Options{
		Clients: []oidctest.Client{{ID: "headscale", Secret: oidcSecret, RedirectURIGlobs: []string{"http://127.0.0.1:*/oidc/callback"}}},
		Users: []oidctest.User{
			{Username: "alice", Password: "alice-pw", Email: "alice@example.com", EmailVerified: true, Name: "Alice Example", Groups: []string{"eng"}},
			{Username: "mallory", Password: "mallory-pw", Email: "mallory@elsewhere.test", EmailVerified: true, Groups: []string{"eng"}},
			{Username: "dave", Password: "dave-pw", Email: "dave@example.com", EmailVerified: true, Groups: []string{"contractors"}},
			{Username: "erin", Password: "erin-pw", Email: "erin@example.com", EmailVerified: true, Groups: []string{"eng"}},
		},
	})
	policyPath := filepath.Join(t.TempDir(), "policy.hujson")
	if err := os.WriteFile(policyPath, []byte(`{
  // Only people the provider puts in eng reach anything.
  "acls": [{"action": "accept", "src": ["oidcgroup:eng"], "dst": ["*:*"]}],
}`), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := StartServer(t, ServerOptions{ExtraConfig: "policy:\n  mode: file\n  path: " + strconv.Quote(policyPath) + "\n" +
		"oidc:\n  issuer: " + idp.Issuer() + "\n  client_id: headscale\n  client_secret: " + oidcSecret + "\n" +
		"  use_expiry_from_token: true\n  allowed_domains: [example.com]\n  allowed_groups: [eng, sales]\n" +
		"  pkce:\n    enabled: true\n    method: S256\n"})

	srv.CreateUser(t, "servers")
	key := srv.CreatePreAuthKey(t, "servers", PreAuthKeyOptions{Reusable: true})
	target := StartNode(t, srv, "oidc-target", NodeOptions{})
	target.MustUp(key.Key)

	// loginAs runs `tailscale up` on n and logs in at the browser as
	// user; it returns the server's last page.
	loginAs := func(t *testing.T, n *Node, not, user, pw string, extra ...string) (*webUp, string, int, string) {
		t.Helper()
		up := startWebUp(n, extra...)
		u := authURL(t, n, not)
		if !strings.HasPrefix(u, srv.URL+"/register/") {
			t.Fatalf("AuthURL %q", u)
		}
		status, page := browserLogin(t, idp, u, user, pw)
		return up, u, status, page
	}

	n := StartNode(t, srv, "oidc-laptop", NodeOptions{})
	var firstURL string
	t.Run("alice logs in and her provider group grants access", func(t *testing.T) {
		up, u, status, page := loginAs(t, n, "", "alice", "alice-pw")
		firstURL = u
		if status != http.StatusOK || !strings.Contains(page, "Device registered") {
			t.Fatalf("after the login: %d %s", status, page)
		}
		up.wait(t)
		runningAs(t, n, "alice@example.com", 30*time.Second)
		if _, err := n.Ping(target.IPv4(), 30*time.Second); err != nil {
			t.Errorf("alice (oidcgroup:eng) cannot reach the target: %v", err)
		}
		var users []struct {
			Name           string   `json:"name"`
			Email          string   `json:"email"`
			Provider       string   `json:"provider"`
			ProviderID     string   `json:"provider_id"`
			ProviderGroups []string `json:"provider_groups"`
		}
		out, err := srv.CLI(t, "users", "list", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(out), &users); err != nil {
			t.Fatalf("users list: %v\n%s", err, out)
		}
		found := false
		for _, u := range users {
			if u.Name == "alice" {
				found = true
				a, _ := idp.User("alice")
				if u.Email != "alice@example.com" || u.Provider != "oidc" || u.ProviderID != idp.Issuer()+"/"+a.Subject || strings.Join(u.ProviderGroups, ",") != "eng" {
					t.Errorf("alice in users list: %+v", u)
				}
			}
		}
		if !found {
			t.Errorf("no user alice after her login:\n%s", out)
		}
	})

	for _, tc := range []struct{ name, user, pw, why string }{
		{"a domain not allowed", "mallory", "mallory-pw", "is not allowed on this server"},
		{"a group not allowed", "dave", "dave-pw", "none of the groups allowed"},
	} {
		t.Run(tc.name+" is refused and the client stays logged out", func(t *testing.T) {
			m := StartNode(t, srv, "oidc-"+tc.user, NodeOptions{})
			_, _, status, page := loginAs(t, m, "", tc.user, tc.pw)
			if status != http.StatusForbidden || !strings.Contains(page, tc.why) {
				t.Fatalf("%s's login: %d %s; want 403 saying %q", tc.user, status, page, tc.why)
			}
			if st, err := m.Status(); err != nil || st.BackendState != "NeedsLogin" {
				t.Errorf("after a refused login: %v %v; want NeedsLogin", st.BackendState, err)
			}
			if len(nodesNamed(srv.ListNodes(t), m.Name)) != 0 {
				t.Errorf("a refused login registered %s", m.Name)
			}
		})
	}

	t.Run("two login tabs for one machine", func(t *testing.T) {
		m := StartNode(t, srv, "oidc-tabs", NodeOptions{})
		up := startWebUp(m)
		u := authURL(t, m, "")
		ctx := t.Context()
		jar, _ := cookiejar.New(nil)
		b := &http.Client{Jar: jar, Timeout: 30 * time.Second}
		first, err := idp.Login(ctx, b, u, "erin", "erin-pw")
		if err != nil {
			t.Fatal(err)
		}
		second, err := idp.Login(ctx, b, u, "erin", "erin-pw")
		if err != nil {
			t.Fatal(err)
		}
		// The second tab finishes first.
		resp, err := oidctest.FollowRedirect(ctx, b, second)
		if err != nil {
			t.Fatal(err)
		}
		page, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		done, err := oidctest.SubmitForm(ctx, b, resp.Request.URL, page, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(done.Body)
		done.Body.Close()
		if done.StatusCode != http.StatusOK || !strings.Contains(string(out), "Device registered") {
			t.Fatalf("second tab: %d %s", done.StatusCode, out)
		}
		up.wait(t)
		runningAs(t, m, "erin@example.com", 30*time.Second)
		// The first tab then learns the registration is over.
		resp, err = oidctest.FollowRedirect(ctx, b, first)
		if err != nil {
			t.Fatal(err)
		}
		page, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(string(page), "registration is over") {
			t.Errorf("first tab after the second completed: %d %s", resp.StatusCode, page)
		}
		if len(nodesNamed(srv.ListNodes(t), m.Name)) != 1 {
			t.Errorf("two tabs registered %d nodes", len(nodesNamed(srv.ListNodes(t), m.Name)))
		}
	})

	t.Run("losing the group at the next login takes access away", func(t *testing.T) {
		if err := idp.SetGroups("alice", "sales"); err != nil {
			t.Fatal(err)
		}
		before := srv.ListNodes(t)
		up, _, status, page := loginAs(t, n, firstURL, "alice", "alice-pw", "--force-reauth")
		if status != http.StatusOK || !strings.Contains(page, "Device registered") {
			t.Fatalf("re-login: %d %s", status, page)
		}
		up.wait(t)
		runningAs(t, n, "alice@example.com", 30*time.Second)
		if after := srv.ListNodes(t); len(nodesNamed(after, n.Name)) != 1 || len(after) != len(before) {
			t.Errorf("the re-login made a new node: %d nodes, were %d", len(after), len(before))
		}
		tstest.WaitFor(t, 30*time.Second, "alice without eng to lose access", func() error {
			if _, err := n.Ping(target.IPv4(), 3*time.Second); err == nil {
				return fmt.Errorf("alice still reaches the target")
			}
			return nil
		})
	})

	t.Run("a short-lived token expires the node, also across restarts", func(t *testing.T) {
		idp.SetTokenLifetimes(20*time.Second, 20*time.Second)
		defer idp.SetTokenLifetimes(time.Hour, time.Hour)
		e := StartNode(t, srv, "oidc-erin", NodeOptions{})
		up, _, status, page := loginAs(t, e, "", "erin", "erin-pw")
		if status != http.StatusOK || !strings.Contains(page, "Device registered") {
			t.Fatalf("erin's login: %d %s", status, page)
		}
		up.wait(t)
		runningAs(t, e, "erin@example.com", 30*time.Second)
		info, err := srv.findNode(t, e.Name)
		if err != nil {
			t.Fatal(err)
		}
		if info.Expiry.IsZero() || time.Until(info.Expiry.Time) > 30*time.Second {
			t.Fatalf("node expiry %v; want the token's, about 20 s away", info.Expiry)
		}
		needsLogin := func(what string) {
			tstest.WaitFor(t, time.Minute, what, func() error {
				st, err := e.Status()
				if err != nil {
					return err
				}
				if st.BackendState != "NeedsLogin" {
					return fmt.Errorf("backend state %s", st.BackendState)
				}
				return nil
			})
		}
		needsLogin("erin's node to need login once the token expired")
		e.Restart()
		srv.Restart()
		needsLogin("erin's restarted tailscaled to still need login after a server restart too")
	})
}
