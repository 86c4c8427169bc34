package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/state"
)

// The node handlers: /api/v1/node and its actions (expire, rename, tags,
// routes, owner, register, backfill, debug).

func (a *API) nodeOut(n *state.Node) Node {
	var u *state.User
	if n.UserID != 0 {
		u, _ = a.opts.State.User(n.UserID)
	}
	return nodeJSON(n, u)
}

func (a *API) listNodes(r *http.Request) (any, error) {
	filter, err := a.userFilter(r)
	if err != nil {
		return nil, err
	}
	out := []Node{}
	for _, n := range a.opts.State.Nodes() {
		if filter != 0 && n.UserID != filter {
			continue
		}
		out = append(out, a.nodeOut(n))
	}
	return map[string]any{"nodes": out}, nil
}

func (a *API) node(r *http.Request) (*state.Node, error) {
	nid, err := pathID[ids.NodeID](r, "id")
	if err != nil {
		return nil, err
	}
	n, ok := a.opts.State.Node(nid)
	if !ok {
		return nil, &Error{Status: http.StatusNotFound, Msg: fmt.Sprintf("node %d not found", nid)}
	}
	return n, nil
}

func (a *API) getNode(r *http.Request) (any, error) {
	n, err := a.node(r)
	if err != nil {
		return nil, err
	}
	return map[string]any{"node": a.nodeOut(n)}, nil
}

func (a *API) deleteNode(r *http.Request) (any, error) {
	n, err := a.node(r)
	if err != nil {
		return nil, err
	}
	if err := a.opts.State.DeleteNode(r.Context(), n.ID); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (a *API) expireNode(r *http.Request) (any, error) {
	n, err := a.node(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		Expiry        string `json:"expiry"`
		DisableExpiry bool   `json:"disableExpiry"`
	}
	if r.ContentLength != 0 {
		if err := decodeBody(r, &req); err != nil {
			return nil, err
		}
	}
	if v := r.URL.Query().Get("expiry"); v != "" {
		req.Expiry = v
	}
	var at time.Time
	if req.Expiry != "" {
		if at, err = time.Parse(time.RFC3339, req.Expiry); err != nil {
			return nil, bad("expiry must be an RFC 3339 time: %v", err)
		}
	}
	n, err = a.opts.State.ExpireNode(r.Context(), n.ID, at, req.DisableExpiry)
	if err != nil {
		return nil, err
	}
	return map[string]any{"node": a.nodeOut(n)}, nil
}

func (a *API) renameNode(r *http.Request) (any, error) {
	n, err := a.node(r)
	if err != nil {
		return nil, err
	}
	n, err = a.opts.State.RenameNode(r.Context(), n.ID, r.PathValue("name"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"node": a.nodeOut(n)}, nil
}

func (a *API) tagNode(r *http.Request) (any, error) {
	n, err := a.node(r)
	if err != nil {
		return nil, err
	}
	var req struct {
		Tags []string `json:"tags"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	n, err = a.opts.State.SetTags(r.Context(), n.ID, req.Tags)
	if err != nil {
		return nil, err
	}
	return map[string]any{"node": a.nodeOut(n)}, nil
}

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
	return nil, &Error{Status: http.StatusNotFound, Msg: "no pending registration " + key + ": " + noWebLogin}
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

// backfillIPs gives every node an address of each configured family and
// removes addresses of families no longer configured (a node registered
// before a prefix was added or removed), and lists the changes.
func (a *API) backfillIPs(r *http.Request) (any, error) {
	if r.URL.Query().Get("confirmed") != "true" {
		return nil, bad("add ?confirmed=true to run the backfill")
	}
	changes, err := a.opts.State.BackfillIPs(r.Context())
	if err != nil {
		return nil, err
	}
	if changes == nil {
		changes = []string{}
	}
	return map[string]any{"changes": changes}, nil
}

// debugNode is Headscale's debug call that creates a node waiting for
// interactive registration; there is no such state here.
func (a *API) debugNode(r *http.Request) (any, error) {
	return nil, bad("debug node creation needs a pending web-login registration: " + noWebLogin)
}

// noWebLogin explains why register and debug node never find a pending
// registration, and what to do instead.
const noWebLogin = "this server has no web login yet, so nodes register with pre-auth keys only (headscale preauthkeys create --user USER, then tailscale up --auth-key KEY)"
