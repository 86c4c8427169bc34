package oidclogin

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/oidctest"
)

// registrations is the test's side of pending registrations: what the
// pages may complete, and what they completed.
type registrations struct {
	mu       sync.Mutex
	pending  map[string]Device
	approved map[string]Identity
	refuse   error // Approve's answer when set
}

func (r *registrations) Device(id string) (Device, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.pending[id]
	return d, ok
}

func (r *registrations) Approve(_ context.Context, id string, who Identity) (string, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse != nil {
		return "", false, r.refuse
	}
	if _, ok := r.pending[id]; !ok {
		return "", false, errors.New("not pending")
	}
	delete(r.pending, id)
	r.approved[id] = who
	return who.Username, false, nil
}

var (
	alice = oidctest.User{Username: "alice", Password: "alice-pw", Email: "alice@example.com", EmailVerified: true,
		Name: "Alice", Groups: []string{"eng", "vpn"}}
	mallory = oidctest.User{Username: "mallory", Password: "m-pw", Email: "mallory@evil.test", EmailVerified: true, Groups: []string{"vpn"}}
	carol   = oidctest.User{Username: "carol", Password: "c-pw", Email: "carol@example.com", EmailVerified: false, Groups: []string{"eng"}}
)

// site is a control server's pages for logins through a real provider.
type site struct {
	idp  *oidctest.Provider
	regs *registrations
	ssh  *sshChecks
	srv  *httptest.Server
}

func newSite(t *testing.T, mod func(*Config)) *site {
	t.Helper()
	idp := oidctest.Start(t, oidctest.Options{
		Clients: []oidctest.Client{{ID: "hs", Secret: "hs-secret", RedirectURIGlobs: []string{"http://127.0.0.1:*/oidc/callback"}}},
		Users:   []oidctest.User{alice, mallory, carol},
	})
	regs := &registrations{pending: map[string]Device{}, approved: map[string]Identity{}}
	ssh := &sshChecks{owner: map[string]string{}, approved: map[string]string{}}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	cfg := Config{Issuer: idp.Issuer(), ClientID: "hs", ClientSecret: "hs-secret", RedirectURL: srv.URL + "/oidc/callback",
		Scopes: []string{"openid", "profile", "email"}, PKCEMethod: "S256", EmailVerifiedRequired: true}
	if mod != nil {
		mod(&cfg)
	}
	pages := NewPages(New(cfg), regs, ssh, "/register/confirm/")
	mux.HandleFunc("GET /register/{id}", func(w http.ResponseWriter, r *http.Request) { pages.Login(w, r, r.PathValue("id")) })
	mux.HandleFunc("GET /oidc/callback", pages.Callback)
	mux.HandleFunc("POST /register/confirm/{id}", pages.Confirm)
	mux.HandleFunc("GET /auth/{id}", func(w http.ResponseWriter, r *http.Request) { pages.SSHLogin(w, r, r.PathValue("id")) })
	return &site{idp: idp, regs: regs, ssh: ssh, srv: srv}
}

func (s *site) pending(id, host string) string {
	s.regs.mu.Lock()
	defer s.regs.mu.Unlock()
	s.regs.pending[id] = Device{Hostname: host, Machine: "mkey:abcd1234"}
	return s.srv.URL + "/register/" + id
}

func browser(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 10 * time.Second}
}

// login goes from the registration link through the provider's form to
// this server's answer to the callback, and returns it with its body.
func (s *site) login(t *testing.T, b *http.Client, link, user, pw string) (*http.Response, string) {
	t.Helper()
	ctx := t.Context()
	redirect, err := s.idp.Login(ctx, b, link, user, pw)
	if err != nil {
		t.Fatalf("login at the provider: %v", err)
	}
	resp, err := oidctest.FollowRedirect(ctx, b, redirect)
	if err != nil {
		t.Fatalf("callback: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func confirm(t *testing.T, b *http.Client, page *http.Response, body string) (int, string) {
	t.Helper()
	resp, err := oidctest.SubmitForm(t.Context(), b, page.Request.URL, []byte(body), "", nil)
	if err != nil {
		t.Fatalf("submitting the confirmation: %v", err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

func TestLoginFlow(t *testing.T) {
	tests := []struct {
		name       string
		cfg        func(*Config)
		user, pw   string
		wantStatus int    // of the callback
		wantText   string // on the callback's page
	}{
		{"pkce S256", nil, "alice", "alice-pw", 200, "Register this device?"},
		{"pkce plain", func(c *Config) { c.PKCEMethod = "plain" }, "alice", "alice-pw", 200, "Register this device?"},
		{"no pkce", func(c *Config) { c.PKCEMethod = "" }, "alice", "alice-pw", 200, "Register this device?"},
		{"allowed domain", func(c *Config) { c.AllowedDomains = []string{"example.com"} }, "alice", "alice-pw", 200, "Register this device?"},
		{"disallowed domain", func(c *Config) { c.AllowedDomains = []string{"example.com"} }, "mallory", "m-pw", 403, "is not allowed on this server"},
		{"disallowed user", func(c *Config) { c.AllowedUsers = []string{"alice@example.com"} }, "mallory", "m-pw", 403, "is not allowed on this server"},
		{"allowed group", func(c *Config) { c.AllowedGroups = []string{"eng"} }, "alice", "alice-pw", 200, "Register this device?"},
		{"disallowed group", func(c *Config) { c.AllowedGroups = []string{"eng"} }, "mallory", "m-pw", 403, "none of the groups allowed"},
		{"unverified email refused", func(c *Config) { c.AllowedDomains = []string{"example.com"} }, "carol", "c-pw", 403, "is not verified"},
		{"unverified email, check off", func(c *Config) { c.AllowedDomains = []string{"example.com"}; c.EmailVerifiedRequired = false }, "carol", "c-pw", 200, "Register this device?"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newSite(t, tc.cfg)
			b := browser(t)
			link := s.pending("hskey-authreq-000000000000000000000001", "laptop")
			resp, body := s.login(t, b, link, tc.user, tc.pw)
			if resp.StatusCode != tc.wantStatus || !strings.Contains(body, tc.wantText) {
				t.Fatalf("callback: %d %s; want %d with %q", resp.StatusCode, body, tc.wantStatus, tc.wantText)
			}
			if tc.wantStatus != 200 {
				if len(s.regs.approved) != 0 {
					t.Errorf("a refused login completed a registration: %v", s.regs.approved)
				}
				return
			}
			if !strings.Contains(body, "laptop") || !strings.Contains(body, "mkey:abcd1234") {
				t.Errorf("the confirmation page does not name the device:\n%s", body)
			}
			if len(s.regs.approved) != 0 {
				t.Fatal("registered before the person confirmed")
			}
			code, out := confirm(t, b, resp, body)
			if code != 200 || !strings.Contains(out, "Device registered") {
				t.Fatalf("confirmation: %d %s", code, out)
			}
			who := s.regs.approved["hskey-authreq-000000000000000000000001"]
			u, _ := s.idp.User(tc.user)
			if who.Issuer != s.idp.Issuer() || who.Subject != u.Subject || who.Email != u.Email || who.Username != tc.user ||
				!slices.Equal(who.Groups, u.Groups) || who.Expiry.IsZero() {
				t.Errorf("identity %+v; want the provider's user %+v", who, u)
			}
		})
	}
}

// TestLoginRefusesForgeries: a callback from a browser that did not start
// the login, a callback replayed, a confirmation without the page's token,
// and a confirmation for another registration are all refused and
// register nothing.
func TestLoginRefusesForgeries(t *testing.T) {
	s := newSite(t, nil)
	ctx := t.Context()
	const id = "hskey-authreq-00000000000000000000000a"
	link := s.pending(id, "laptop")

	// The provider's redirect, followed by another browser.
	b := browser(t)
	redirect, err := s.idp.Login(ctx, b, link, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	other := browser(t)
	resp, err := oidctest.FollowRedirect(ctx, other, redirect)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 400 || !strings.Contains(string(body), "did not start this login") {
		t.Errorf("callback in another browser: %d %s", resp.StatusCode, body)
	}
	// The right browser, then the same callback again.
	resp, err = oidctest.FollowRedirect(ctx, b, redirect)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("callback: %d %s", resp.StatusCode, page)
	}
	again, err := oidctest.FollowRedirect(ctx, b, redirect)
	if err != nil {
		t.Fatal(err)
	}
	again.Body.Close()
	if again.StatusCode != 400 {
		t.Errorf("replayed callback: %d; want 400", again.StatusCode)
	}

	post := func(c *http.Client, path string, form url.Values) int {
		resp, err := c.PostForm(s.srv.URL+path, form)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	token := between(string(page), `name="token" value="`, `"`)
	if token == "" {
		t.Fatalf("no token in the confirmation page:\n%s", page)
	}
	if code := post(other, "/register/confirm/"+id, url.Values{"token": {token}}); code != 403 {
		t.Errorf("confirmation from another browser (no cookie): %d; want 403", code)
	}
	if code := post(b, "/register/confirm/"+id, url.Values{"token": {"forged"}}); code != 403 {
		t.Errorf("confirmation with a forged token: %d; want 403", code)
	}
	if code := post(b, "/register/confirm/hskey-authreq-00000000000000000000000b", url.Values{"token": {token}}); code != 400 {
		t.Errorf("confirmation for another registration: %d; want 400", code)
	}
	if len(s.regs.approved) != 0 {
		t.Fatalf("forgeries registered a node: %v", s.regs.approved)
	}
}

// TestTwoLoginTabs: one browser opens the link twice (two tabs) and
// finishes the second login first; both logins are valid, and the
// registration is completed once.
func TestTwoLoginTabs(t *testing.T) {
	s := newSite(t, nil)
	ctx := t.Context()
	const id = "hskey-authreq-00000000000000000000000c"
	link := s.pending(id, "laptop")
	b := browser(t)
	first, err := s.idp.Login(ctx, b, link, "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	second, body2 := s.login(t, b, link, "alice", "alice-pw")
	if second.StatusCode != 200 {
		t.Fatalf("second tab: %d %s", second.StatusCode, body2)
	}
	resp, err := oidctest.FollowRedirect(ctx, b, first)
	if err != nil {
		t.Fatal(err)
	}
	body1, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("first tab's callback after the second's: %d %s", resp.StatusCode, body1)
	}
	if code, out := confirm(t, b, resp, string(body1)); code != 200 {
		t.Fatalf("first tab's confirmation: %d %s", code, out)
	}
	if len(s.regs.approved) != 1 {
		t.Errorf("approved %v", s.regs.approved)
	}
}

// TestProviderDown: while the provider cannot be reached the login page
// says so (503), Discover reports ErrUnavailable, and logins work once it
// is back.
func TestProviderDown(t *testing.T) {
	s := newSite(t, nil)
	s.idp.Stop()
	b := browser(t)
	link := s.pending("hskey-authreq-00000000000000000000000d", "laptop")
	resp, err := b.Get(link)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 503 || !strings.Contains(string(body), "cannot be reached") {
		t.Errorf("login page with the provider down: %d %s", resp.StatusCode, body)
	}
	c := New(Config{Issuer: s.idp.Issuer(), ClientID: "hs"})
	if err := c.Discover(t.Context()); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Discover = %v; want ErrUnavailable", err)
	}
	if err := s.idp.Serve(); err != nil {
		t.Fatal(err)
	}
	resp, body2 := s.login(t, b, link, "alice", "alice-pw")
	if resp.StatusCode != 200 {
		t.Errorf("login after the provider came back: %d %s", resp.StatusCode, body2)
	}
}

func between(s, from, to string) string {
	_, rest, ok := strings.Cut(s, from)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, to)
	return v
}

// sshChecks is the test's side of SSH checks: each has the subject of the
// person owning its source node.
type sshChecks struct {
	mu       sync.Mutex
	owner    map[string]string // check ID -> subject
	approved map[string]string // check ID -> subject
}

func (c *sshChecks) Approve(_ context.Context, id string, who Identity) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	owner, ok := c.owner[id]
	switch {
	case !ok:
		return "", errors.New("no such check")
	case owner != who.Subject:
		return "", &Refused{Reason: "you do not own the source node"}
	}
	c.approved[id] = who.Subject
	return "laptop to server", nil
}

// TestSSHCheckLogin: the owner of a check's source node approves it by
// logging in; anyone else is refused and approves nothing.
func TestSSHCheckLogin(t *testing.T) {
	s := newSite(t, nil)
	a, _ := s.idp.User("alice")
	s.ssh.owner["sshcheck-1"] = a.Subject
	s.ssh.owner["sshcheck-2"] = a.Subject
	for _, tc := range []struct {
		check, user, pw string
		status          int
		text            string
	}{
		{"sshcheck-1", "alice", "alice-pw", 200, "SSH connection approved"},
		{"sshcheck-2", "mallory", "m-pw", 403, "you do not own the source node"},
		{"sshcheck-3", "alice", "alice-pw", 404, "is over"},
	} {
		resp, body := s.login(t, browser(t), s.srv.URL+"/auth/"+tc.check, tc.user, tc.pw)
		if resp.StatusCode != tc.status || !strings.Contains(body, tc.text) {
			t.Errorf("%s by %s: %d %s; want %d with %q", tc.check, tc.user, resp.StatusCode, body, tc.status, tc.text)
		}
	}
	if len(s.ssh.approved) != 1 || s.ssh.approved["sshcheck-1"] != a.Subject {
		t.Errorf("approved %v; want only sshcheck-1 by alice", s.ssh.approved)
	}
	if len(s.regs.approved) != 0 {
		t.Errorf("an SSH login completed a registration")
	}
}
