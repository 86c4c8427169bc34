package api

import (
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/pendingreg"
	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/state"
)

// The node handlers: /api/v1/node and its actions (expire, rename, tags,
// routes, owner, approval, register, backfill, debug).

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
	if a.opts.State.RequireApproval() {
		// Device approval is on (this server's extension): said only
		// then, so the list is Headscale's shape otherwise.
		return map[string]any{"nodes": out, "requireApproval": true}, nil
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

// approveNode approves a node waiting for device approval.
func (a *API) approveNode(r *http.Request) (any, error) {
	n, err := a.node(r)
	if err != nil {
		return nil, err
	}
	n, err = a.opts.State.ApproveNode(r.Context(), n.ID)
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

// registerNode is Headscale's POST /api/v1/node/register?user=&key=
// (`headscale nodes register`): it completes the web registration whose
// auth ID is key for user (a name or an ID).
func (a *API) registerNode(r *http.Request) (any, error) {
	q := r.URL.Query()
	return a.completeRegistration(r, strings.TrimSpace(q.Get("key")), q.Get("user"), "key")
}

// completeRegistration registers the node of pending web registration id
// for the user ref names and answers {"node": ...}.
func (a *API) completeRegistration(r *http.Request, id, ref, idField string) (any, error) {
	if id == "" {
		return nil, bad("%s is required: the auth ID of the registration (the end of the URL `tailscale up` printed)", idField)
	}
	if ref == "" {
		return nil, bad("user is required: the user the node will belong to")
	}
	if a.opts.Pending == nil {
		return nil, &Error{Status: http.StatusNotFound, Msg: "no pending registration " + id + ": " + noWebLogin}
	}
	if err := a.pendingID(id); err != nil {
		return nil, err
	}
	u, err := a.resolveUser(ref)
	if err != nil {
		return nil, err
	}
	n, err := a.opts.Pending.Approve(r.Context(), a.opts.State, id, pendingreg.Approval{User: u.ID, Method: "cli"})
	if err != nil {
		return nil, a.pendingErr(id, err)
	}
	a.log.Info("web registration completed", "node", n.ID, "name", n.GivenName, "user", u.Name, "tags", n.Tags)
	return map[string]any{"node": a.nodeOut(n)}, nil
}

// pendingID checks that id has the form of an auth ID.
func (a *API) pendingID(id string) error {
	if !pendingreg.ValidID(id) {
		// 404 as for an unknown ID: web UIs show the message either way.
		return &Error{Status: http.StatusNotFound, Msg: fmt.Sprintf("no pending registration %q: auth IDs look like %s followed by 24 hex digits (the end of the URL `tailscale up` printed)", id, pendingreg.IDPrefix)}
	}
	return nil
}

// pendingErr maps a pendingreg error to the API's.
func (a *API) pendingErr(id string, err error) error {
	switch {
	case errors.Is(err, pendingreg.ErrNotFound):
		return &Error{Status: http.StatusNotFound, Msg: fmt.Sprintf("no pending registration %s: unknown, expired (registrations wait %s) or forgotten by a server restart; run `tailscale up` again for a new one", id, a.opts.Pending.TTL())}
	case errors.Is(err, pendingreg.ErrDone):
		return &Error{Status: http.StatusConflict, Msg: fmt.Sprintf("registration %s was already completed or rejected: auth IDs work once", id)}
	case errors.Is(err, pendingreg.ErrBusy):
		return &Error{Status: http.StatusConflict, Msg: fmt.Sprintf("registration %s is being completed by another request", id)}
	case errors.Is(err, state.ErrUnknownUser):
		return &Error{Status: http.StatusNotFound, Msg: err.Error()}
	}
	return err
}

// authPending answers auth/register, auth/approve and auth/reject
// (Headscale 0.29). register completes a web registration for a user;
// reject refuses a web registration or an SSH check; approve approves an
// SSH check (a registration needs a user: auth register).
func (a *API) authPending(r *http.Request) (any, error) {
	var req struct {
		AuthID string `json:"authId"`
		User   string `json:"user"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	id := strings.TrimSpace(req.AuthID)
	if id == "" {
		return nil, bad("authId is required")
	}
	approve, reject := strings.HasSuffix(r.URL.Path, "/approve"), strings.HasSuffix(r.URL.Path, "/reject")
	if !approve && !reject {
		return a.completeRegistration(r, id, strings.TrimSpace(req.User), "authId")
	}
	if strings.HasPrefix(id, pendingreg.IDPrefix) {
		return a.decideRegistration(id, approve)
	}
	checks := a.opts.SSHChecks
	if checks == nil {
		return nil, &Error{Status: http.StatusNotFound, Msg: "no pending authentication " + id + ": SSH checks are not enabled on this server"}
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
	a.log.Info("SSH check "+verb, "check", sshcheck.LogID(id), "src", c.Src, "dst", c.Dst, "local_user", c.LocalUser)
	return struct{}{}, nil
}

// decideRegistration is auth approve|reject of a web registration.
func (a *API) decideRegistration(id string, approve bool) (any, error) {
	if a.opts.Pending == nil {
		return nil, &Error{Status: http.StatusNotFound, Msg: "no pending registration " + id + ": " + noWebLogin}
	}
	if err := a.pendingID(id); err != nil {
		return nil, err
	}
	if approve {
		if _, ok := a.opts.Pending.Get(id); !ok {
			return nil, a.pendingErr(id, pendingreg.ErrNotFound)
		}
		return nil, bad("registration %s needs a user to own the node: run `headscale auth register --auth-id %s --user USERNAME` instead", id, id)
	}
	reg, err := a.opts.Pending.Reject(id, "")
	if err != nil {
		return nil, a.pendingErr(id, err)
	}
	a.log.Info("web registration rejected", "machine", reg.Machine.ShortString(), "hostname", reg.Hostname())
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

// debugNode is Headscale's debug call that creates a fake node waiting
// for interactive registration; this server registers only real clients.
func (a *API) debugNode(r *http.Request) (any, error) {
	return nil, bad("debug node creation is not supported: register a real client with `tailscale up --login-server URL` and `headscale nodes register`, or with a pre-auth key")
}

// noWebLogin explains why register never finds a pending registration
// when web registration is off (only API tests leave it off).
const noWebLogin = "web registration is not enabled on this server; register nodes with pre-auth keys (headscale preauthkeys create --user USER, then tailscale up --auth-key KEY)"
