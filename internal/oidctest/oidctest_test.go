package oidctest

import (
	"context"
	"errors"
	"fmt"
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

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/hsctl/headscale/internal/tstest"
	"golang.org/x/oauth2"
)

// The relying party's callback; Login stops at the redirect to it, so
// nothing listens there.
const callbackURL = "http://127.0.0.1:9/oidc/callback"

var alice = User{
	Username: "alice", Password: "alice-pw", Subject: "0001",
	Email: "alice@example.com", EmailVerified: true,
	Name: "Alice Liddell", Picture: "http://127.0.0.1:9/alice.png",
	Groups: []string{"eng", "admins"},
}

var bob = User{Username: "bob", Password: "bob-pw", Email: "bob@example.net", Name: "Bob"}

func testOptions() Options {
	return Options{
		Clients: []Client{
			{ID: "rp", Secret: "rp-secret", RedirectURIs: []string{callbackURL}},
			{ID: "userinfo-only", Secret: "s2", RedirectURIs: []string{callbackURL}, ClaimsInUserinfoOnly: true},
			{ID: "jwt", Secret: "s3", RedirectURIs: []string{callbackURL}, JWTAccessTokens: true},
			{ID: "globbed", Secret: "s4", RedirectURIGlobs: []string{"http://127.0.0.1:*/oidc/callback"}},
			{ID: "native", Public: true, RedirectURIs: []string{callbackURL}},
		},
		Users: []User{alice, bob},
	}
}

func newBrowser(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, Timeout: 10 * time.Second}
}

// rp is a relying party as a control server would be one: go-oidc for
// discovery and verification, x/oauth2 for the code exchange.
type rp struct {
	provider *oidc.Provider
	config   oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func newRP(t *testing.T, p *Provider, clientID, secret string, scopes ...string) *rp {
	t.Helper()
	provider, err := oidc.NewProvider(context.Background(), p.Issuer())
	if err != nil {
		t.Fatalf("discovery: %v", err)
	}
	if len(scopes) == 0 {
		scopes = []string{oidc.ScopeOpenID, "profile", "email"}
	}
	return &rp{
		provider: provider,
		config: oauth2.Config{
			ClientID: clientID, ClientSecret: secret, Endpoint: provider.Endpoint(),
			RedirectURL: callbackURL, Scopes: scopes,
		},
		verifier: provider.Verifier(&oidc.Config{ClientID: clientID}),
	}
}

// login runs the flow up to the callback and checks the redirect's state;
// it returns the code.
func (r *rp) login(t *testing.T, p *Provider, browser *http.Client, username, password, state string, opts ...oauth2.AuthCodeOption) string {
	t.Helper()
	resp, err := p.Login(context.Background(), browser, r.config.AuthCodeURL(state, opts...), username, password)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	if got := loc.Scheme + "://" + loc.Host + loc.Path; got != callbackURL {
		t.Fatalf("redirected to %s, want the callback %s", loc, callbackURL)
	}
	q := loc.Query()
	if q.Get("error") != "" {
		t.Fatalf("provider answered error %q: %s", q.Get("error"), q.Get("error_description"))
	}
	if q.Get("state") != state {
		t.Fatalf("state %q, want %q", q.Get("state"), state)
	}
	if q.Get("code") == "" {
		t.Fatalf("no code in %s", loc)
	}
	return q.Get("code")
}

type claims struct {
	Subject           string   `json:"sub"`
	Email             string   `json:"email"`
	EmailVerified     *bool    `json:"email_verified"`
	Name              string   `json:"name"`
	PreferredUsername string   `json:"preferred_username"`
	Picture           string   `json:"picture"`
	Groups            []string `json:"groups"`
	Nonce             string   `json:"nonce"`
}

func TestCodeFlow(t *testing.T) {
	p := Start(t, testOptions())
	tests := []struct {
		name       string
		client     string
		secret     string
		pkce       string // "", "S256", "plain"
		authStyle  oauth2.AuthStyle
		idHasEmail bool
	}{
		{name: "pkce-s256/basic", client: "rp", secret: "rp-secret", pkce: "S256", authStyle: oauth2.AuthStyleInHeader, idHasEmail: true},
		{name: "pkce-plain/post", client: "rp", secret: "rp-secret", pkce: "plain", authStyle: oauth2.AuthStyleInParams, idHasEmail: true},
		{name: "no-pkce/basic", client: "rp", secret: "rp-secret", authStyle: oauth2.AuthStyleInHeader, idHasEmail: true},
		{name: "claims-in-userinfo-only", client: "userinfo-only", secret: "s2", pkce: "S256", authStyle: oauth2.AuthStyleInHeader},
		{name: "jwt-access-token", client: "jwt", secret: "s3", pkce: "S256", authStyle: oauth2.AuthStyleInParams, idHasEmail: true},
		{name: "redirect-glob", client: "globbed", secret: "s4", pkce: "S256", authStyle: oauth2.AuthStyleInHeader, idHasEmail: true},
		{name: "public-client", client: "native", pkce: "S256", authStyle: oauth2.AuthStyleInParams, idHasEmail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			r := newRP(t, p, tt.client, tt.secret)
			r.config.Endpoint.AuthStyle = tt.authStyle
			nonce, state := randomID(), randomID()
			verifier := oauth2.GenerateVerifier()
			authOpts := []oauth2.AuthCodeOption{oidc.Nonce(nonce)}
			var exchangeOpts []oauth2.AuthCodeOption
			switch tt.pkce {
			case "S256":
				authOpts = append(authOpts, oauth2.S256ChallengeOption(verifier))
				exchangeOpts = append(exchangeOpts, oauth2.VerifierOption(verifier))
			case "plain":
				authOpts = append(authOpts, oauth2.SetAuthURLParam("code_challenge", verifier),
					oauth2.SetAuthURLParam("code_challenge_method", "plain"))
				exchangeOpts = append(exchangeOpts, oauth2.VerifierOption(verifier))
			}
			before := p.Logins("alice")
			code := r.login(t, p, newBrowser(t), "alice", "alice-pw", state, authOpts...)
			if got := p.Logins("alice"); got != before+1 {
				t.Errorf("Logins = %d, want %d", got, before+1)
			}

			tok, err := r.config.Exchange(ctx, code, exchangeOpts...)
			if err != nil {
				t.Fatalf("exchange: %v", err)
			}
			raw, _ := tok.Extra("id_token").(string)
			idToken, err := r.verifier.Verify(ctx, raw)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			if idToken.Nonce != nonce {
				t.Errorf("nonce %q, want %q", idToken.Nonce, nonce)
			}
			if err := idToken.VerifyAccessToken(tok.AccessToken); err != nil {
				t.Errorf("at_hash: %v", err)
			}
			var id claims
			if err := idToken.Claims(&id); err != nil {
				t.Fatal(err)
			}
			if id.Subject != "0001" || !slices.Equal(id.Groups, alice.Groups) {
				t.Errorf("ID token sub %q groups %v, want 0001 %v", id.Subject, id.Groups, alice.Groups)
			}
			if got := id.Email != ""; got != tt.idHasEmail {
				t.Errorf("ID token has email: %v, want %v (%+v)", got, tt.idHasEmail, id)
			}
			if tt.idHasEmail && (id.Name != alice.Name || id.PreferredUsername != "alice" || id.Picture != alice.Picture ||
				id.EmailVerified == nil || !*id.EmailVerified) {
				t.Errorf("ID token claims %+v", id)
			}

			info, err := r.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
			if err != nil {
				t.Fatalf("userinfo: %v", err)
			}
			var ui claims
			if err := info.Claims(&ui); err != nil {
				t.Fatal(err)
			}
			want := claims{Subject: "0001", Email: alice.Email, EmailVerified: ui.EmailVerified, Name: alice.Name,
				PreferredUsername: "alice", Picture: alice.Picture, Groups: alice.Groups}
			if ui.EmailVerified == nil || !*ui.EmailVerified || !equalClaims(ui, want) {
				t.Errorf("userinfo %+v, want %+v", ui, want)
			}

			// A code works once.
			if _, err := r.config.Exchange(ctx, code, exchangeOpts...); err == nil {
				t.Error("the code was exchanged twice")
			}
		})
	}
}

func equalClaims(a, b claims) bool {
	return a.Subject == b.Subject && a.Email == b.Email && a.Name == b.Name && a.PreferredUsername == b.PreferredUsername &&
		a.Picture == b.Picture && slices.Equal(a.Groups, b.Groups)
}

// TestExchangeRefused: the token endpoint refuses what a real provider
// refuses.
func TestExchangeRefused(t *testing.T) {
	p := Start(t, testOptions())
	ctx := context.Background()
	tests := []struct {
		name     string
		client   string // "" is "rp"
		secret   string
		pkce     bool
		verifier string // sent at the exchange; "" sends none
	}{
		{name: "wrong-verifier", secret: "rp-secret", pkce: true, verifier: oauth2.GenerateVerifier()},
		{name: "missing-verifier", secret: "rp-secret", pkce: true},
		{name: "unexpected-verifier", secret: "rp-secret", verifier: oauth2.GenerateVerifier()},
		{name: "wrong-secret", secret: "nope"},
		{name: "public-client-without-pkce", client: "native"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := tt.client
			if client == "" {
				client = "rp"
			}
			r := newRP(t, p, client, tt.secret)
			var authOpts, exchangeOpts []oauth2.AuthCodeOption
			if tt.pkce {
				authOpts = append(authOpts, oauth2.S256ChallengeOption(oauth2.GenerateVerifier()))
			}
			if tt.verifier != "" {
				exchangeOpts = append(exchangeOpts, oauth2.VerifierOption(tt.verifier))
			}
			code := r.login(t, p, newBrowser(t), "alice", "alice-pw", "st", authOpts...)
			var re *oauth2.RetrieveError
			if _, err := r.config.Exchange(ctx, code, exchangeOpts...); !errors.As(err, &re) {
				t.Fatalf("exchange: %v, want a refusal from the token endpoint", err)
			}
		})
	}
}

func TestLoginRefused(t *testing.T) {
	p := Start(t, testOptions())
	r := newRP(t, p, "rp", "rp-secret")
	tests := []struct {
		name, authURL, username, password string
		status                            int
		message                           string
	}{
		{name: "wrong-password", authURL: r.config.AuthCodeURL("s"), username: "alice", password: "bob-pw",
			status: http.StatusUnauthorized, message: "Invalid username or password."},
		{name: "unknown-user", authURL: r.config.AuthCodeURL("s"), username: "mallory", password: "x",
			status: http.StatusUnauthorized, message: "Invalid username or password."},
		{name: "redirect-uri-not-registered", authURL: r.config.AuthCodeURL("s", oauth2.SetAuthURLParam("redirect_uri", "http://127.0.0.1:9/evil")),
			username: "alice", password: "alice-pw", status: http.StatusBadRequest, message: "redirect_uri is missing in the client configuration"},
		{name: "unknown-client", authURL: strings.Replace(r.config.AuthCodeURL("s"), "client_id=rp", "client_id=other", 1),
			username: "alice", password: "alice-pw", status: http.StatusBadRequest, message: "unable to retrieve client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := p.Logins("alice")
			_, err := p.Login(context.Background(), newBrowser(t), tt.authURL, tt.username, tt.password)
			var le *LoginError
			if !errors.As(err, &le) || le.Status != tt.status || !strings.Contains(le.Message, tt.message) {
				t.Fatalf("Login: %v, want status %d with %q", err, tt.status, tt.message)
			}
			if p.Logins("alice") != before {
				t.Error("a refused login counted")
			}
		})
	}

	// After a wrong password the same browser can still log in (the form
	// is shown again, bound to the same request).
	browser := newBrowser(t)
	resp, err := browser.Get(r.config.AuthCodeURL("s"))
	if err != nil {
		t.Fatal(err)
	}
	page, _ := readAll(resp)
	form, _ := findLoginForm(page)
	if resp.StatusCode != http.StatusOK || form == nil {
		t.Fatalf("login page %d: %s", resp.StatusCode, page)
	}
	post := func(f *htmlForm, password string) *http.Response {
		t.Helper()
		req, err := f.request(context.Background(), resp.Request.URL, "alice", password)
		if err != nil {
			t.Fatal(err)
		}
		noFollow := *browser
		noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		out, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	wrong := post(form, "guess")
	page, _ = readAll(wrong)
	again, alert := findLoginForm(page)
	if wrong.StatusCode != http.StatusUnauthorized || again == nil || alert == "" {
		t.Fatalf("wrong password: %d, form %v, alert %q", wrong.StatusCode, again != nil, alert)
	}
	right := post(again, "alice-pw")
	readAll(right)
	if right.StatusCode != http.StatusFound || !strings.Contains(right.Header.Get("Location"), "/authorize/callback") {
		t.Fatalf("right password: %d to %q", right.StatusCode, right.Header.Get("Location"))
	}

	// A form posted without the CSRF cookie is refused.
	noJar := &http.Client{Timeout: 10 * time.Second}
	resp2, err := noJar.Get(r.config.AuthCodeURL("s"))
	if err != nil {
		t.Fatal(err)
	}
	page, _ = readAll(resp2)
	form, _ = findLoginForm(page)
	req, _ := form.request(context.Background(), resp2.Request.URL, "alice", "alice-pw")
	out, err := noJar.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(out)
	if out.StatusCode != http.StatusForbidden {
		t.Errorf("post without the CSRF cookie: %d, want 403", out.StatusCode)
	}
}

// TestTwoTabs: one browser with two logins open at once (two tabs) can
// finish both, in either order.
func TestTwoTabs(t *testing.T) {
	p := Start(t, testOptions())
	r := newRP(t, p, "rp", "rp-secret")
	browser := newBrowser(t)
	noFollow := *browser
	noFollow.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	type tab struct {
		form *htmlForm
		page *url.URL
	}
	open := func(state string) tab {
		resp, err := browser.Get(r.config.AuthCodeURL(state))
		if err != nil {
			t.Fatal(err)
		}
		page, _ := readAll(resp)
		form, _ := findLoginForm(page)
		if form == nil {
			t.Fatalf("no login form: %s", page)
		}
		return tab{form, resp.Request.URL}
	}
	first, second := open("one"), open("two")
	for _, tb := range []struct {
		tab   tab
		state string
	}{{second, "two"}, {first, "one"}} {
		req, err := tb.tab.form.request(context.Background(), tb.tab.page, "alice", "alice-pw")
		if err != nil {
			t.Fatal(err)
		}
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readAll(resp)
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("tab %s: status %d", tb.state, resp.StatusCode)
		}
		cb, err := FollowRedirect(context.Background(), browser, resp)
		if err != nil {
			t.Fatal(err)
		}
		readAll(cb)
		loc, _ := url.Parse(cb.Header.Get("Location"))
		if loc.Query().Get("state") != tb.state || loc.Query().Get("code") == "" {
			t.Errorf("tab %s: redirected to %s", tb.state, loc)
		}
	}
}

func readAll(resp *http.Response) ([]byte, error) {
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// TestLoginFromRelyingParty: Login follows redirects from the relying
// party's own page to the provider, as it does from a control server's
// AuthURL, and the browser keeps the relying party's cookie.
func TestLoginFromRelyingParty(t *testing.T) {
	p := Start(t, testOptions())
	r := newRP(t, p, "rp", "rp-secret")
	start := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "rp_state", Value: "st", Path: "/"})
		http.Redirect(w, req, r.config.AuthCodeURL("st"), http.StatusFound)
	}))
	defer start.Close()
	browser := newBrowser(t)
	resp, err := p.Login(context.Background(), browser, start.URL+"/register/abc", "bob", "bob-pw")
	if err != nil {
		t.Fatal(err)
	}
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if !strings.HasPrefix(loc.String(), callbackURL+"?") || loc.Query().Get("code") == "" || loc.Query().Get("state") != "st" {
		t.Errorf("redirected to %s", loc)
	}
	startURL, _ := url.Parse(start.URL)
	if cs := browser.Jar.Cookies(startURL); len(cs) != 1 || cs[0].Value != "st" {
		t.Errorf("relying party's cookies in the jar: %v", cs)
	}
}

func TestFindLoginForm(t *testing.T) {
	tests := []struct {
		name, page                     string
		action, method, user, password string
		hidden                         url.Values
		alert                          string
	}{
		{
			name: "this provider's form",
			page: `<p role="alert">Invalid username or password.</p><form method="post" action="/login">
				<input type="hidden" name="authRequestID" value="r1"><input type="hidden" name="csrf" value="c1">
				<input type="text" name="username"><input type="password" name="password"></form>`,
			action: "/login", method: "post", user: "username", password: "password",
			hidden: url.Values{"authRequestID": {"r1"}, "csrf": {"c1"}}, alert: "Invalid username or password.",
		},
		{
			name: "a search form first, then an email login by GET",
			page: `<form action="/search"><input name="q"></form>
				<div><form action="https://idp.example/auth?x=1" method="get"><input type="email" name="login">
				<input name="pw" type="password"><input type="hidden" name="session_code" value="s"><button>Go</button></form></div>`,
			action: "https://idp.example/auth?x=1", method: "get", user: "login", password: "pw",
			hidden: url.Values{"session_code": {"s"}},
		},
		{name: "no password field", page: `<form action="/x"><input name="user"></form>`},
		{name: "not HTML", page: `{"error":"invalid_request"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			form, alert := findLoginForm([]byte(tt.page))
			if alert != tt.alert {
				t.Errorf("alert %q, want %q", alert, tt.alert)
			}
			if tt.password == "" {
				if form != nil {
					t.Errorf("found a form: %+v", form)
				}
				return
			}
			if form == nil {
				t.Fatal("no form found")
			}
			if form.action != tt.action || form.method != tt.method || form.userField != tt.user ||
				form.passwordField != tt.password || form.hidden.Encode() != tt.hidden.Encode() {
				t.Errorf("form %+v", form)
			}
		})
	}
}

func TestGroups(t *testing.T) {
	tests := []struct {
		name        string
		groupsScope string
		scopes      []string
		want        []string
	}{
		{name: "always", scopes: []string{oidc.ScopeOpenID}, want: alice.Groups},
		{name: "scope-required-and-absent", groupsScope: "groups", scopes: []string{oidc.ScopeOpenID, "profile", "email"}},
		{name: "scope-required-and-present", groupsScope: "groups", scopes: []string{oidc.ScopeOpenID, "groups"}, want: alice.Groups},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := testOptions()
			opts.GroupsScope = tt.groupsScope
			p := Start(t, opts)
			r := newRP(t, p, "rp", "rp-secret", tt.scopes...)
			id, ui := loginClaims(t, p, r, "alice", "alice-pw")
			if !slices.Equal(id.Groups, tt.want) || !slices.Equal(ui.Groups, tt.want) {
				t.Errorf("groups: ID token %v, userinfo %v, want %v", id.Groups, ui.Groups, tt.want)
			}
		})
	}

	// A group removed between two logins is gone from the second login's
	// tokens; userinfo of the first token shows the user as now.
	p := Start(t, testOptions())
	r := newRP(t, p, "rp", "rp-secret")
	first, _ := loginClaims(t, p, r, "alice", "alice-pw")
	if err := p.SetGroups("alice", "eng"); err != nil {
		t.Fatal(err)
	}
	second, _ := loginClaims(t, p, r, "alice", "alice-pw")
	if !slices.Equal(first.Groups, alice.Groups) || !slices.Equal(second.Groups, []string{"eng"}) {
		t.Errorf("groups across logins: %v then %v", first.Groups, second.Groups)
	}
	if err := p.SetGroups("alice"); err != nil {
		t.Fatal(err)
	}
	if third, _ := loginClaims(t, p, r, "alice", "alice-pw"); third.Groups != nil {
		t.Errorf("no groups: claim %v, want none", third.Groups)
	}
	if err := p.SetGroups("nobody", "x"); err == nil {
		t.Error("SetGroups of an unknown user succeeded")
	}

	// bob: no picture, email not verified (sent as false), no groups.
	id, ui := loginClaims(t, p, r, "bob", "bob-pw")
	if id.EmailVerified == nil || *id.EmailVerified || ui.EmailVerified == nil || *ui.EmailVerified || id.Groups != nil {
		t.Errorf("bob: %+v / %+v", id, ui)
	}

	// UpdateUser: the next login carries the change.
	if err := p.UpdateUser("bob", func(u *User) { u.Email, u.EmailVerified, u.NoPreferredUsername = "bob@example.org", true, true }); err != nil {
		t.Fatal(err)
	}
	if err := p.UpdateUser("bob", func(u *User) { u.Username = "robert" }); err == nil {
		t.Error("UpdateUser renamed a user")
	}
	id, _ = loginClaims(t, p, r, "bob", "bob-pw")
	if id.Email != "bob@example.org" || id.EmailVerified == nil || !*id.EmailVerified || id.PreferredUsername != "" {
		t.Errorf("bob after UpdateUser: %+v", id)
	}
	if u, ok := p.User("bob"); !ok || u.Email != "bob@example.org" || u.Subject != "sub-bob" {
		t.Errorf("User(bob) = %+v, %v", u, ok)
	}
}

// loginClaims logs in with PKCE and returns the ID token's and userinfo's
// claims.
func loginClaims(t *testing.T, p *Provider, r *rp, username, password string) (claims, claims) {
	t.Helper()
	ctx := context.Background()
	verifier := oauth2.GenerateVerifier()
	nonce := randomID()
	code := r.login(t, p, newBrowser(t), username, password, "st", oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier))
	tok, err := r.config.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := tok.Extra("id_token").(string)
	idToken, err := r.verifier.Verify(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	var id, ui claims
	if err := idToken.Claims(&id); err != nil {
		t.Fatal(err)
	}
	if id.Nonce != nonce {
		t.Errorf("nonce %q, want %q", id.Nonce, nonce)
	}
	info, err := r.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		t.Fatal(err)
	}
	if err := info.Claims(&ui); err != nil {
		t.Fatal(err)
	}
	return id, ui
}

func TestTokenLifetimes(t *testing.T) {
	ctx := context.Background()
	opts := testOptions()
	opts.IDTokenLifetime = 10 * time.Second
	opts.AccessTokenLifetime = 10 * time.Second
	p := Start(t, opts)
	r := newRP(t, p, "rp", "rp-secret")

	exchange := func() (*oauth2.Token, *oidc.IDToken) {
		t.Helper()
		code := r.login(t, p, newBrowser(t), "alice", "alice-pw", "st")
		tok, err := r.config.Exchange(ctx, code)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := tok.Extra("id_token").(string)
		idToken, err := r.verifier.Verify(ctx, raw)
		if err != nil {
			t.Fatal(err)
		}
		return tok, idToken
	}
	tok, idToken := exchange()
	if got := idToken.Expiry.Sub(idToken.IssuedAt); got != 10*time.Second {
		t.Errorf("ID token exp - iat = %v, want 10s", got)
	}
	if left := time.Until(tok.Expiry); left <= 0 || left > 11*time.Second {
		t.Errorf("access token expires in %v, want about 10s", left)
	}

	// Shorter for the next login; the userinfo endpoint refuses the access
	// token once it has expired.
	p.SetTokenLifetimes(time.Hour, time.Second)
	tok, idToken = exchange()
	if got := idToken.Expiry.Sub(idToken.IssuedAt); got != time.Hour {
		t.Errorf("ID token exp - iat = %v, want 1h", got)
	}
	tstest.WaitFor(t, 5*time.Second, "the access token to expire at userinfo", func() error {
		if _, err := r.provider.UserInfo(ctx, oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok.AccessToken, TokenType: "Bearer"})); err == nil {
			return errors.New("userinfo still accepts the token")
		}
		return nil
	})
}

func TestStopServe(t *testing.T) {
	ctx := context.Background()
	p := New(t, testOptions())
	if _, err := oidc.NewProvider(ctx, p.Issuer()); err == nil {
		t.Fatal("discovery worked before Serve")
	}
	if err := p.Serve(); err != nil {
		t.Fatal(err)
	}
	if err := p.Serve(); err == nil {
		t.Error("Serve twice succeeded")
	}
	r := newRP(t, p, "rp", "rp-secret")
	code := r.login(t, p, newBrowser(t), "alice", "alice-pw", "st")
	tok, err := r.config.Exchange(ctx, code)
	if err != nil {
		t.Fatal(err)
	}

	p.Stop()
	if p.Serving() {
		t.Error("Serving after Stop")
	}
	if _, err := oidc.NewProvider(ctx, p.Issuer()); err == nil {
		t.Fatal("discovery worked while stopped")
	}
	p.Stop() // idempotent

	if err := p.Serve(); err != nil {
		t.Fatal(err)
	}
	// Same issuer, same key: a token from before the restart verifies
	// against the provider discovered after it, and userinfo accepts it.
	r2 := newRP(t, p, "rp", "rp-secret")
	raw, _ := tok.Extra("id_token").(string)
	if _, err := r2.verifier.Verify(ctx, raw); err != nil {
		t.Errorf("token from before the restart: %v", err)
	}
	if _, err := r2.provider.UserInfo(ctx, oauth2.StaticTokenSource(tok)); err != nil {
		t.Errorf("userinfo after the restart: %v", err)
	}
}

func TestSSO(t *testing.T) {
	opts := testOptions()
	opts.SSO = true
	p := Start(t, opts)
	r := newRP(t, p, "rp", "rp-secret")
	browser := newBrowser(t)

	// Without a session, prompt=none goes back with login_required.
	resp, err := p.Login(context.Background(), browser, r.config.AuthCodeURL("st", oauth2.SetAuthURLParam("prompt", "none")), "alice", "")
	if err != nil {
		t.Fatal(err)
	}
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if loc.Query().Get("error") != "login_required" || loc.Query().Get("state") != "st" {
		t.Errorf("prompt=none without a session: redirected to %s", loc)
	}

	r.login(t, p, browser, "alice", "alice-pw", "st")
	// The session completes the next login without the form: a wrong
	// password is never asked for.
	r.login(t, p, browser, "alice", "wrong", "st2")
	r.login(t, p, browser, "alice", "wrong", "st3", oauth2.SetAuthURLParam("prompt", "none"))
	if got := p.Logins("alice"); got != 3 {
		t.Errorf("Logins = %d, want 3", got)
	}
	// prompt=login shows the form again.
	_, err = p.Login(context.Background(), browser, r.config.AuthCodeURL("st", oauth2.SetAuthURLParam("prompt", "login")), "alice", "wrong")
	var le *LoginError
	if !errors.As(err, &le) || le.Status != http.StatusUnauthorized {
		t.Errorf("prompt=login with a wrong password: %v", err)
	}
}

func TestOptionsChecked(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{name: "client-without-id", opts: Options{Clients: []Client{{Secret: "s", RedirectURIs: []string{callbackURL}}}}},
		{name: "client-without-secret", opts: Options{Clients: []Client{{ID: "c", RedirectURIs: []string{callbackURL}}}}},
		{name: "client-without-redirect", opts: Options{Clients: []Client{{ID: "c", Secret: "s"}}}},
		{name: "user-without-name", opts: Options{Users: []User{{Password: "x"}}}},
		{name: "shared-subject", opts: Options{Users: []User{{Username: "a", Subject: "1"}, {Username: "b", Subject: "1"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := newProvider(tt.opts); err == nil {
				t.Error("accepted")
			}
		})
	}
}

// TestRelyingPartyRoundTrip is the whole flow as a control server runs
// it: its registration URL sets a state cookie and redirects to the
// provider with state, nonce and PKCE; Login fills the form; the browser
// follows the provider's redirect to the server's callback, which checks
// the state against the cookie, exchanges the code with the verifier,
// verifies the ID token and its nonce, reads userinfo and answers a page.
func TestRelyingPartyRoundTrip(t *testing.T) {
	p := Start(t, Options{
		Clients: []Client{{ID: "headscale", Secret: "hs-secret", RedirectURIGlobs: []string{"http://127.0.0.1:*/oidc/callback"}}},
		Users:   []User{alice},
	})
	provider, err := oidc.NewProvider(context.Background(), p.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	type pending struct{ nonce, verifier string }
	var mu sync.Mutex
	logins := map[string]pending{} // by state
	var config oauth2.Config
	mux := http.NewServeMux()
	mux.HandleFunc("GET /register/{id}", func(w http.ResponseWriter, r *http.Request) {
		state, nonce, verifier := randomID(), randomID(), oauth2.GenerateVerifier()
		mu.Lock()
		logins[state] = pending{nonce, verifier}
		mu.Unlock()
		http.SetCookie(w, &http.Cookie{Name: "state", Value: state, Path: "/oidc/", HttpOnly: true})
		http.Redirect(w, r, config.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(verifier)), http.StatusFound)
	})
	mux.HandleFunc("GET /oidc/callback", func(w http.ResponseWriter, r *http.Request) {
		c, err := r.Cookie("state")
		state := r.URL.Query().Get("state")
		mu.Lock()
		pend, ok := logins[state]
		delete(logins, state)
		mu.Unlock()
		if err != nil || c.Value != state || !ok {
			http.Error(w, "state mismatch", http.StatusBadRequest)
			return
		}
		tok, err := config.Exchange(r.Context(), r.URL.Query().Get("code"), oauth2.VerifierOption(pend.verifier))
		if err != nil {
			http.Error(w, "exchange: "+err.Error(), http.StatusBadRequest)
			return
		}
		raw, _ := tok.Extra("id_token").(string)
		idToken, err := provider.Verifier(&oidc.Config{ClientID: config.ClientID}).Verify(r.Context(), raw)
		if err != nil || idToken.Nonce != pend.nonce {
			http.Error(w, "bad ID token", http.StatusBadRequest)
			return
		}
		info, err := provider.UserInfo(r.Context(), oauth2.StaticTokenSource(tok))
		if err != nil {
			http.Error(w, "userinfo: "+err.Error(), http.StatusBadGateway)
			return
		}
		var cl claims
		info.Claims(&cl)
		// A confirmation page, as a control server shows before it
		// registers the device.
		fmt.Fprintf(w, `<p>Register this device for %s (%s)?</p>
<form method="post" action="/register/confirm"><input type="hidden" name="csrf" value="token-1">
<input type="hidden" name="who" value="%s"><button name="action" value="confirm">Confirm</button>
<button name="action" value="cancel">Cancel</button></form>`, cl.PreferredUsername, strings.Join(cl.Groups, ","), cl.PreferredUsername)
	})
	mux.HandleFunc("POST /register/confirm", func(w http.ResponseWriter, r *http.Request) {
		if r.PostFormValue("csrf") != "token-1" || r.PostFormValue("action") != "confirm" {
			http.Error(w, "bad confirmation", http.StatusBadRequest)
			return
		}
		w.Write([]byte("registered for " + r.PostFormValue("who")))
	})
	server := httptest.NewServer(mux)
	defer server.Close()
	config = oauth2.Config{
		ClientID: "headscale", ClientSecret: "hs-secret", Endpoint: provider.Endpoint(),
		RedirectURL: server.URL + "/oidc/callback", Scopes: []string{oidc.ScopeOpenID, "profile", "email"},
	}

	browser := newBrowser(t)
	redirect, err := p.Login(context.Background(), browser, server.URL+"/register/abc", "alice", "alice-pw")
	if err != nil {
		t.Fatal(err)
	}
	page, err := FollowRedirect(context.Background(), browser, redirect)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := readAll(page)
	if page.StatusCode != http.StatusOK || !strings.Contains(string(body), "for alice (eng,admins)?") {
		t.Fatalf("callback answered %d: %s", page.StatusCode, body)
	}
	done, err := SubmitForm(context.Background(), browser, page.Request.URL, body, "/register/confirm", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ = readAll(done)
	if done.StatusCode != http.StatusOK || string(body) != "registered for alice" {
		t.Errorf("confirmation answered %d: %s", done.StatusCode, body)
	}
	// Replaying the callback (same code, state gone) is refused by the
	// server; the provider would refuse the code too.
	again, err := FollowRedirect(context.Background(), browser, redirect)
	if err != nil {
		t.Fatal(err)
	}
	readAll(again)
	if again.StatusCode != http.StatusBadRequest {
		t.Errorf("replayed callback: %d", again.StatusCode)
	}
}

func TestSubmitForm(t *testing.T) {
	got := make(chan string, 1)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		got <- r.Method + " " + r.URL.Path + " " + r.Form.Encode()
		http.Redirect(w, r, "/next", http.StatusSeeOther)
	}))
	defer server.Close()
	page := `<form action="/search"><input name="q" value="x"></form>
<form method="POST" action="confirm?from=page">
 <input type="hidden" name="csrf" value="c1"><input name="note" value="n"><input name="off" value="z" disabled>
 <input type="checkbox" name="remember" checked><input type="checkbox" name="spam" value="yes">
 <select name="user"><option value="u1">one</option><option value="u2" selected>two</option></select>
 <textarea name="why">because</textarea>
 <input type="submit" name="go" value="Approve"><input type="submit" name="go" value="Reject">
</form>`
	pageURL, _ := url.Parse(server.URL + "/register/abc")
	tests := []struct {
		name, suffix string
		set          url.Values
		want         string
		wantErr      bool
	}{
		{name: "defaults", suffix: "/confirm",
			want: "POST /register/confirm csrf=c1&from=page&go=Approve&note=n&remember=on&user=u2&why=because"},
		{name: "set", suffix: "/confirm", set: url.Values{"go": {"Reject"}, "note": {"changed"}},
			want: "POST /register/confirm csrf=c1&from=page&go=Reject&note=changed&remember=on&user=u2&why=because"},
		{name: "first form by GET", suffix: "", want: "GET /search q=x"},
		{name: "no such form", suffix: "/nothing", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := SubmitForm(context.Background(), http.DefaultClient, pageURL, []byte(page), tt.suffix, tt.set)
			if tt.wantErr {
				if err == nil {
					t.Fatal("submitted")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			readAll(resp)
			if resp.StatusCode != http.StatusSeeOther {
				t.Errorf("status %d: the redirect was followed", resp.StatusCode)
			}
			if g := <-got; g != tt.want {
				t.Errorf("server got %q\nwant       %q", g, tt.want)
			}
		})
	}
}
