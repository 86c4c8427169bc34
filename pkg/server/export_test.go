package server

import (
	"net/http"
	"time"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/control"
	"github.com/hsctl/headscale/pkg/metrics"
	"github.com/hsctl/headscale/pkg/pendingreg"
	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
)

// This file opens the internals the external tests (package server_test,
// which run the server through internal/servertest) truly need: the
// components they inspect, and the limits they lower before Listen (in an
// Options.Tweak).

// HTTPLimits are an HTTP listener's limits.
type HTTPLimits = httpLimits

// State is the server's state owner.
func (s *Server) State() *state.State { return s.state }

// Store is the server's database.
func (s *Server) Store() *store.Store { return s.store }

// Metrics is the server's metrics registry.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// APIHandler is the REST API's handler without authentication.
func (s *Server) APIHandler() http.Handler { return s.api.Handler() }

// APIRoutes are the REST API's route patterns.
func (s *Server) APIRoutes() []string { return s.api.Routes() }

// SocketHandler is the unix socket's routes.
func (s *Server) SocketHandler() http.Handler {
	_, local := s.grpcServers()
	return s.socketHandler(local)
}

// DNSConfig is the DNS configuration in force (replaced on reload).
func (s *Server) DNSConfig() *tailcfg.DNSConfig { return s.dns.Load() }

// MainHTTP is the main listener's limits, to lower before Listen.
func (s *Server) MainHTTP() *HTTPLimits { return &s.mainHTTP }

// SetControlLimits changes the control protocol's limits with f and
// rebuilds the control server with them; before Listen.
func (s *Server) SetControlLimits(f func(*control.Limits)) {
	f(&s.controlOpts.Limits)
	s.control = control.New(s.controlOpts)
}

// SetAPIOptions changes the REST API's options with f and rebuilds the
// API with them; before Listen.
func (s *Server) SetAPIOptions(f func(*api.Options)) {
	f(&s.apiOpts)
	s.api = api.New(s.apiOpts)
}

// PolicyAPIError maps a policy error to the API's answer.
var PolicyAPIError = policyAPIError

// SetRegistrationTTL gives web registrations a lifetime of ttl instead of
// 15 minutes (a fresh registry) and rebuilds the control server and the
// API with it; before Listen.
func (s *Server) SetRegistrationTTL(ttl time.Duration) {
	s.pending = pendingreg.New(time.Now, ttl)
	s.controlOpts.Pending = s.pending
	s.control = control.New(s.controlOpts)
	s.apiOpts.Pending = s.pending
	s.api = api.New(s.apiOpts)
}

// SSHChecks is the server's registry of pending SSH checks.
func (s *Server) SSHChecks() *sshcheck.Registry { return s.sshChecks }

// StatusLine is the line systemd's status shows.
func (s *Server) StatusLine() string { return s.status() }
