package oidctest

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

const defaultLifetime = time.Hour

// storage is the op.Storage the library asks everything it does not keep
// itself: clients, users, auth requests, codes, access tokens and keys.
// All in memory, under one mutex.
type storage struct {
	issuer      string
	key         *rsa.PrivateKey // set once by newProvider, before serving
	keyID       string
	groupsScope string
	sso         bool

	mu        sync.Mutex
	clients   map[string]Client
	users     map[string]*User // by username
	authReqs  map[string]*authRequest
	codes     map[string]string // code -> auth request ID
	tokens    map[string]*accessToken
	sessions  map[string]string // SSO session ID -> subject
	logins    map[string]int    // username -> completed logins
	idTTL     time.Duration
	accessTTL time.Duration
}

type accessToken struct {
	id       string
	clientID string
	subject  string
	audience []string
	scopes   []string
	expires  time.Time
}

func newStorage(issuer string, opts Options) *storage {
	s := &storage{
		issuer:      issuer,
		keyID:       randomID(),
		groupsScope: opts.GroupsScope,
		sso:         opts.SSO,
		clients:     map[string]Client{},
		users:       map[string]*User{},
		authReqs:    map[string]*authRequest{},
		codes:       map[string]string{},
		tokens:      map[string]*accessToken{},
		sessions:    map[string]string{},
		logins:      map[string]int{},
		idTTL:       defaultLifetime,
		accessTTL:   defaultLifetime,
	}
	s.setLifetimes(opts.IDTokenLifetime, opts.AccessTokenLifetime)
	return s
}

var (
	_ op.Storage                   = (*storage)(nil)
	_ op.CanSetUserinfoFromRequest = (*storage)(nil)
)

// --- configuration, called by Provider's methods ---

func (s *storage) addClient(c Client) error {
	if c.ID == "" {
		return errors.New("oidctest: a client needs an ID")
	}
	if !c.Public && c.Secret == "" {
		return fmt.Errorf("oidctest: client %q needs a secret (or Public)", c.ID)
	}
	if len(c.RedirectURIs) == 0 && len(c.RedirectURIGlobs) == 0 {
		return fmt.Errorf("oidctest: client %q needs a redirect URI", c.ID)
	}
	c.RedirectURIs = slices.Clone(c.RedirectURIs)
	c.RedirectURIGlobs = slices.Clone(c.RedirectURIGlobs)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clients[c.ID] = c
	return nil
}

func (s *storage) addUser(u User) error {
	if u.Username == "" {
		return errors.New("oidctest: a user needs a username")
	}
	u = cloneUser(u)
	if u.Subject == "" {
		u.Subject = "sub-" + u.Username
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, other := range s.users {
		if name != u.Username && other.Subject == u.Subject {
			return fmt.Errorf("oidctest: users %q and %q would share the subject %q", name, u.Username, u.Subject)
		}
	}
	s.users[u.Username] = &u
	return nil
}

func (s *storage) updateUser(username string, change func(*User)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[username]
	if !ok {
		return fmt.Errorf("oidctest: no user %q", username)
	}
	changed := cloneUser(*u)
	change(&changed)
	if changed.Username != username {
		return fmt.Errorf("oidctest: a user's username cannot change (%q to %q); add a new user", username, changed.Username)
	}
	if changed.Subject == "" {
		changed.Subject = "sub-" + username
	}
	*u = changed
	return nil
}

func (s *storage) user(username string) (User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[username]
	if !ok {
		return User{}, false
	}
	return cloneUser(*u), true
}

func cloneUser(u User) User {
	u.Groups = slices.Clone(u.Groups)
	u.ExtraClaims = maps.Clone(u.ExtraClaims)
	return u
}

func (s *storage) setLifetimes(idToken, accessToken time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if idToken > 0 {
		s.idTTL = idToken
	}
	if accessToken > 0 {
		s.accessTTL = accessToken
	}
}

func (s *storage) loginCount(username string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logins[username]
}

// userBySubjectLocked finds a user by sub; s.mu is held.
func (s *storage) userBySubjectLocked(subject string) *User {
	for _, u := range s.users {
		if u.Subject == subject {
			return u
		}
	}
	return nil
}

// --- the login page's side ---

// errBadCredentials is the one answer to an unknown user or a wrong
// password, so the form does not tell which.
var errBadCredentials = errors.New("invalid username or password")

// checkPassword completes the auth request id for username if the password
// is right, and returns the user's subject.
func (s *storage) checkPassword(id, username, password string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	req, ok := s.authReqs[id]
	if !ok {
		return "", errUnknownAuthRequest
	}
	if req.done {
		return "", errAuthRequestDone
	}
	u, ok := s.users[username]
	if !ok || u.Password != password {
		return "", errBadCredentials
	}
	s.completeLocked(req, u)
	return u.Subject, nil
}

// completeBySession completes the auth request id for the subject of an
// SSO session; ok is false if there is no such session or user.
func (s *storage) completeBySession(id, sessionID string) (ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	req, found := s.authReqs[id]
	if !found {
		return false, errUnknownAuthRequest
	}
	if req.done {
		return false, errAuthRequestDone
	}
	subject, found := s.sessions[sessionID]
	if !found {
		return false, nil
	}
	u := s.userBySubjectLocked(subject)
	if u == nil {
		delete(s.sessions, sessionID)
		return false, nil
	}
	s.completeLocked(req, u)
	return true, nil
}

func (s *storage) completeLocked(req *authRequest, u *User) {
	req.done = true
	req.subject = u.Subject
	req.authTime = time.Now().UTC().Truncate(time.Second)
	s.logins[u.Username]++
}

func (s *storage) newSession(subject string) string {
	id := randomID()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sessions[id] = subject
	return id
}

// authRequestSnapshot returns a copy of an auth request for the login page.
func (s *storage) authRequestSnapshot(id string) (authRequest, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	req, ok := s.authReqs[id]
	if !ok {
		return authRequest{}, false
	}
	return *req, true
}

var (
	errUnknownAuthRequest = errors.New("unknown or finished login request: start the login again from the application")
	errAuthRequestDone    = errors.New("this login request is already complete")
)

// --- op.AuthStorage ---

// CreateAuthRequest stores a validated authorization request.
func (s *storage) CreateAuthRequest(_ context.Context, in *oidc.AuthRequest, _ string) (op.AuthRequest, error) {
	req := &authRequest{
		id:           randomID(),
		clientID:     in.ClientID,
		redirectURI:  in.RedirectURI,
		state:        in.State,
		nonce:        in.Nonce,
		scopes:       slices.Clone([]string(in.Scopes)),
		responseType: in.ResponseType,
		responseMode: in.ResponseMode,
		prompt:       slices.Clone([]string(in.Prompt)),
		maxAge:       in.MaxAge,
		loginHint:    in.LoginHint,
	}
	if in.CodeChallenge != "" {
		req.codeChallenge = &oidc.CodeChallenge{Challenge: in.CodeChallenge, Method: in.CodeChallengeMethod}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.authReqs[req.id] = req
	c := *req
	return &c, nil
}

// AuthRequestByID returns a copy of the auth request id.
func (s *storage) AuthRequestByID(_ context.Context, id string) (op.AuthRequest, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	req, ok := s.authReqs[id]
	if !ok {
		return nil, errUnknownAuthRequest
	}
	c := *req
	return &c, nil
}

// AuthRequestByCode returns the auth request a code was issued for.
func (s *storage) AuthRequestByCode(ctx context.Context, code string) (op.AuthRequest, error) {
	s.mu.Lock()
	id, ok := s.codes[code]
	s.mu.Unlock()
	if !ok {
		return nil, errors.New("unknown or used authorization code")
	}
	return s.AuthRequestByID(ctx, id)
}

// SaveAuthCode records the code issued for the auth request id.
func (s *storage) SaveAuthCode(_ context.Context, id, code string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.authReqs[id]; !ok {
		return errUnknownAuthRequest
	}
	s.codes[code] = id
	return nil
}

// DeleteAuthRequest forgets an auth request and its code (the library
// calls it once the code is exchanged, so a code works once).
func (s *storage) DeleteAuthRequest(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.authReqs, id)
	for code, reqID := range s.codes {
		if reqID == id {
			delete(s.codes, code)
		}
	}
	return nil
}

// CreateAccessToken stores an access token for the request and returns
// its ID and expiry.
func (s *storage) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	var clientID string
	switch r := req.(type) {
	case *authRequest:
		clientID = r.clientID
	case interface{ GetClientID() string }:
		clientID = r.GetClientID()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t := &accessToken{
		id:       randomID(),
		clientID: clientID,
		subject:  req.GetSubject(),
		audience: slices.Clone(req.GetAudience()),
		scopes:   slices.Clone(req.GetScopes()),
		expires:  time.Now().Add(s.accessTTL),
	}
	s.tokens[t.id] = t
	return t.id, t.expires, nil
}

var errNoRefresh = errors.New("oidctest issues no refresh tokens")

// CreateAccessAndRefreshTokens is never reached: no client is granted
// refresh_token.
func (s *storage) CreateAccessAndRefreshTokens(context.Context, op.TokenRequest, string) (string, string, time.Time, error) {
	return "", "", time.Time{}, errNoRefresh
}

// TokenRequestByRefreshToken refuses every refresh token.
func (s *storage) TokenRequestByRefreshToken(context.Context, string) (op.RefreshTokenRequest, error) {
	return nil, op.ErrInvalidRefreshToken
}

// TerminateSession ends a user's tokens for a client and their SSO
// sessions (the end_session endpoint).
func (s *storage) TerminateSession(_ context.Context, userID, clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, t := range s.tokens {
		if t.subject == userID && t.clientID == clientID {
			delete(s.tokens, id)
		}
	}
	for id, sub := range s.sessions {
		if sub == userID {
			delete(s.sessions, id)
		}
	}
	return nil
}

// RevokeToken revokes an access token issued to clientID.
func (s *storage) RevokeToken(_ context.Context, tokenOrID, _, clientID string) *oidc.Error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[tokenOrID]
	if !ok {
		return nil
	}
	if t.clientID != clientID {
		return oidc.ErrInvalidClient().WithDescription("token was not issued to this client")
	}
	delete(s.tokens, tokenOrID)
	return nil
}

// GetRefreshTokenInfo knows no refresh tokens.
func (s *storage) GetRefreshTokenInfo(context.Context, string, string) (string, string, error) {
	return "", "", op.ErrInvalidRefreshToken
}

// SigningKey is the provider's RSA key (RS256), the algorithm every
// relying party supports.
func (s *storage) SigningKey(context.Context) (op.SigningKey, error) {
	return signingKey{id: s.keyID, key: s.key}, nil
}

// SignatureAlgorithms lists RS256.
func (s *storage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

// KeySet is the public half of the signing key (the JWKS endpoint).
func (s *storage) KeySet(context.Context) ([]op.Key, error) {
	return []op.Key{publicKey{id: s.keyID, key: &s.key.PublicKey}}, nil
}

// --- op.OPStorage ---

// GetClientByClientID returns a registered client.
func (s *storage) GetClientByClientID(_ context.Context, clientID string) (op.Client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[clientID]
	if !ok {
		return nil, fmt.Errorf("unknown client %q", clientID)
	}
	return &opClient{c: c, issuer: s.issuer, idTTL: s.idTTL, groupsScope: s.groupsScope}, nil
}

// AuthorizeClientIDSecret checks a confidential client's secret.
func (s *storage) AuthorizeClientIDSecret(_ context.Context, clientID, secret string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[clientID]
	if !ok || c.Public || c.Secret != secret {
		return errors.New("unknown client or wrong secret")
	}
	return nil
}

// SetUserinfoFromScopes is left empty, as the library asks; claims are set
// by SetUserinfoFromRequest.
func (s *storage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}

// SetUserinfoFromRequest sets the ID token's claims.
func (s *storage) SetUserinfoFromRequest(_ context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.setUserinfoLocked(info, req.GetSubject(), scopes)
}

// SetUserinfoFromToken sets the userinfo endpoint's answer for an access
// token, refusing an expired or revoked one.
func (s *storage) SetUserinfoFromToken(_ context.Context, info *oidc.UserInfo, tokenID, _, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[tokenID]
	if !ok {
		return errors.New("access token unknown or revoked")
	}
	if time.Now().After(t.expires) {
		return errors.New("access token expired")
	}
	return s.setUserinfoLocked(info, t.subject, t.scopes)
}

// SetIntrospectionFromToken answers token introspection for a token whose
// audience includes the asking client.
func (s *storage) SetIntrospectionFromToken(_ context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.tokens[tokenID]
	if !ok || time.Now().After(t.expires) || !slices.Contains(t.audience, clientID) {
		return errors.New("token inactive or not for this client")
	}
	info := new(oidc.UserInfo)
	if err := s.setUserinfoLocked(info, subject, t.scopes); err != nil {
		return err
	}
	resp.SetUserInfo(info)
	resp.Scope = t.scopes
	resp.ClientID = t.clientID
	resp.Expiration = oidc.FromTime(t.expires)
	return nil
}

// GetPrivateClaimsFromScopes adds nothing to JWT access tokens beyond the
// registered claims.
func (s *storage) GetPrivateClaimsFromScopes(context.Context, string, string, []string) (map[string]any, error) {
	return nil, nil
}

// GetKeyByIDAndClientID: no client authenticates with keys.
func (s *storage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errors.New("oidctest has no client keys")
}

// ValidateJWTProfileScopes: the JWT profile grant is not offered.
func (s *storage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errors.New("oidctest does not offer the JWT profile grant")
}

// Health reports the storage healthy.
func (s *storage) Health(context.Context) error { return nil }

// setUserinfoLocked fills info with the claims of subject that scopes
// allow; s.mu is held.
func (s *storage) setUserinfoLocked(info *oidc.UserInfo, subject string, scopes []string) error {
	u := s.userBySubjectLocked(subject)
	if u == nil {
		return fmt.Errorf("no user with subject %q", subject)
	}
	info.Subject = u.Subject
	if slices.Contains(scopes, oidc.ScopeProfile) {
		info.Name = u.Name
		info.Picture = u.Picture
		if !u.NoPreferredUsername {
			info.PreferredUsername = u.PreferredUsername
			if info.PreferredUsername == "" {
				info.PreferredUsername = u.Username
			}
		}
	}
	if slices.Contains(scopes, oidc.ScopeEmail) && u.Email != "" {
		info.Email = u.Email
		info.EmailVerified = oidc.Bool(u.EmailVerified)
		if !u.EmailVerified {
			// The library's struct omits a false email_verified; real
			// providers send it.
			info.AppendClaims("email_verified", false)
		}
	}
	if len(u.Groups) > 0 && (s.groupsScope == "" || slices.Contains(scopes, s.groupsScope)) {
		info.AppendClaims("groups", slices.Clone(u.Groups))
	}
	for k, v := range u.ExtraClaims {
		info.AppendClaims(k, v)
	}
	return nil
}

// --- keys ---

type signingKey struct {
	id  string
	key *rsa.PrivateKey
}

func (k signingKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k signingKey) Key() any                                    { return k.key }
func (k signingKey) ID() string                                  { return k.id }

type publicKey struct {
	id  string
	key *rsa.PublicKey
}

func (k publicKey) ID() string                         { return k.id }
func (k publicKey) Algorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k publicKey) Use() string                        { return "sig" }
func (k publicKey) Key() any                           { return k.key }
