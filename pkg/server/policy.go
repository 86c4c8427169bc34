package server

// Loading, reloading and changing the access-control policy, in file mode
// (policy.path, re-read on SIGHUP) or database mode (set through the API and
// CLI, shared by every server on the database).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/state"
)

// loadPolicy puts the configured policy in force: the file's text in file
// mode, the newest stored policy in database mode (pkg/state reads, checks
// and applies it). At start-up a policy that parses and compiles is
// applied even if its own tests fail (they are reported): refusing to start
// would take the whole tailnet down, and falling back to allow-all would
// open it.
func (s *Server) loadPolicy(ctx context.Context, atStart bool) error {
	var (
		warnings []string
		origin   string
		err      error
	)
	switch s.cfg.Policy.Mode {
	case "database":
		origin = "database"
		warnings, err = s.state.LoadStoredPolicy(ctx, !atStart)
	default:
		var text string
		var updatedAt time.Time
		if s.cfg.Policy.Path != "" {
			origin = s.cfg.Policy.Path
			b, rerr := os.ReadFile(s.cfg.Policy.Path)
			if rerr != nil {
				return fmt.Errorf("policy.path: %w", rerr)
			}
			text = string(b)
			if fi, _ := os.Stat(s.cfg.Policy.Path); fi != nil {
				updatedAt = fi.ModTime()
			}
		}
		warnings, err = s.state.LoadPolicyText(text, origin, updatedAt, !atStart)
		if err != nil && origin != "" {
			err = fmt.Errorf("policy.path: %w", err)
		}
	}
	for _, w := range warnings {
		s.log.Warn("policy: "+w, "source", origin)
	}
	if err != nil {
		return err
	}
	s.autoApproveRoutes(ctx)
	if s.state.Policy() == nil {
		s.log.Info("no policy: every node may reach every other", "mode", s.cfg.Policy.Mode)
	} else {
		s.log.Info("policy in force", "mode", s.cfg.Policy.Mode, "source", origin)
	}
	return nil
}

// GetPolicy implements api.PolicyService.
func (s *Server) GetPolicy(ctx context.Context) (string, time.Time, error) {
	text, updatedAt := s.state.PolicyText()
	return text, updatedAt, nil
}

// CheckPolicy implements api.PolicyService: parse, compile against the
// live nodes and users, run the policy's tests; nothing changes.
func (s *Server) CheckPolicy(ctx context.Context, text string) error {
	if _, err := s.state.CheckPolicyText(text); err != nil {
		return policyAPIError(err)
	}
	return nil
}

// SetPolicy implements api.PolicyService (database mode only): pkg/state
// checks the policy, stores it and puts it in force, or on any failure
// leaves both the stored policy and the one in force as they were.
func (s *Server) SetPolicy(ctx context.Context, text string) (time.Time, error) {
	if s.cfg.Policy.Mode != "database" {
		return time.Time{}, &api.Error{Status: 400, Msg: fmt.Sprintf("policy update is disabled: policy.mode is %q, the policy is the file %q; edit it and run `systemctl reload headscale`", s.cfg.Policy.Mode, s.cfg.Policy.Path)}
	}
	at, err := s.state.StorePolicy(ctx, text)
	if err != nil {
		return time.Time{}, policyAPIError(err)
	}
	s.autoApproveRoutes(ctx)
	s.log.Info("policy set through the API")
	return at, nil
}

// policyAPIError maps a policy change's error for the API: a rejected
// policy is the client's mistake (400), anything else a server fault.
func policyAPIError(err error) error {
	if errors.Is(err, state.ErrPolicyRejected) {
		return &api.Error{Status: 400, Msg: err.Error()}
	}
	return err
}

// autoApproveRoutes applies the autoApprovers of the policy just put in
// force to the routes nodes advertise. A failure leaves the policy in
// force; the approvals are retried on the next policy load or route change.
func (s *Server) autoApproveRoutes(ctx context.Context) {
	if err := s.state.AutoApproveAll(ctx); err != nil {
		s.log.Error("applying autoApprovers to advertised routes", "err", err)
	}
}
