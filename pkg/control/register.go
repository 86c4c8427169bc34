package control

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/mapper"
	"github.com/hsctl/headscale/pkg/pendingreg"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
)

// serveRegister handles /machine/register: login with a pre-auth key,
// web registration (an AuthURL, then the follow-up that waits for the
// admin or the identity provider), re-login, logout, and the status check
// a restarted client makes.
func (c *noiseConn) serveRegister(w http.ResponseWriter, r *http.Request) {
	s := c.srv
	var req tailcfg.RegisterRequest
	if err := decode(r, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	log := s.log.With("machine", c.machine.ShortString(), "nodekey", req.NodeKey.ShortString())
	reply := func(resp tailcfg.RegisterResponse, outcome string) {
		s.opts.Observer.Registration(outcome)
		writeJSON(w, resp)
	}
	fail := func(msg, outcome string) {
		// Anyone with a Noise connection can be refused at will: at most
		// one line per outcome every few seconds.
		s.refusals.Hit(outcome, "registration refused", "reason", msg, "machine", c.machine.ShortString(), "nodekey", req.NodeKey.ShortString())
		reply(tailcfg.RegisterResponse{Error: msg}, outcome)
	}
	if req.Version < MinCapabilityVersion {
		fail(tooOld(req.Version), "client_too_old")
		return
	}
	st := s.opts.State
	ctx := r.Context()

	// The client's own node, if this node key is known on this machine.
	node, known := st.NodeByNodeKey(req.NodeKey)
	if known && node.MachineKey != c.machine {
		fail("node key belongs to another machine", "rejected")
		return
	}

	// Logout: the client asks for an expiry in the past.
	if !req.Expiry.IsZero() && req.Expiry.Before(time.Now()) {
		if known {
			if !c.admitRegistration(w, r) {
				return
			}
			defer s.registering.Release()
			if err := st.Logout(ctx, node.ID); err != nil && !errors.Is(err, state.ErrNodeNotFound) {
				if c.databaseDown(w, "logout", err) {
					return
				}
				log.Error("logout failed", "node", node.ID, "err", err)
				http.Error(w, "logout failed", http.StatusInternalServerError)
				return
			}
			log.Info("node logged out", "node", node.ID, "ephemeral", node.Ephemeral)
		}
		reply(tailcfg.RegisterResponse{NodeKeyExpired: true}, "logout")
		return
	}

	if req.Auth != nil && req.Auth.AuthKey != "" {
		if !c.admitRegistration(w, r) {
			return
		}
		defer s.registering.Release()
		c.registerWithKey(w, r, &req, reply, fail)
		return
	}

	// The follow-up of a web registration: wait until it is decided. (A
	// follow-up whose node key is registered and valid was decided long
	// ago: the status answer below says so.)
	if req.Followup != "" && s.opts.Pending != nil && !(known && !node.Expired(time.Now())) {
		c.waitWebRegistration(w, r, &req, log, reply, fail)
		return
	}

	if known {
		c.registered()
		reply(c.authorized(node, node.Expired(time.Now())), "status")
		return
	}

	// Node-key rotation: the old key proves the client is that node. With
	// web registration on, a client only sends a new key for a node that
	// has not expired on `tailscale up --force-reauth` (or `tailscale
	// login`): it is asking to log in again, so it goes to the web
	// registration below.
	if !req.OldNodeKey.IsZero() && s.opts.Pending == nil {
		if old, ok := st.NodeByNodeKey(req.OldNodeKey); ok && old.MachineKey == c.machine && !old.Expired(time.Now()) {
			if !c.admitRegistration(w, r) {
				return
			}
			defer s.registering.Release()
			n, err := st.RotateNodeKey(ctx, old.ID, req.NodeKey)
			if err != nil {
				if c.databaseDown(w, "node key rotation", err) {
					return
				}
				log.Error("node key rotation failed", "node", old.ID, "err", err)
				http.Error(w, "rotating node key failed", http.StatusInternalServerError)
				return
			}
			log.Info("node key rotated", "node", n.ID)
			c.registered()
			reply(c.authorized(n, false), "rotated")
			return
		}
	}

	if s.opts.Pending != nil {
		c.beginWebRegistration(w, &req, log, reply, "auth_url")
		return
	}
	fail("this server registers nodes with pre-auth keys: run `tailscale up --login-server=<url> --auth-key=<key>` with a key from `headscale preauthkeys create`", "needs_auth_key")
}

func (c *noiseConn) registerWithKey(w http.ResponseWriter, r *http.Request, req *tailcfg.RegisterRequest, reply func(tailcfg.RegisterResponse, string), fail func(string, string)) {
	st := c.srv.opts.State
	k, err := st.ValidateAuthKey(r.Context(), req.Auth.AuthKey)
	switch {
	case errors.Is(err, state.ErrAuthKeyInvalid):
		fail(err.Error(), "invalid_key")
		return
	case errors.Is(err, state.ErrAuthKeyExpired):
		fail(err.Error(), "expired_key")
		return
	case errors.Is(err, state.ErrAuthKeyUsed):
		fail(err.Error(), "used_key")
		return
	case c.databaseDown(w, "registration", err):
		return
	case err != nil:
		c.srv.log.Error("validating pre-auth key", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	// A tagged key fixes the tags; with an untagged key, advertised tags
	// are checked against the policy's tagOwners for the key's user.
	if req.Hostinfo != nil && len(req.Hostinfo.RequestTags) > 0 && len(k.Tags) > 0 {
		want := slices.Sorted(slices.Values(req.Hostinfo.RequestTags))
		have := slices.Sorted(slices.Values(k.Tags))
		if !slices.Equal(want, have) {
			fail("requested tags ["+strings.Join(want, ", ")+"] are invalid or not permitted for this pre-auth key", "rejected_tags")
			return
		}
	}
	var expiry time.Time
	if !req.Expiry.IsZero() && req.Expiry.After(time.Now()) {
		expiry = req.Expiry
	}
	n, err := st.RegisterWithKey(r.Context(), state.RegisterParams{
		Machine:  c.machine,
		NodeKey:  req.NodeKey,
		Hostinfo: req.Hostinfo,
		Cap:      req.Version,
		Key:      k.PreAuthKey,
		Rehash:   k.Rehash,
		Expiry:   expiry,
	})
	if errors.Is(err, state.ErrAuthKeyUsed) {
		fail(err.Error(), "used_key")
		return
	}
	if errors.Is(err, state.ErrTagNotOwned) || errors.Is(err, state.ErrInvalidName) {
		fail(err.Error(), "rejected_tags")
		return
	}
	if errors.Is(err, state.ErrAmbiguousMachine) || errors.Is(err, state.ErrNodeKeyInUse) {
		fail(err.Error(), "rejected")
		return
	}
	if errors.Is(err, store.ErrStorageFull) {
		c.srv.log.Error("registering node", "machine", c.machine.ShortString(), "err", err)
		http.Error(w, "registration failed: the server's database disk is full; try again later", http.StatusServiceUnavailable)
		return
	}
	if c.databaseDown(w, "registration", err) {
		return
	}
	if err != nil {
		c.srv.log.Error("registering node", "machine", c.machine.ShortString(), "err", err)
		http.Error(w, "registration failed", http.StatusInternalServerError)
		return
	}
	c.registered()
	reply(c.authorized(n, false), "registered")
}

// databaseDown answers 503 with the reason and reports true when err
// means the database is unavailable: nothing was written, and the client
// retries later (tailscaled backs off and tries again by itself). One line
// per few seconds is logged, however many clients try.
func (c *noiseConn) databaseDown(w http.ResponseWriter, what string, err error) bool {
	if err == nil || !store.IsUnavailable(err) {
		return false
	}
	s := c.srv
	msg := what + " failed: " + store.Unavailable(err).Error() + "; nothing was changed, try again later"
	s.refusals.Hit("database_unavailable", "refused while the database is unavailable", "what", what, "machine", c.machine.ShortString(), "err", err)
	s.opts.Observer.Registration("database_unavailable")
	w.Header().Set("Retry-After", "10")
	http.Error(w, msg, http.StatusServiceUnavailable)
	return true
}

// admitRegistration takes a slot among the registrations in progress,
// waiting a little if need be; when there is none it answers 503 (the
// client retries later) and reports false. The caller releases the slot.
func (c *noiseConn) admitRegistration(w http.ResponseWriter, r *http.Request) bool {
	s := c.srv
	if s.registering.Acquire(r.Context()) {
		return true
	}
	s.limits.Hit("registrations", "registration refused: too many in progress, answered 503",
		"machine", c.machine.ShortString(), "max", s.registering.Cap())
	s.opts.Observer.Registration("busy")
	w.Header().Set("Retry-After", "5")
	http.Error(w, "server busy: too many registrations in progress, retry shortly", http.StatusServiceUnavailable)
	return false
}

func (c *noiseConn) authorized(n *state.Node, expired bool) tailcfg.RegisterResponse {
	resp := tailcfg.RegisterResponse{MachineAuthorized: !n.PendingApproval, NodeKeyExpired: expired}
	if n.Tagged() {
		p := mapper.Profile(nil)
		resp.User = tailcfg.User{ID: p.ID, DisplayName: p.DisplayName}
		resp.Login = tailcfg.Login{ID: tailcfg.LoginID(p.ID), LoginName: p.LoginName, DisplayName: p.DisplayName}
		return resp
	}
	if u, ok := c.srv.opts.State.User(n.UserID); ok {
		display := u.DisplayName
		if display == "" {
			display = u.Name
		}
		resp.User = tailcfg.User{ID: tailcfg.UserID(u.ID), DisplayName: display, ProfilePicURL: u.ProfilePicURL, Created: u.CreatedAt}
		resp.Login = tailcfg.Login{ID: tailcfg.LoginID(u.ID), LoginName: u.Name, DisplayName: display, ProfilePicURL: u.ProfilePicURL}
	}
	return resp
}

// AuthURL is the registration page of auth ID id under serverURL
// (server_url): <serverURL>/register/<id>.
func AuthURL(serverURL, id string) string {
	return strings.TrimRight(serverURL, "/") + "/register/" + url.PathEscape(id)
}

// authIDOf returns the auth ID a follow-up URL names (its path's last
// element after /register/), or "" when it names none.
func authIDOf(followup string) string {
	u, err := url.Parse(followup)
	if err != nil {
		return ""
	}
	_, id, ok := strings.Cut(u.Path, "/register/")
	if !ok || !pendingreg.ValidID(id) {
		return ""
	}
	return id
}

// beginWebRegistration opens a pending registration for what the client
// sent and answers with its AuthURL, which tailscaled prints and then
// follows up on.
func (c *noiseConn) beginWebRegistration(w http.ResponseWriter, req *tailcfg.RegisterRequest, log *slog.Logger, reply func(tailcfg.RegisterResponse, string), outcome string) {
	s := c.srv
	reg := pendingreg.Registration{
		Machine:  c.machine,
		NodeKey:  req.NodeKey,
		Hostinfo: req.Hostinfo,
		Cap:      req.Version,
	}
	if !req.Expiry.IsZero() && req.Expiry.After(time.Now()) {
		reg.Expiry = req.Expiry
	}
	reg, err := s.opts.Pending.Begin(reg)
	if errors.Is(err, pendingreg.ErrTooMany) {
		s.limits.Hit("pending_registrations", "web registration refused: too many pending, answered 429",
			"machine", c.machine.ShortString(), "max", pendingreg.MaxPending)
		s.opts.Observer.Registration("busy")
		w.Header().Set("Retry-After", "60")
		http.Error(w, "too many registrations are waiting for approval; try again later", http.StatusTooManyRequests)
		return
	}
	if err != nil {
		log.Error("opening web registration", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	log.Info("web registration waiting for approval", "hostname", reg.Hostname(), "expires", reg.Expires)
	reply(tailcfg.RegisterResponse{AuthURL: AuthURL(s.opts.ServerURL, reg.ID)}, outcome)
}

// waitWebRegistration answers the follow-up request of a web registration
// (req.Followup is the AuthURL given earlier): it waits, without polling,
// until the registration is completed (then answers as registration by
// key does), rejected (the reason, as an error) or expired, or the request
// or the server ends. An expired, forgotten or foreign registration gets a
// new AuthURL, which tailscaled prints and follows up on in turn.
func (c *noiseConn) waitWebRegistration(w http.ResponseWriter, r *http.Request, req *tailcfg.RegisterRequest, log *slog.Logger, reply func(tailcfg.RegisterResponse, string), fail func(string, string)) {
	s := c.srv
	pending := s.opts.Pending
	id := authIDOf(req.Followup)
	reg, ok := pending.Get(id)
	if id == "" || !ok || reg.Machine != c.machine || reg.NodeKey != req.NodeKey {
		c.beginWebRegistration(w, req, log, reply, "auth_url_renewed")
		return
	}
	// The wait ends with the request (the client went away) or the server.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	reg, err := pending.Wait(ctx, id)
	switch {
	case errors.Is(err, pendingreg.ErrNotFound):
		c.beginWebRegistration(w, req, log, reply, "auth_url_renewed")
		return
	case err != nil:
		w.Header().Set("Retry-After", "1")
		http.Error(w, "the registration wait ended before the registration was decided; try again", http.StatusServiceUnavailable)
		return
	}
	switch reg.Status {
	case pendingreg.Completed:
		n, ok := s.opts.State.Node(reg.Node)
		if !ok || n.MachineKey != c.machine || n.NodeKey != req.NodeKey {
			// Deleted or re-keyed since: start over.
			c.beginWebRegistration(w, req, log, reply, "auth_url_renewed")
			return
		}
		log.Info("web registration completed", "node", n.ID, "user", n.UserID)
		c.registered()
		reply(c.authorized(n, n.Expired(time.Now())), "registered_web")
	case pendingreg.Rejected:
		msg := "registration rejected by an administrator"
		if reg.Reason != "" {
			msg += ": " + reg.Reason
		}
		fail(msg, "rejected_web")
	default: // expired
		c.beginWebRegistration(w, req, log, reply, "auth_url_renewed")
	}
}
