package oidctest

import (
	"net/url"
	"slices"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// authRequest is one authorization request, from the relying party's
// redirect to the code exchange. The storage hands the library copies, so
// the login page can complete the stored one under the storage's lock.
type authRequest struct {
	id            string
	clientID      string
	redirectURI   string
	state         string
	nonce         string
	scopes        []string
	responseType  oidc.ResponseType
	responseMode  oidc.ResponseMode
	prompt        []string
	maxAge        *uint
	loginHint     string
	codeChallenge *oidc.CodeChallenge

	done     bool
	subject  string
	authTime time.Time
}

var _ op.AuthRequest = (*authRequest)(nil)

func (a *authRequest) GetID() string  { return a.id }
func (a *authRequest) GetACR() string { return "" }
func (a *authRequest) GetAMR() []string {
	if a.done {
		return []string{"pwd"}
	}
	return nil
}
func (a *authRequest) GetAudience() []string                 { return []string{a.clientID} }
func (a *authRequest) GetAuthTime() time.Time                { return a.authTime }
func (a *authRequest) GetClientID() string                   { return a.clientID }
func (a *authRequest) GetCodeChallenge() *oidc.CodeChallenge { return a.codeChallenge }
func (a *authRequest) GetNonce() string                      { return a.nonce }
func (a *authRequest) GetRedirectURI() string                { return a.redirectURI }
func (a *authRequest) GetResponseType() oidc.ResponseType    { return a.responseType }
func (a *authRequest) GetResponseMode() oidc.ResponseMode    { return a.responseMode }
func (a *authRequest) GetScopes() []string                   { return a.scopes }
func (a *authRequest) GetState() string                      { return a.state }
func (a *authRequest) GetSubject() string                    { return a.subject }
func (a *authRequest) Done() bool                            { return a.done }

// forcesLogin reports whether the request asks for a fresh login
// (prompt=login, or max_age=0 which the library sets for it).
func (a *authRequest) forcesLogin() bool {
	return slices.Contains(a.prompt, oidc.PromptLogin) || (a.maxAge != nil && *a.maxAge == 0)
}

// promptNone reports whether the request forbids any interaction.
func (a *authRequest) promptNone() bool { return slices.Contains(a.prompt, oidc.PromptNone) }

// opClient is a Client as the library sees it, with the lifetimes in force
// when it was looked up.
type opClient struct {
	c           Client
	issuer      string
	idTTL       time.Duration
	groupsScope string
}

var _ op.HasRedirectGlobs = (*opClient)(nil)

func (c *opClient) GetID() string                    { return c.c.ID }
func (c *opClient) RedirectURIs() []string           { return c.c.RedirectURIs }
func (c *opClient) RedirectURIGlobs() []string       { return c.c.RedirectURIGlobs }
func (c *opClient) PostLogoutRedirectURIs() []string { return nil }
func (c *opClient) PostLogoutRedirectURIGlobs() []string {
	return nil
}

func (c *opClient) ApplicationType() op.ApplicationType {
	if c.c.Public {
		return op.ApplicationTypeNative
	}
	return op.ApplicationTypeWeb
}

func (c *opClient) AuthMethod() oidc.AuthMethod {
	if c.c.Public {
		return oidc.AuthMethodNone
	}
	return oidc.AuthMethodBasic
}

func (c *opClient) ResponseTypes() []oidc.ResponseType {
	return []oidc.ResponseType{oidc.ResponseTypeCode}
}

func (c *opClient) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeCode}
}

func (c *opClient) LoginURL(authReqID string) string {
	return c.issuer + loginPath + "?" + url.Values{authRequestParam: {authReqID}}.Encode()
}

func (c *opClient) AccessTokenType() op.AccessTokenType {
	if c.c.JWTAccessTokens {
		return op.AccessTokenTypeJWT
	}
	return op.AccessTokenTypeBearer
}

func (c *opClient) IDTokenLifetime() time.Duration { return c.idTTL }
func (c *opClient) DevMode() bool                  { return false }

func (c *opClient) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(scopes []string) []string { return scopes }
}

func (c *opClient) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(scopes []string) []string { return scopes }
}

// IsScopeAllowed lets the groups scope through (the library drops scopes
// it does not know unless the client allows them).
func (c *opClient) IsScopeAllowed(scope string) bool {
	return scope == "groups" || (c.groupsScope != "" && scope == c.groupsScope)
}

func (c *opClient) IDTokenUserinfoClaimsAssertion() bool { return !c.c.ClaimsInUserinfoOnly }
func (c *opClient) ClockSkew() time.Duration             { return 0 }
