package control

import (
	"errors"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/mapper"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
)

// serveRegister handles /machine/register: login with a pre-auth key,
// re-login, node-key rotation, logout, and the status check a restarted
// client makes.
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

	if known {
		c.registered()
		reply(c.authorized(node, node.Expired(time.Now())), "status")
		return
	}

	// Node-key rotation: the old key proves the client is that node.
	if !req.OldNodeKey.IsZero() {
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
	resp := tailcfg.RegisterResponse{MachineAuthorized: true, NodeKeyExpired: expired}
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
