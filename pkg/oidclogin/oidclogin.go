// Package oidclogin logs a person in through an OpenID Connect provider
// for an interactive registration. Start sends the browser to the
// provider with state, nonce and (when configured) PKCE, bound to the
// browser by a cookie; Finish checks all three on the callback, exchanges
// the code, verifies the ID token, merges the userinfo claims and applies
// the allow lists, and returns the verified Identity. What to do with it
// (create the user, ask the person to confirm the device, register the
// node) is the caller's.
package oidclogin

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/hsctl/headscale/pkg/store"
)

// Config configures a Client.
type Config struct {
	// Issuer is the provider's issuer URL.
	Issuer string
	// ClientID and ClientSecret identify this server to the provider.
	ClientID, ClientSecret string
	// RedirectURL is this server's callback, <server_url>/oidc/callback.
	RedirectURL string
	// Scopes are asked for; openid must be among them.
	Scopes []string
	// ExtraParams are added to the authorization URL.
	ExtraParams map[string]string
	// PKCEMethod is "S256" or "plain" to send a code challenge, "" for
	// none.
	PKCEMethod string
	// AllowedDomains, AllowedUsers and AllowedGroups restrict who may log
	// in (lower-case email domains, lower-case addresses, group names);
	// each list that is not empty must be satisfied.
	AllowedDomains, AllowedUsers, AllowedGroups []string
	// EmailVerifiedRequired refuses an unverified address where
	// AllowedDomains or AllowedUsers judge by it.
	EmailVerifiedRequired bool
	// HTTPClient makes the requests to the provider; nil uses
	// http.DefaultClient (the system resolver).
	HTTPClient *http.Client
	// Logger receives diagnostics; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
}

// Identity is who the provider says logged in, from the verified ID token
// merged with the userinfo endpoint's claims.
type Identity struct {
	// Issuer and Subject identify the person at the provider: the key a
	// user is found by at the next login.
	Issuer, Subject string
	// Email and EmailVerified are the email claims.
	Email         string
	EmailVerified bool
	// Username is preferred_username; Name the display name; Picture a
	// URL of the profile picture.
	Username, Name, Picture string
	// Groups is the groups claim, as the provider sends it.
	Groups []string
	// Expiry is the ID token's expiry.
	Expiry time.Time
}

// Refused is a login the provider vouched for but the allow lists (or a
// missing verified email) turn away. Reason is for the person's browser.
type Refused struct{ Reason string }

// Error returns the reason.
func (e *Refused) Error() string { return "login refused: " + e.Reason }

// BadRequest is a callback this server cannot accept (no or unknown
// state, a cookie that does not match, an error from the provider).
// Reason is for the person's browser.
type BadRequest struct{ Reason string }

// Error returns the reason.
func (e *BadRequest) Error() string { return "bad login callback: " + e.Reason }

// ErrUnavailable is returned while the provider's configuration could not
// be fetched.
var ErrUnavailable = errors.New("the identity provider cannot be reached")

// Limits on logins in progress.
const (
	// FlowTimeout is how long a login may take between Start and Finish.
	FlowTimeout = 15 * time.Minute
	// maxFlows bounds the logins in progress held in memory.
	maxFlows = 10_000
)

// Client logs people in through one provider. Create it with New.
type Client struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu       sync.Mutex
	provider *oidc.Provider // nil until discovered
	verifier *oidc.IDTokenVerifier
	flows    map[string]*flow // by state
	// shared, when set (Share), holds the flows instead of flows.
	shared *store.Store
}

// flow is a login in progress.
type flow struct {
	key      string // the caller's (an auth ID)
	nonce    string
	verifier string // PKCE code verifier; "" without PKCE
	started  time.Time
}

// New returns a Client for cfg. It does not reach the provider; Discover
// does, and Start and Finish try again while it has not succeeded.
func New(cfg Config) *Client {
	c := &Client{cfg: cfg, log: cfg.Logger, now: cfg.Now, flows: map[string]*flow{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.cfg.HTTPClient == nil {
		c.cfg.HTTPClient = http.DefaultClient
	}
	return c
}

// Discover fetches the provider's configuration (its
// /.well-known/openid-configuration) if it has not been fetched yet.
func (c *Client) Discover(ctx context.Context) error {
	_, err := c.discovered(ctx)
	return err
}

// Ready reports whether the provider's configuration has been fetched.
func (c *Client) Ready() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.provider != nil
}

func (c *Client) discovered(ctx context.Context) (*oidc.Provider, error) {
	c.mu.Lock()
	p := c.provider
	c.mu.Unlock()
	if p != nil {
		return p, nil
	}
	p, err := oidc.NewProvider(c.clientContext(ctx), c.cfg.Issuer)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrUnavailable, c.cfg.Issuer, err)
	}
	// Keys are fetched, and fetched again when they rotate, with this
	// server's client, not with the context of the request that came
	// first.
	v := p.VerifierContext(c.clientContext(context.Background()), &oidc.Config{ClientID: c.cfg.ClientID, Now: c.now})
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.provider == nil {
		c.provider, c.verifier = p, v
		c.log.Info("identity provider discovered", "issuer", c.cfg.Issuer)
	}
	return c.provider, nil
}

func (c *Client) clientContext(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, c.cfg.HTTPClient)
}

func (c *Client) oauth(p *oidc.Provider) *oauth2.Config {
	return &oauth2.Config{
		ClientID:     c.cfg.ClientID,
		ClientSecret: c.cfg.ClientSecret,
		RedirectURL:  c.cfg.RedirectURL,
		Endpoint:     p.Endpoint(),
		Scopes:       c.cfg.Scopes,
	}
}

// cookiePrefix starts the name of the cookie that binds a browser to a
// login; the rest of the name is derived from the state, so logins in
// several tabs do not overwrite each other's cookie.
const cookiePrefix = "hs_oidc_"

// Start begins a login for key (the caller's handle, such as an auth ID)
// and returns the provider's URL to send the browser to. It sets on w the
// cookie Finish checks.
func (c *Client) Start(ctx context.Context, w http.ResponseWriter, key string) (string, error) {
	p, err := c.discovered(ctx)
	if err != nil {
		return "", err
	}
	f := &flow{key: key, nonce: randomString(), started: c.now()}
	state := randomString()
	opts := []oauth2.AuthCodeOption{oidc.Nonce(f.nonce)}
	switch c.cfg.PKCEMethod {
	case "S256":
		f.verifier = oauth2.GenerateVerifier()
		opts = append(opts, oauth2.S256ChallengeOption(f.verifier))
	case "plain":
		f.verifier = oauth2.GenerateVerifier()
		opts = append(opts, oauth2.SetAuthURLParam("code_challenge_method", "plain"), oauth2.SetAuthURLParam("code_challenge", f.verifier))
	}
	for _, k := range slices.Sorted(maps.Keys(c.cfg.ExtraParams)) {
		opts = append(opts, oauth2.SetAuthURLParam(k, c.cfg.ExtraParams[k]))
	}
	if err := c.addFlow(ctx, state, f); err != nil {
		return "", err
	}
	http.SetCookie(w, &http.Cookie{
		Name:     cookieName(state),
		Value:    state,
		Path:     callbackPath(c.cfg.RedirectURL),
		MaxAge:   int(FlowTimeout / time.Second),
		HttpOnly: true,
		Secure:   strings.HasPrefix(c.cfg.RedirectURL, "https://"),
		// The provider sends the browser back with a top-level GET:
		// Lax lets the cookie come along, and no other site's request.
		SameSite: http.SameSiteLaxMode,
	})
	return c.oauth(p).AuthCodeURL(state, opts...), nil
}

// Finish handles the provider's callback (r carries code and state, or an
// error) for a login Start began. It returns the key given to Start and
// the person's verified identity. Errors: *BadRequest for a callback that
// cannot be accepted, *Refused for a person the allow lists turn away,
// ErrUnavailable or another error when the provider failed.
func (c *Client) Finish(ctx context.Context, w http.ResponseWriter, r *http.Request) (string, Identity, error) {
	q := r.URL.Query()
	state := q.Get("state")
	if e := q.Get("error"); e != "" {
		c.takeFlow(ctx, state) // whatever the outcome, this login is over
		msg := e
		if d := q.Get("error_description"); d != "" {
			msg += ": " + d
		}
		return "", Identity{}, &BadRequest{Reason: "the identity provider answered with an error (" + truncate(msg, 200) + ")"}
	}
	if state == "" || q.Get("code") == "" {
		return "", Identity{}, &BadRequest{Reason: "the callback has no state or no code; start the login again from the link your client printed"}
	}
	ck, err := r.Cookie(cookieName(state))
	if err != nil || ck.Value != state {
		return "", Identity{}, &BadRequest{Reason: "this browser did not start this login (its cookie is missing or does not match); open the link your client printed in this browser"}
	}
	f, err := c.takeFlow(ctx, state)
	if err != nil {
		return "", Identity{}, err
	}
	if f == nil {
		return "", Identity{}, &BadRequest{Reason: "this login is unknown or has expired; start again from the link your client printed"}
	}
	http.SetCookie(w, &http.Cookie{Name: cookieName(state), Path: callbackPath(c.cfg.RedirectURL), MaxAge: -1, HttpOnly: true})
	p, err := c.discovered(ctx)
	if err != nil {
		return "", Identity{}, err
	}
	cctx := c.clientContext(ctx)
	var opts []oauth2.AuthCodeOption
	if f.verifier != "" {
		opts = append(opts, oauth2.VerifierOption(f.verifier))
	}
	tok, err := c.oauth(p).Exchange(cctx, q.Get("code"), opts...)
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500 {
			return "", Identity{}, &BadRequest{Reason: "the identity provider did not accept the login code (" + truncate(re.ErrorCode+" "+re.ErrorDescription, 200) + "); start again"}
		}
		return "", Identity{}, fmt.Errorf("exchanging the code at %s: %w", c.cfg.Issuer, err)
	}
	raw, _ := tok.Extra("id_token").(string)
	if raw == "" {
		return "", Identity{}, fmt.Errorf("the provider %s sent no ID token (is openid among the scopes?)", c.cfg.Issuer)
	}
	c.mu.Lock()
	verifier := c.verifier
	c.mu.Unlock()
	idt, err := verifier.Verify(cctx, raw)
	if err != nil {
		return "", Identity{}, &BadRequest{Reason: "the identity provider's ID token did not verify: " + truncate(err.Error(), 200)}
	}
	if idt.Nonce != f.nonce {
		return "", Identity{}, &BadRequest{Reason: "the ID token's nonce does not match this login"}
	}
	var cl claims
	if err := idt.Claims(&cl); err != nil {
		return "", Identity{}, fmt.Errorf("reading the ID token's claims: %w", err)
	}
	if p.UserInfoEndpoint() != "" {
		ui, err := p.UserInfo(cctx, oauth2.StaticTokenSource(tok))
		switch {
		case err != nil:
			c.log.Warn("the identity provider's userinfo failed; using the ID token's claims alone", "issuer", c.cfg.Issuer, "err", err)
		case ui.Subject != idt.Subject:
			return "", Identity{}, &BadRequest{Reason: "the identity provider's userinfo is for another subject"}
		default:
			var more claims
			if err := ui.Claims(&more); err != nil {
				c.log.Warn("the identity provider's userinfo claims are unreadable; using the ID token's", "issuer", c.cfg.Issuer, "err", err)
			} else {
				cl.merge(more)
			}
		}
	}
	id := Identity{
		Issuer: idt.Issuer, Subject: idt.Subject,
		Email: cl.Email, EmailVerified: bool(cl.EmailVerified),
		Username: cl.PreferredUsername, Name: cl.Name, Picture: cl.Picture,
		Groups: []string(cl.Groups), Expiry: idt.Expiry,
	}
	if err := c.allowed(id); err != nil {
		return "", Identity{}, err
	}
	return f.key, id, nil
}

// allowed applies the allow lists to id.
func (c *Client) allowed(id Identity) error {
	email := strings.ToLower(id.Email)
	byEmail := len(c.cfg.AllowedDomains) > 0 || len(c.cfg.AllowedUsers) > 0
	if byEmail && email == "" {
		return &Refused{Reason: "the identity provider sent no email address, and this server admits people by their address"}
	}
	if byEmail && c.cfg.EmailVerifiedRequired && !id.EmailVerified {
		return &Refused{Reason: "your email address " + id.Email + " is not verified at the identity provider"}
	}
	if len(c.cfg.AllowedDomains) > 0 {
		_, domain, _ := strings.Cut(email, "@")
		if !slices.Contains(c.cfg.AllowedDomains, domain) {
			return &Refused{Reason: "the domain of " + id.Email + " is not allowed on this server"}
		}
	}
	if len(c.cfg.AllowedUsers) > 0 && !slices.Contains(c.cfg.AllowedUsers, email) {
		return &Refused{Reason: id.Email + " is not allowed on this server"}
	}
	if len(c.cfg.AllowedGroups) > 0 && !slices.ContainsFunc(id.Groups, func(g string) bool { return slices.Contains(c.cfg.AllowedGroups, g) }) {
		return &Refused{Reason: "you are in none of the groups allowed on this server"}
	}
	return nil
}

func (c *Client) addFlow(ctx context.Context, state string, f *flow) error {
	if c.shared != nil {
		return c.addSharedFlow(ctx, state, f)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for s, old := range c.flows {
		if now.Sub(old.started) > FlowTimeout {
			delete(c.flows, s)
		}
	}
	if len(c.flows) >= maxFlows {
		return fmt.Errorf("too many logins in progress (%d); try again in a few minutes", len(c.flows))
	}
	c.flows[state] = f
	return nil
}

// takeFlow removes and returns the login for state, nil if it is unknown
// or expired: a state is good for one callback.
func (c *Client) takeFlow(ctx context.Context, state string) (*flow, error) {
	if c.shared != nil {
		return c.takeSharedFlow(ctx, state)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.flows[state]
	delete(c.flows, state)
	if f == nil || c.now().Sub(f.started) > FlowTimeout {
		return nil, nil
	}
	return f, nil
}

// cookieName is the cookie for the login with state: a short hash of the
// state, so it is a valid cookie name whatever the state holds.
func cookieName(state string) string {
	h := sha256.Sum256([]byte(state))
	return cookiePrefix + base64.RawURLEncoding.EncodeToString(h[:6])
}

// callbackPath is the path of the redirect URL, which the cookie is
// limited to ("/" when it cannot be parsed).
func callbackPath(redirect string) string {
	rest, ok := strings.CutPrefix(redirect, "https://")
	if !ok {
		rest, ok = strings.CutPrefix(redirect, "http://")
	}
	if !ok {
		return "/"
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		p := rest[i:]
		if j := strings.IndexAny(p, "?#"); j >= 0 {
			p = p[:j]
		}
		return p
	}
	return "/"
}

// randomString returns 32 random bytes, base64url-encoded.
func randomString() string {
	return base64.RawURLEncoding.EncodeToString(randomBytes(32))
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand's documented behaviour)
	return b
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// ProviderID is the person's identifier as Headscale stores it with a
// user: the issuer URL joined with the subject as a path (a plain join
// for an issuer that is not a URL), with doubled slashes removed. Users
// imported from Headscale are found again by it.
func (id Identity) ProviderID() string {
	iss, sub := strings.TrimSpace(id.Issuer), strings.TrimSpace(id.Subject)
	switch {
	case iss == "" && sub == "":
		return ""
	case iss == "":
		return cleanSlashes(sub)
	case sub == "":
		return cleanSlashes(iss)
	}
	joined := ""
	if u, err := url.Parse(iss); err == nil && u.Scheme != "" {
		if j, err := url.JoinPath(iss, sub); err == nil {
			joined = j
		}
	}
	if joined == "" {
		joined = strings.TrimSuffix(iss, "/") + "/" + strings.TrimPrefix(sub, "/")
	}
	return cleanSlashes(joined)
}

// cleanSlashes collapses runs of slashes, except the two after a scheme.
func cleanSlashes(s string) string {
	prefix := ""
	if i := strings.Index(s, "://"); i >= 0 {
		prefix, s = s[:i+3], s[i+3:]
	}
	for strings.Contains(s, "//") {
		s = strings.ReplaceAll(s, "//", "/")
	}
	return prefix + s
}
