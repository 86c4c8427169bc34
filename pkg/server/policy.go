package server

// Loading, reloading and changing the access-control policy, in file mode
// (policy.path, re-read on SIGHUP) or database mode (set through the API and
// CLI, shared by every server on the database).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/store"
)

// policySource is the text of the policy in force and when it was set.
type policySource struct {
	mu        sync.Mutex
	text      string
	updatedAt time.Time
}

// readPolicy returns the configured policy text ("" when there is none) and
// where it came from, for messages.
func (s *Server) readPolicy(ctx context.Context) (text string, origin string, updatedAt time.Time, err error) {
	switch s.cfg.Policy.Mode {
	case "database":
		text, updatedAt, err = s.store.GetPolicy(ctx)
		if errors.Is(err, store.ErrNotFound) {
			return "", "database", time.Time{}, nil
		}
		return text, "database", updatedAt, err
	default:
		if s.cfg.Policy.Path == "" {
			return "", "", time.Time{}, nil
		}
		b, err := os.ReadFile(s.cfg.Policy.Path)
		if err != nil {
			return "", s.cfg.Policy.Path, time.Time{}, fmt.Errorf("policy.path: %w", err)
		}
		fi, _ := os.Stat(s.cfg.Policy.Path)
		if fi != nil {
			updatedAt = fi.ModTime()
		}
		return string(b), s.cfg.Policy.Path, updatedAt, nil
	}
}

// parsePolicy parses text; "" (or only whitespace and comments... not
// special-cased) means no policy.
func parsePolicy(text, origin string) (*policy.Policy, error) {
	if text == "" {
		return nil, nil
	}
	p, err := policy.Parse([]byte(text))
	if err != nil {
		if origin == "" {
			origin = "policy"
		}
		return nil, policy.InFile(origin, err)
	}
	return p, nil
}

// loadPolicy puts the configured policy in force. At start-up a policy
// that parses and compiles is applied even if its own tests fail (they are
// reported): refusing to start would take the whole tailnet down, and
// falling back to allow-all would open it.
func (s *Server) loadPolicy(ctx context.Context, atStart bool) error {
	text, origin, updatedAt, err := s.readPolicy(ctx)
	if err != nil {
		return err
	}
	p, err := parsePolicy(text, origin)
	if err != nil {
		return err
	}
	warnings, err := s.state.SetPolicy(p, !atStart)
	for _, w := range warnings {
		s.log.Warn("policy: "+w, "source", origin)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", origin, err)
	}
	s.policy.mu.Lock()
	s.policy.text, s.policy.updatedAt = text, updatedAt
	s.policy.mu.Unlock()
	s.autoApproveRoutes(ctx)
	if p == nil {
		s.log.Info("no policy: every node may reach every other", "mode", s.cfg.Policy.Mode)
	} else {
		s.log.Info("policy in force", "mode", s.cfg.Policy.Mode, "source", origin)
	}
	return nil
}

// GetPolicy implements api.PolicyService.
func (s *Server) GetPolicy(ctx context.Context) (string, time.Time, error) {
	s.policy.mu.Lock()
	defer s.policy.mu.Unlock()
	return s.policy.text, s.policy.updatedAt, nil
}

// CheckPolicy implements api.PolicyService: parse, compile against the
// live nodes and users, run the policy's tests; nothing changes.
func (s *Server) CheckPolicy(ctx context.Context, text string) error {
	p, err := parsePolicy(text, "")
	if err != nil {
		return &api.Error{Status: 400, Msg: err.Error()}
	}
	if _, err := s.state.CheckPolicy(p); err != nil {
		return &api.Error{Status: 400, Msg: err.Error()}
	}
	return nil
}

// SetPolicy implements api.PolicyService (database mode only): the policy
// is checked, stored, then put in force; on any failure the policy in
// force stays.
func (s *Server) SetPolicy(ctx context.Context, text string) (time.Time, error) {
	if s.cfg.Policy.Mode != "database" {
		return time.Time{}, &api.Error{Status: 400, Msg: fmt.Sprintf("policy update is disabled: policy.mode is %q, the policy is the file %q; edit it and run `systemctl reload headscale`", s.cfg.Policy.Mode, s.cfg.Policy.Path)}
	}
	p, err := parsePolicy(text, "")
	if err != nil {
		return time.Time{}, &api.Error{Status: 400, Msg: err.Error()}
	}
	s.policyMu.Lock()
	defer s.policyMu.Unlock()
	if _, err := s.state.CheckPolicy(p); err != nil {
		return time.Time{}, &api.Error{Status: 400, Msg: err.Error()}
	}
	if err := s.store.SetPolicy(ctx, text); err != nil {
		return time.Time{}, err
	}
	if _, err := s.state.SetPolicy(p, true); err != nil {
		return time.Time{}, &api.Error{Status: 400, Msg: err.Error()}
	}
	now := time.Now()
	s.policy.mu.Lock()
	s.policy.text, s.policy.updatedAt = text, now
	s.policy.mu.Unlock()
	s.autoApproveRoutes(ctx)
	s.log.Info("policy set through the API")
	return now, nil
}

// autoApproveRoutes applies the autoApprovers of the policy just put in
// force to the routes nodes advertise. A failure leaves the policy in
// force; the approvals are retried on the next policy load or route change.
func (s *Server) autoApproveRoutes(ctx context.Context) {
	if err := s.state.AutoApproveAll(ctx); err != nil {
		s.log.Error("applying autoApprovers to advertised routes", "err", err)
	}
}
