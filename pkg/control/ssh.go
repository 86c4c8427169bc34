package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/state"
	"tailscale.com/tailcfg"
)

// sshAccept is the verdict that lets a checked connection in, with the same
// forwarding rights as a policy "accept" rule.
func sshAccept(msg string) *tailcfg.SSHAction {
	return &tailcfg.SSHAction{
		Message:                   msg,
		Accept:                    true,
		AllowAgentForwarding:      true,
		AllowLocalPortForwarding:  true,
		AllowRemotePortForwarding: true,
	}
}

func sshReject(msg string) *tailcfg.SSHAction {
	return &tailcfg.SSHAction{Reject: true, Message: msg}
}

// serveSSHAction handles GET /machine/ssh/action/{src}/to/{dst}: the
// verdict for an SSH connection from node src to node dst that matched a
// policy "check" rule. Only dst itself (its machine key is the Noise peer)
// may ask. The first request either accepts at once (an approval for the
// pair within the rule's check period) or opens a pending check and holds
// and delegates to the same path with its auth_id; that follow-up request
// blocks until an admin approves or rejects the check, it expires, or the
// client goes away.
func (c *noiseConn) serveSSHAction(w http.ResponseWriter, r *http.Request) {
	s := c.srv
	checks := s.opts.SSHChecks
	if checks == nil {
		http.Error(w, "SSH check is not enabled on this control server", http.StatusNotImplemented)
		return
	}
	src, err := ids.Parse[ids.NodeID](r.PathValue("src"))
	if err != nil {
		http.Error(w, "source node ID must be a number", http.StatusBadRequest)
		return
	}
	dst, err := ids.Parse[ids.NodeID](r.PathValue("dst"))
	if err != nil {
		http.Error(w, "destination node ID must be a number", http.StatusBadRequest)
		return
	}
	dstNode, ok := s.opts.State.Node(dst)
	if !ok {
		http.Error(w, fmt.Sprintf("unknown destination node %d", dst), http.StatusNotFound)
		return
	}
	if dstNode.MachineKey != c.machine {
		s.log.Warn("SSH check refused: asked by a machine that is not the destination node", "dst", dst, "machine", c.machine.ShortString())
		http.Error(w, fmt.Sprintf("this machine is not node %d: only the destination node may ask for an SSH check verdict", dst), http.StatusForbidden)
		return
	}
	srcNode, ok := s.opts.State.Node(src)
	if !ok {
		http.Error(w, fmt.Sprintf("unknown source node %d", src), http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	localUser, authID := q.Get("local_user"), q.Get("auth_id")
	log := s.log.With("node", dst, "name", dstNode.GivenName, "src", src, "src_name", srcNode.GivenName, "dst", dst, "local_user", localUser)

	reply := func(a *tailcfg.SSHAction, outcome string, args ...any) {
		log.Info("SSH check", append([]any{"outcome", outcome}, args...)...)
		writeJSON(w, a)
	}
	if srcNode.Tagged() {
		reply(sshReject(fmt.Sprintf("SSH check: %s is a tagged node; check rules only work for sources owned by a user, so this connection is rejected.\n", srcNode.GivenName)),
			"rejected-tagged-source", "check", sshcheck.LogID(authID))
		return
	}
	period := sshcheck.DefaultPeriod
	if s.opts.SSHCheckPeriod != nil {
		period = s.opts.SSHCheckPeriod(src, dst)
	}

	if authID == "" {
		if checks.ApprovedWithin(src, dst, period) {
			reply(sshAccept(""), "accepted-within-check-period", "check_period", period)
			return
		}
		c.holdSSH(w, r, log, srcNode, dstNode, localUser, "")
		return
	}

	check, ok := checks.Get(authID)
	if !ok {
		// Forgotten (a restart, or long expired): open a new check rather
		// than leaving the client retrying a dead ID.
		c.holdSSH(w, r, log, srcNode, dstNode, localUser, authID)
		return
	}
	if check.Src != src || check.Dst != dst {
		log.Warn("SSH check refused: auth ID belongs to another connection", "check", sshcheck.LogID(authID))
		http.Error(w, "this auth_id belongs to another source or destination node", http.StatusForbidden)
		return
	}
	check, err = checks.Wait(r.Context(), authID)
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		log.Info("SSH check", "outcome", "client-gone", "check", sshcheck.LogID(authID))
		http.Error(w, "request ended before the SSH check was decided", http.StatusServiceUnavailable)
		return
	case errors.Is(err, sshcheck.ErrNotFound):
		c.holdSSH(w, r, log, srcNode, dstNode, localUser, authID)
		return
	case err != nil:
		log.Error("SSH check failed", "check", sshcheck.LogID(authID), "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	switch check.Verdict {
	case sshcheck.Approved:
		reply(sshAccept("SSH check: approved.\n"), "approved", "check", sshcheck.LogID(authID))
	case sshcheck.Rejected:
		reply(sshReject("SSH check: an admin rejected this connection.\n"), "rejected", "check", sshcheck.LogID(authID))
	default:
		reply(sshReject(fmt.Sprintf("SSH check: nobody approved this connection within %s; try again.\n", checks.Timeout())), "expired", "check", sshcheck.LogID(authID))
	}
}

// holdSSH opens a pending check and answers with an action that holds the
// connection and delegates to the follow-up URL carrying its auth ID.
// oldID is the forgotten auth ID being replaced, if any.
func (c *noiseConn) holdSSH(w http.ResponseWriter, r *http.Request, log *slog.Logger, srcNode, dstNode *state.Node, localUser, oldID string) {
	checks := c.srv.opts.SSHChecks
	check, err := checks.Begin(srcNode.ID, dstNode.ID, localUser)
	if errors.Is(err, sshcheck.ErrTooMany) {
		log.Warn("SSH check refused: too many pending checks")
		http.Error(w, "too many SSH checks are waiting for approval; try again later", http.StatusTooManyRequests)
		return
	}
	if err != nil {
		log.Error("SSH check failed", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	// The follow-up goes to the same path, with the IDs filled in. The
	// client sends an https URL through its Noise connection (http would
	// make it dial the server directly), and ignores the host, so keep the
	// one it used.
	host := r.Host
	if host == "" {
		host = "control"
	}
	next := (&url.URL{
		Scheme:   "https",
		Host:     host,
		Path:     fmt.Sprintf("/machine/ssh/action/%d/to/%d", srcNode.ID, dstNode.ID),
		RawQuery: url.Values{"local_user": {localUser}, "auth_id": {check.ID}}.Encode(),
	}).String()
	as := localUser
	if as == "" {
		as = "?"
	}
	login := ""
	if c.srv.opts.SSHCheckLogin && c.srv.opts.ServerURL != "" {
		login = fmt.Sprintf("Or, as the owner of %s, log in at %s/auth/%s\n", srcNode.GivenName, c.srv.opts.ServerURL, check.ID)
	}
	msg := fmt.Sprintf("SSH check: an admin must approve this connection (%s to %s as %s).\n"+
		"Ask an admin to run: headscale auth approve --auth-id %s\n%s"+
		"Waiting up to %s...\n", srcNode.GivenName, dstNode.GivenName, as, check.ID, login, checks.Timeout().Round(time.Second))
	outcome := "held"
	if oldID != "" {
		outcome = "held-again"
		log = log.With("forgotten_check", sshcheck.LogID(oldID))
	}
	log.Info("SSH check", "outcome", outcome, "check", sshcheck.LogID(check.ID))
	writeJSON(w, &tailcfg.SSHAction{HoldAndDelegate: next, Message: msg})
}
