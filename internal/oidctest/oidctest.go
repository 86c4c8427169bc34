// Package oidctest runs a real OpenID Connect provider on loopback for
// tests. It is test-only code (under internal/, never imported by pkg/).
//
// The protocol (discovery, authorization, token, userinfo, JWKS,
// revocation, introspection, end_session) is the op package of
// github.com/zitadel/oidc/v3, an OpenID-certified provider library; this
// package supplies what the library leaves to its user: an in-memory
// storage of clients, users, auth requests and tokens, an RSA signing key,
// and a login page with a real HTML form (username and password, CSRF
// protection bound to a cookie). Nothing here returns canned tokens: a
// relying party under test talks to it exactly as it talks to Keycloak or
// Authentik.
//
//	idp := oidctest.Start(t, oidctest.Options{
//		Clients: []oidctest.Client{{ID: "headscale", Secret: "s3cret",
//			RedirectURIs: []string{serverURL + "/oidc/callback"}}},
//		Users: []oidctest.User{{Username: "alice", Password: "pw",
//			Email: "alice@example.com", EmailVerified: true, Groups: []string{"eng"}}},
//	})
//	// configure the server with oidc.issuer = idp.Issuer(), then
//	// drive a browser's login from the AuthURL the client printed:
//	resp, err := idp.Login(ctx, browser, authURL, "alice", "pw")
//	// resp is the provider's redirect to the relying party's callback
//	// (code and state in its Location), not yet followed.
//
// What a relying party sees:
//   - The issuer is http://127.0.0.1:<port> (plain HTTP, allowed by the
//     library's WithAllowInsecure). The provider can be stopped and served
//     again on the same port (Stop, Serve), or created without serving
//     (New) so a test can start the relying party while the provider is
//     down.
//   - Authorization code flow only, with or without PKCE (S256 or plain;
//     discovery advertises only S256, as the library does, but plain is
//     accepted). Confidential clients authenticate with client_secret_basic
//     or client_secret_post, whichever the relying party sends.
//   - Claims: sub always; name, preferred_username, picture with the
//     "profile" scope; email and email_verified (false sent explicitly) with
//     "email". They are in the ID token and at the userinfo endpoint, unless
//     the client sets ClaimsInUserinfoOnly (then only at userinfo, as the
//     library does by default and some providers do).
//   - Groups: a "groups" claim (a JSON array of strings) in the ID token and
//     at userinfo whenever the user has at least one group, whatever the
//     scopes, as Keycloak with a group mapper, Authentik (its default profile
//     mapping) and Entra ID send it; with Options.GroupsScope set (e.g.
//     "groups", as Authelia and Kanidm want) only when that scope is
//     requested. A user without groups gets no groups claim.
//   - Token lifetimes are Options.IDTokenLifetime and
//     Options.AccessTokenLifetime (one hour each by default), changeable
//     between logins with SetTokenLifetimes. Refresh tokens are not issued.
//
// The provider logs through log/slog's default logger, as the library
// does; it never logs passwords, codes or tokens itself.
package oidctest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zitadel/oidc/v3/pkg/op"
)

// Options configures a Provider. The zero value is a provider with no
// clients and no users, serving on a free loopback port.
type Options struct {
	// Addr is the host:port to serve on. Empty picks a free port on
	// 127.0.0.1 (it is reserved by binding it once and released, so
	// another process could take it before Serve; tests on this machine
	// do not). The issuer is http://Addr.
	Addr string
	// Clients are the OAuth clients registered at start; AddClient adds
	// more later (for example once the relying party's port is known).
	Clients []Client
	// Users are the people who can log in; AddUser adds more later.
	Users []User
	// IDTokenLifetime is how long an ID token is valid (its exp). Zero
	// means one hour.
	IDTokenLifetime time.Duration
	// AccessTokenLifetime is how long an access token is valid (the token
	// response's expires_in, and the userinfo endpoint refuses it after).
	// Zero means one hour.
	AccessTokenLifetime time.Duration
	// GroupsScope, when set, is the scope a relying party must request to
	// receive the groups claim. Empty sends groups whatever the scopes.
	GroupsScope string
	// SSO, when true, makes a successful login set a session cookie: a
	// later authorization request from the same browser (cookie jar) is
	// completed without the form, unless it asks prompt=login or max_age=0,
	// as real providers do. Off by default: every login shows the form.
	SSO bool
}

// Client is an OAuth client (a relying party) registered at the provider.
type Client struct {
	// ID is the client_id.
	ID string
	// Secret is the client_secret (client_secret_basic or
	// client_secret_post). Ignored for a Public client.
	Secret string
	// RedirectURIs are the exact redirect URIs allowed.
	RedirectURIs []string
	// RedirectURIGlobs are allowed redirect URIs as path.Match-style globs
	// (doublestar syntax, as the library matches them), for example
	// "http://127.0.0.1:*/oidc/callback" when the relying party's port is
	// not known yet.
	RedirectURIGlobs []string
	// Public makes the client a public (native) client: no secret, PKCE
	// required by the library.
	Public bool
	// ClaimsInUserinfoOnly leaves the profile and email claims out of the
	// ID token; the relying party must fetch them from the userinfo
	// endpoint. sub and groups stay in the ID token.
	ClaimsInUserinfoOnly bool
	// JWTAccessTokens issues access tokens as signed JWTs instead of
	// opaque strings.
	JWTAccessTokens bool
}

// User is a person who can log in at the provider.
type User struct {
	// Username is what the login form asks for; unique.
	Username string
	// Password is checked as entered.
	Password string
	// Subject is the sub claim; empty means "sub-" + Username.
	Subject string
	// Email and EmailVerified are the email and email_verified claims.
	Email         string
	EmailVerified bool
	// Name is the name claim (display name).
	Name string
	// PreferredUsername is the preferred_username claim; empty means
	// Username. Set NoPreferredUsername to send none.
	PreferredUsername   string
	NoPreferredUsername bool
	// Picture is the picture claim (a URL).
	Picture string
	// Groups is the groups claim.
	Groups []string
	// ExtraClaims are added as they are to the ID token and userinfo
	// (always, whatever the scopes).
	ExtraClaims map[string]any
}

// Provider is a running (or stopped) OpenID provider. Its methods are safe
// for concurrent use.
type Provider struct {
	addr    string
	issuer  string
	store   *storage
	op      *op.Provider
	handler http.Handler
	csrfKey [32]byte // keys the login form's CSRF tokens

	mu  sync.Mutex
	srv *httptest.Server
}

// Start creates a provider and serves it; it is stopped when the test
// ends. It fails the test if the provider cannot be created or its port
// cannot be bound.
func Start(tb testing.TB, opts Options) *Provider {
	tb.Helper()
	p := New(tb, opts)
	if err := p.Serve(); err != nil {
		tb.Fatal(err)
	}
	return p
}

// New creates a provider without serving it: its issuer URL is fixed
// (Issuer works) but nothing listens until Serve. It is stopped when the
// test ends.
func New(tb testing.TB, opts Options) *Provider {
	tb.Helper()
	p, err := newProvider(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(p.Stop)
	return p
}

func newProvider(opts Options) (*Provider, error) {
	addr := opts.Addr
	if addr == "" {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("oidctest: picking a loopback port: %w", err)
		}
		addr = l.Addr().String()
		l.Close()
	}
	issuer := "http://" + addr
	st := newStorage(issuer, opts)
	for _, c := range opts.Clients {
		if err := st.addClient(c); err != nil {
			return nil, err
		}
	}
	for _, u := range opts.Users {
		if err := st.addUser(u); err != nil {
			return nil, err
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("oidctest: generating the signing key: %w", err)
	}
	st.key = key
	config := &op.Config{
		CryptoKeyId:     "oidctest",
		CodeMethodS256:  true,
		AuthMethodPost:  true,
		SupportedScopes: supportedScopes(opts.GroupsScope),
		SupportedClaims: supportedClaims,
	}
	if _, err := rand.Read(config.CryptoKey[:]); err != nil {
		return nil, fmt.Errorf("oidctest: generating the token key: %w", err)
	}
	provider, err := op.NewProvider(config, st, op.StaticIssuer(issuer), op.WithAllowInsecure())
	if err != nil {
		return nil, fmt.Errorf("oidctest: creating the provider: %w", err)
	}
	p := &Provider{addr: addr, issuer: issuer, store: st, op: provider}
	if _, err := rand.Read(p.csrfKey[:]); err != nil {
		return nil, fmt.Errorf("oidctest: generating the CSRF key: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(loginPath, op.NewIssuerInterceptor(provider.IssuerFromRequest).Handler(&loginHandler{p: p}))
	mux.Handle("/", provider)
	p.handler = mux
	return p, nil
}

func supportedScopes(groupsScope string) []string {
	scopes := slices.Clone(op.DefaultSupportedScopes)
	scopes = append(scopes, "groups")
	if groupsScope != "" && groupsScope != "groups" {
		scopes = append(scopes, groupsScope)
	}
	return scopes
}

var supportedClaims = []string{
	"aud", "exp", "iat", "iss", "sub", "auth_time", "nonce", "amr", "at_hash", "c_hash",
	"name", "preferred_username", "picture", "email", "email_verified", "groups",
}

// Serve starts serving on the provider's address; after Stop it serves
// again on the same port, with the same keys, clients, users and tokens
// (as a real provider restarting with its database). Serving twice is an
// error.
func (p *Provider) Serve() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		return errors.New("oidctest: the provider is already serving")
	}
	l, err := net.Listen("tcp", p.addr)
	if err != nil {
		return fmt.Errorf("oidctest: listening on %s: %w", p.addr, err)
	}
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: p.handler, ReadHeaderTimeout: 10 * time.Second}}
	srv.Start()
	p.srv = srv
	return nil
}

// Stop stops serving: open connections are closed and new ones refused
// until Serve. Stopping a stopped provider does nothing.
func (p *Provider) Stop() {
	p.mu.Lock()
	srv := p.srv
	p.srv = nil
	p.mu.Unlock()
	if srv != nil {
		srv.CloseClientConnections()
		srv.Close()
	}
}

// Serving reports whether the provider is serving.
func (p *Provider) Serving() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.srv != nil
}

// Issuer is the issuer URL, http://127.0.0.1:<port> without a trailing
// slash: the value for the relying party's issuer setting and the iss of
// every token.
func (p *Provider) Issuer() string { return p.issuer }

// Addr is the host:port the provider serves on.
func (p *Provider) Addr() string { return p.addr }

// AddClient registers a client; an existing client with the same ID is
// replaced.
func (p *Provider) AddClient(c Client) error { return p.store.addClient(c) }

// AddUser adds a user; an existing user with the same username is
// replaced.
func (p *Provider) AddUser(u User) error { return p.store.addUser(u) }

// UpdateUser changes a user in place (for example its email or name
// between two logins). Tokens already issued keep their claims; the next
// login and userinfo calls see the change.
func (p *Provider) UpdateUser(username string, change func(*User)) error {
	return p.store.updateUser(username, change)
}

// SetGroups replaces a user's groups; the next login's tokens (and
// userinfo from then on) carry them.
func (p *Provider) SetGroups(username string, groups ...string) error {
	return p.store.updateUser(username, func(u *User) { u.Groups = slices.Clone(groups) })
}

// User returns a copy of a user as stored, and whether it exists.
func (p *Provider) User(username string) (User, bool) { return p.store.user(username) }

// SetTokenLifetimes changes the ID token and access token lifetimes for
// tokens issued from now on; a zero duration keeps that lifetime as it is.
func (p *Provider) SetTokenLifetimes(idToken, accessToken time.Duration) {
	p.store.setLifetimes(idToken, accessToken)
}

// Logins returns how many times username completed a login (a correct
// password or, with Options.SSO, a session cookie).
func (p *Provider) Logins(username string) int { return p.store.loginCount(username) }

// randomID returns an unguessable identifier.
func randomID() string { return strings.ToLower(rand.Text()) }

// authCallbackURL is where the login page sends the browser once the
// auth request is done: the library's callback, which redirects to the
// relying party with the code.
func (p *Provider) authCallbackURL(ctx context.Context, authReqID string) string {
	return op.AuthCallbackURL(p.op)(ctx, authReqID)
}
