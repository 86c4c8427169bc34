//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/oidctest"
	"github.com/hsctl/headscale/internal/tstest"
)

// loginURLRE finds the identity-provider login a held SSH connection shows
// its user when OIDC is configured.
var loginURLRE = regexp.MustCompile(`log in at (\S+/auth/\S+)`)

// TestSSHCheckOIDC: an SSH "check" rule approved through the identity
// provider with official clients and a real ssh client: the held
// connection shows a login URL; another person logging in there is turned
// away and the connection stays held; the source node's owner logging in
// lets it through.
func TestSSHCheckOIDC(t *testing.T) {
	env := requireEnv(t)
	if _, err := exec.LookPath("ssh"); err != nil {
		t.Skip("no ssh client on this machine")
	}
	env.audit.addKey(t, "OIDC client secret", oidcSecret)
	idp := oidctest.Start(t, oidctest.Options{
		Clients: []oidctest.Client{{ID: "headscale", Secret: oidcSecret, RedirectURIGlobs: []string{"http://127.0.0.1:*/oidc/callback"}}},
		Users: []oidctest.User{
			{Username: "alice", Password: "alice-pw", Email: "alice@example.com", EmailVerified: true},
			{Username: "bob", Password: "bob-pw", Email: "bob@example.com", EmailVerified: true},
		},
	})
	policyPath := filepath.Join(t.TempDir(), "policy.hujson")
	if err := os.WriteFile(policyPath, []byte(`{
  "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
  "ssh": [{"action": "check", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["root"]}],
}`), 0o644); err != nil {
		t.Fatal(err)
	}
	srv := StartServer(t, ServerOptions{ExtraConfig: "policy:\n  mode: file\n  path: " + strconv.Quote(policyPath) + "\n" +
		"oidc:\n  issuer: " + idp.Issuer() + "\n  client_id: headscale\n  client_secret: " + oidcSecret + "\n"})

	// Both of alice's machines log in through the provider.
	client := StartNode(t, srv, "alice-laptop", NodeOptions{})
	host := StartNode(t, srv, "alice-box", NodeOptions{})
	for _, n := range []*Node{client, host} {
		var extra []string
		if n == host {
			extra = []string{"--ssh"}
		}
		up := startWebUp(n, extra...)
		if code, page := browserLogin(t, idp, authURL(t, n, ""), "alice", "alice-pw"); code != http.StatusOK {
			t.Fatalf("%s: login: %d %s", n.Name, code, page)
		}
		up.wait(t)
		runningAs(t, n, "alice@example.com", 30*time.Second)
	}
	client.WaitForPeer(host, peerTimeout)
	host.WaitForPeer(client, peerTimeout)

	a := startSSH(t, client, host, "approved-by-owner")
	a.waitAuthID(t)
	// The login URL is on the line after the auth ID's: read on.
	var loginURL string
	tstest.WaitFor(t, 30*time.Second, "the held connection to show a login URL under "+srv.URL, func() error {
		m := loginURLRE.FindStringSubmatch(a.errText())
		if m == nil || !strings.HasPrefix(m[1], srv.URL+"/auth/") {
			return fmt.Errorf("ssh shows:\n%s", a.errText())
		}
		loginURL = m[1]
		return nil
	})

	// Bob is not the owner of alice-laptop.
	if code, page := browserLogin(t, idp, loginURL, "bob", "bob-pw"); code != http.StatusForbidden || !strings.Contains(page, "only the owner of alice-laptop") {
		t.Fatalf("bob at alice's check: %d %s", code, page)
	}
	select {
	case err := <-a.done:
		t.Fatalf("the connection ended after bob's login: %v\n%s", err, a.errText())
	default:
	}

	// Alice is. (Had bob's login approved the check, it would be used up
	// and her login would not succeed.)
	if code, page := browserLogin(t, idp, loginURL, "alice", "alice-pw"); code != http.StatusOK {
		t.Fatalf("alice at her check: %d %s", code, page)
	}
	if err := a.wait(t); err != nil || !strings.Contains(a.stdout.String(), "approved-by-owner") {
		t.Fatalf("connection after the owner's login: %v %q\n%s", err, a.stdout.String(), a.errText())
	}
	if err := srv.logContains("SSH check approved by the source node's owner through the identity provider"); err != nil {
		t.Error(err)
	}
}
