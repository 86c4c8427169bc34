package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hsctl/headscale/pkg/oidclogin"
	"github.com/hsctl/headscale/pkg/pendingreg"
	"github.com/hsctl/headscale/pkg/state"
)

// oidcConfirmPath is where the device confirmation form posts (the auth
// ID follows), as in Headscale.
const oidcConfirmPath = "/register/confirm/"

// oidcDiscoverTimeout bounds the look at the provider that start-up makes
// when only_start_if_oidc_is_available is true.
const oidcDiscoverTimeout = 30 * time.Second

// setupOIDC prepares login through the configured identity provider. With
// only_start_if_oidc_is_available it reaches the provider first and fails
// start-up without it; otherwise the provider is first reached in the
// background (discoverOIDC) and at each login until it answers, so
// start-up never waits for it.
func (s *Server) setupOIDC(ctx context.Context) error {
	o := s.cfg.OIDC
	if !o.Enabled() {
		return nil
	}
	secret, err := o.Secret()
	if err != nil {
		return fmt.Errorf("oidc.client_secret_path: %w", err)
	}
	pkce := ""
	if o.PKCE.Enabled {
		pkce = o.PKCE.Method
	}
	c := oidclogin.New(oidclogin.Config{
		Issuer: o.Issuer, ClientID: o.ClientID, ClientSecret: secret,
		RedirectURL: s.cfg.ServerURL + "/oidc/callback",
		Scopes:      o.Scope, ExtraParams: o.ExtraParams, PKCEMethod: pkce,
		AllowedDomains: o.AllowedDomains, AllowedUsers: o.AllowedUsers, AllowedGroups: o.AllowedGroups,
		EmailVerifiedRequired: o.EmailVerifiedRequired,
		Logger:                s.log.With("component", "oidc"),
	})
	if o.OnlyStartIfAvailable {
		dctx, cancel := context.WithTimeout(ctx, oidcDiscoverTimeout)
		err := c.Discover(dctx)
		cancel()
		if err != nil {
			return fmt.Errorf("oidc.issuer: %w (only_start_if_oidc_is_available is true, so the server does not start without its identity provider; set it to false to start anyway)", err)
		}
	}
	if s.cluster.member != nil {
		// Several servers: the callback and the confirmation may reach
		// another server than the one that sent the browser away.
		c.Share(s.store)
	}
	s.oidcClient = c
	s.oidc = oidclogin.NewPages(c, oidcRegistrations{s}, oidcSSHChecks{s}, oidcConfirmPath)
	return nil
}

// discoverOIDC reaches the identity provider in the background when
// start-up did not, and says in the log whether it answered.
func (s *Server) discoverOIDC(ctx context.Context) {
	c := s.oidcClient
	if c == nil || c.Ready() {
		return
	}
	for wait := time.Second; ; wait = min(2*wait, 5*time.Minute) {
		err := c.Discover(ctx)
		if err == nil || ctx.Err() != nil {
			return
		}
		if wait == time.Second {
			s.log.Warn("the identity provider cannot be reached; logins through it fail until it answers (pre-auth keys and admin approval still work)", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// oidcRegistrations adapts the pending registrations to the login pages.
type oidcRegistrations struct{ s *Server }

// Device describes a pending registration for the confirmation page.
func (a oidcRegistrations) Device(id string) (oidclogin.Device, bool) {
	reg, ok := a.s.pending.Get(id)
	if !ok || reg.Status != pendingreg.Pending {
		return oidclogin.Device{}, false
	}
	return oidclogin.Device{Hostname: reg.Hostname(), Machine: reg.Machine.ShortString()}, true
}

// Approve creates or updates the person's user (groups included) and
// registers the node for it.
func (a oidcRegistrations) Approve(ctx context.Context, id string, who oidclogin.Identity) (string, bool, error) {
	u, err := a.s.oidcUser(ctx, who)
	if err != nil {
		return "", false, err
	}
	approval := pendingreg.Approval{User: u.ID, Method: "oidc"}
	if a.s.cfg.OIDC.UseExpiryFromToken {
		approval.Expiry = who.Expiry
	}
	n, err := a.s.pending.Approve(ctx, a.s.state, id, approval)
	if err != nil {
		if errors.Is(err, state.ErrTagNotOwned) {
			return "", false, &oidclogin.Refused{Reason: err.Error()}
		}
		return "", false, err
	}
	a.s.log.Info("node registered through the identity provider", "node", n.ID, "name", n.GivenName, "user", u.ID, "pending_approval", n.PendingApproval)
	return u.Name, n.PendingApproval, nil
}

// oidcUser finds or creates the user of a verified identity, storing
// what the provider says of them now (groups included).
func (s *Server) oidcUser(ctx context.Context, who oidclogin.Identity) (*state.User, error) {
	name := who.Username
	if name == "" {
		name = who.Email
	}
	if name == "" {
		name = who.Subject
	}
	// An address the provider has not verified is not stored (as in
	// Headscale): it could be anyone's.
	email := ""
	if who.EmailVerified {
		email = who.Email
	}
	u, created, err := s.state.UpsertOIDCUser(ctx, state.Identity{
		Provider: "oidc", ProviderID: who.ProviderID(), Name: name,
		DisplayName: who.Name, Email: email, ProfilePicURL: who.Picture,
		Groups: who.Groups, LinkLocalUser: s.cfg.OIDC.MapLegacyUsers,
	})
	switch {
	case errors.Is(err, state.ErrIdentityConflict):
		return nil, &oidclogin.Refused{Reason: "a user named " + name + " already exists on this server and is not linked to your login; ask the administrator"}
	case errors.Is(err, state.ErrInvalidName):
		return nil, &oidclogin.Refused{Reason: "your user name at the identity provider (" + name + ") is not valid here: " + err.Error()}
	case err != nil:
		return nil, fmt.Errorf("storing the user of an OIDC login: %w", err)
	}
	if created {
		s.log.Info("user created at first OIDC login", "user", u.ID, "name", u.Name)
	}
	return u, nil
}

// oidcSSHChecks adapts the SSH checks to the login pages: the owner of
// the source node approves by logging in.
type oidcSSHChecks struct{ s *Server }

// Approve approves check id if who owns its source node.
func (a oidcSSHChecks) Approve(ctx context.Context, id string, who oidclogin.Identity) (string, error) {
	check, ok := a.s.sshChecks.Get(id)
	if !ok {
		return "", errors.New("no such SSH check")
	}
	src, ok := a.s.state.Node(check.Src)
	if !ok {
		return "", errors.New("the source node is gone")
	}
	dst, _ := a.s.state.Node(check.Dst)
	owner, ok := a.s.state.User(src.UserID)
	if !ok || src.Tagged() || owner.Provider != "oidc" || owner.ProviderID != who.ProviderID() {
		return "", &oidclogin.Refused{Reason: "only the owner of " + src.GivenName + " may approve this connection"}
	}
	if _, err := a.s.sshChecks.Approve(id); err != nil {
		return "", fmt.Errorf("approving the SSH check: %w", err)
	}
	what := src.GivenName + " to " + dst.GivenName
	if check.LocalUser != "" {
		what += " as " + check.LocalUser
	}
	a.s.log.Info("SSH check approved by the source node's owner through the identity provider", "node", check.Dst, "src", check.Src, "user", owner.ID)
	return what, nil
}
