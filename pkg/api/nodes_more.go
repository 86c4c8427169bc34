package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"

	"github.com/hsctl/headscale/pkg/sshcheck"
)

func (a *API) approveRoutes(r *http.Request) (any, error) {
	n, err := a.node(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		Routes []string `json:"routes"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	var routes []netip.Prefix
	for _, s := range req.Routes {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, bad("route %q is not a CIDR prefix", s)
		}
		routes = append(routes, p)
	}
	n, err = a.opts.State.SetApprovedRoutes(r.Context(), n.ID, routes)
	if err != nil {
		return nil, err
	}
	return map[string]any{"node": a.nodeOut(n)}, nil
}

// setNodeUser moves a node to another user (older UIs call it; tagged nodes
// are refused).
func (a *API) setNodeUser(r *http.Request) (any, error) {
	n, err := a.node(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		User flexID `json:"user"`
	}
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
	}
	ref := string(req.User)
	if q := r.URL.Query().Get("user"); q != "" {
		ref = q
	}
	if ref == "" {
		return nil, bad("user is required")
	}
	u, err := a.resolveUser(ref)
	if err != nil {
		return nil, err
	}
	n, err = a.opts.State.SetOwner(r.Context(), n.ID, u.ID)
	if err != nil {
		return nil, err
	}
	return map[string]any{"node": a.nodeOut(n)}, nil
}

// registerNode completes a web-login registration in Headscale. This server
// has no interactive login yet, so there is never a pending registration.
func (a *API) registerNode(r *http.Request) (any, error) {
	key := r.URL.Query().Get("key")
	if key == "" {
		return nil, bad("key is required")
	}
	return nil, &Error{Status: http.StatusNotFound, Msg: "no pending registration for this key: this server registers nodes with pre-auth keys only (tailscale up --auth-key)"}
}

// authPending answers auth/register, auth/approve and auth/reject. Approve
// and reject resolve a pending SSH check (the auth ID a checked SSH
// connection shows its user); there is no web login, so register never
// finds a pending authentication.
func (a *API) authPending(r *http.Request) (any, error) {
	var req struct {
		AuthID string `json:"authId"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	id := strings.TrimSpace(req.AuthID)
	if id == "" {
		return nil, bad("authId is required")
	}
	approve, reject := strings.HasSuffix(r.URL.Path, "/approve"), strings.HasSuffix(r.URL.Path, "/reject")
	checks := a.opts.SSHChecks
	if (!approve && !reject) || checks == nil {
		return nil, &Error{Status: http.StatusNotFound, Msg: "no pending authentication " + id + ": this server has no interactive login; only SSH checks wait for approval"}
	}
	var c sshcheck.Check
	var err error
	verb := "approved"
	if approve {
		c, err = checks.Approve(id)
	} else {
		verb = "rejected"
		c, err = checks.Reject(id)
	}
	switch {
	case errors.Is(err, sshcheck.ErrNotFound):
		return nil, &Error{Status: http.StatusNotFound, Msg: fmt.Sprintf("no pending authentication %s: unknown, expired (SSH checks wait %s) or forgotten by a restart", id, checks.Timeout())}
	case errors.Is(err, sshcheck.ErrDecided):
		return nil, &Error{Status: http.StatusConflict, Msg: fmt.Sprintf("authentication %s was already %s", id, c.Verdict)}
	case err != nil:
		return nil, err
	}
	a.log.Info("SSH check "+verb, "auth_id", id, "src", c.Src, "dst", c.Dst, "local_user", c.LocalUser)
	return struct{}{}, nil
}

// backfillIPs gives addresses to nodes that lack one of the configured
// families. Every node here gets both at registration, so there is never
// anything to change.
func (a *API) backfillIPs(r *http.Request) (any, error) {
	if r.URL.Query().Get("confirmed") != "true" {
		return nil, bad("add ?confirmed=true to run the backfill")
	}
	return map[string]any{"changes": []string{}}, nil
}

// debugNode is Headscale's debug call that creates a node waiting for
// interactive registration; there is no such state here.
func (a *API) debugNode(r *http.Request) (any, error) {
	return nil, bad("debug node creation needs interactive registration, which this server does not have; register nodes with a pre-auth key")
}
