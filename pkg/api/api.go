// Package api serves Headscale's REST API v1 (/api/v1/...): users, pre-auth
// keys, nodes, routes (as 0.23–0.25 had them), API keys and the policy. The CLI talks to it over the unix socket; the same
// handlers serve web UIs and scripts.
//
// Client mistakes get a 4xx with an RFC 7807 problem+json body that says
// what was wrong; only server faults give 500.
package api

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/hsctl/headscale/pkg/clientaddr"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/limit"
	"github.com/hsctl/headscale/pkg/pendingreg"
	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
)

// Options wires the API to the server.
type Options struct {
	State *state.State
	Store *store.Store
	// Policy serves the policy routes; nil leaves them out (404).
	Policy PolicyService
	// SSHChecks resolves pending SSH "check" approvals (auth approve and
	// reject); nil answers them 404.
	SSHChecks *sshcheck.Registry
	// Pending holds web registrations (nodes register, auth register
	// and reject complete them); nil answers those calls 404.
	Pending *pendingreg.Registry
	Logger  *slog.Logger
	// ClientAddr tells a request's client address (the connection's, or
	// the one a trusted proxy names) for the failed-key limit and logs;
	// nil believes no proxy.
	ClientAddr *clientaddr.Resolver
	Now        func() time.Time
	// Observer counts protective limits' hits (metrics implement it).
	Observer Observer
	// KeyFailureBurst overrides the constant KeyFailureBurst when not
	// zero (tests that send many wrong keys raise it).
	KeyFailureBurst int
}

// Observer counts hits of the API's protective limits
// (headscale_limit_hits_total{limit}).
type Observer interface {
	LimitHit(limit string)
}

// The API's protective limits. They are constants: an operator has no
// reason to tune them.
const (
	// MaxBodyBytes bounds a request body; a larger one is answered 413.
	MaxBodyBytes = 1 << 20
	// KeyFailureBurst is how many requests with a missing or wrong API
	// key one client (an IPv4 address or IPv6 /64) may make before it is
	// slowed to one more every KeyFailureRefill; until then it is
	// answered 429 without its key being looked at.
	KeyFailureBurst = 10
	// KeyFailureRefill: see KeyFailureBurst.
	KeyFailureRefill = 6 * time.Second
	// KeyFailureClients bounds the clients remembered (about 100 bytes
	// each); when they are all recently failing, the others share one
	// budget.
	KeyFailureClients = 10000
)

// API is the v1 handler set.
type API struct {
	opts     Options
	log      *slog.Logger
	limits   *limit.Reporter
	failures *limit.Failures // API key failures per client
}

// New returns the API.
func New(opts Options) *API {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &API{opts: opts, log: opts.Logger, limits: limit.NewReporter(opts.Observer, opts.Logger),
		failures: limit.NewFailures(cmp.Or(opts.KeyFailureBurst, KeyFailureBurst), KeyFailureRefill, KeyFailureClients)}
}

// route is one /api/v1 operation.
type route struct {
	pattern string // "METHOD /path/{param}", as http.ServeMux takes it
	fn      func(*http.Request) (any, error)
}

func (a *API) routes() []route {
	return []route{
		{"GET /api/v1/health", a.health},
		{"GET /api/v1/user", a.listUsers},
		{"POST /api/v1/user", a.createUser},
		{"POST /api/v1/user/{id}/rename/{name}", a.renameUser},
		{"DELETE /api/v1/user/{id}", a.deleteUser},
		{"GET /api/v1/preauthkey", a.listKeys},
		{"POST /api/v1/preauthkey", a.createKey},
		{"POST /api/v1/preauthkey/expire", a.expireKey},
		{"DELETE /api/v1/preauthkey", a.deleteKey},
		{"GET /api/v1/node", a.listNodes},
		{"GET /api/v1/node/{id}", a.getNode},
		{"DELETE /api/v1/node/{id}", a.deleteNode},
		{"POST /api/v1/node/{id}/expire", a.expireNode},
		{"POST /api/v1/node/{id}/rename/{name}", a.renameNode},
		{"POST /api/v1/node/{id}/tags", a.tagNode},
		{"POST /api/v1/node/{id}/approve", a.approveNode},
		{"POST /api/v1/node/{id}/approve_routes", a.approveRoutes},
		{"POST /api/v1/node/{id}/user", a.setNodeUser},
		{"GET /api/v1/node/{id}/routes", a.nodeRoutes},
		{"POST /api/v1/node/register", a.registerNode},
		{"POST /api/v1/node/backfillips", a.backfillIPs},
		{"POST /api/v1/debug/node", a.debugNode},
		{"POST /api/v1/auth/register", a.authPending},
		{"POST /api/v1/auth/approve", a.authPending},
		{"POST /api/v1/auth/reject", a.authPending},
		{"GET /api/v1/routes", a.listRoutes},
		{"POST /api/v1/routes/{id}/enable", a.enableRoute},
		{"POST /api/v1/routes/{id}/disable", a.disableRoute},
		{"DELETE /api/v1/routes/{id}", a.deleteRoute},
		{"GET /api/v1/apikey", a.listAPIKeys},
		{"POST /api/v1/apikey", a.createAPIKey},
		{"POST /api/v1/apikey/expire", a.expireAPIKey},
		{"DELETE /api/v1/apikey/{prefix}", a.deleteAPIKey},
		{"GET /api/v1/policy", a.getPolicy},
		{"PUT /api/v1/policy", a.setPolicy},
		{"POST /api/v1/policy/check", a.checkPolicy},
	}
}

// Routes lists every operation as "METHOD /path/{param}", for the OpenAPI
// document's drift test and the request metrics.
func (a *API) Routes() []string {
	var out []string
	for _, r := range a.routes() {
		out = append(out, r.pattern)
	}
	return out
}

// Handler returns the /api/v1 routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range a.routes() {
		fn := rt.fn
		mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) { a.serve(w, r, fn) })
	}
	mux.HandleFunc("/api/v1/", func(w http.ResponseWriter, r *http.Request) {
		problem(w, http.StatusNotFound, "no such API route: "+r.Method+" "+r.URL.Path)
	})
	return mux
}

// Error is a client mistake with its HTTP status.
type Error struct {
	Status int
	Msg    string
}

// Error implements error.
func (e *Error) Error() string { return e.Msg }

func bad(format string, args ...any) error {
	return &Error{Status: http.StatusBadRequest, Msg: fmt.Sprintf(format, args...)}
}

func (a *API) serve(w http.ResponseWriter, r *http.Request, fn func(*http.Request) (any, error)) {
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	v, err := fn(r)
	if err != nil {
		status, msg := classify(err)
		switch {
		case status == http.StatusServiceUnavailable:
			// The database is away: the server logs the outage once
			// (pkg/server), not each refused request.
			a.log.Debug("API request refused: the database is unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
		case status >= 500:
			a.log.Error("API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		if status == http.StatusRequestEntityTooLarge {
			// The rest of the body is not read: close the connection
			// after this answer (MaxBytesReader cannot tell net/http so
			// through the metrics' response wrapper).
			w.Header().Set("Connection", "close")
			a.limits.Hit("api_body_size", "API request body too large: answered 413 and closed",
				"remote", a.opts.ClientAddr.Text(r), "method", r.Method, "path", r.URL.Path, "max_bytes", MaxBodyBytes)
		}
		problem(w, status, msg)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func classify(err error) (int, string) {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e.Status, e.Msg
	case errors.Is(err, store.ErrNotFound), errors.Is(err, state.ErrNodeNotFound), errors.Is(err, state.ErrRouteNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, store.ErrConflict):
		return http.StatusConflict, err.Error()
	case errors.Is(err, store.ErrStorageFull):
		// A server fault, but one the operator must see the cause of.
		return http.StatusInsufficientStorage, err.Error()
	case errors.Is(err, state.ErrInvalidName), errors.Is(err, state.ErrTagNotOwned), errors.Is(err, state.ErrPolicyRejected):
		return http.StatusBadRequest, err.Error()
	case store.IsUnavailable(err):
		// Nothing was written; the same request succeeds once the
		// database is back.
		return http.StatusServiceUnavailable, store.Unavailable(err).Error() + "; nothing was changed, retry when it is back"
	}
	return http.StatusInternalServerError, "internal error"
}

func problem(w http.ResponseWriter, status int, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{
		"type": "about:blank", "title": http.StatusText(status), "status": status, "detail": detail,
		// gRPC-gateway era clients (headscale-ui, headscale-admin) read
		// .message and .code.
		"message": detail, "code": GRPCCode(status),
	})
}

// expiration parses an RFC 3339 expiration from a request, which must lie
// in the future; "" means def from now.
func (a *API) expiration(v string, def time.Duration) (time.Time, error) {
	if v == "" {
		return a.opts.Now().Add(def), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, bad("expiration must be an RFC 3339 time: %v", err)
	}
	if !t.After(a.opts.Now()) {
		return time.Time{}, bad("expiration %s is in the past", v)
	}
	return t, nil
}

// GRPCCode is the gRPC status code Headscale's gRPC gateway used for an
// HTTP status (the problem body's "code"; pkg/grpcapi answers with it).
func GRPCCode(status int) int {
	switch status {
	case http.StatusBadRequest:
		return 3 // InvalidArgument
	case http.StatusUnauthorized:
		return 16 // Unauthenticated
	case http.StatusForbidden:
		return 7 // PermissionDenied
	case http.StatusNotFound:
		return 5 // NotFound
	case http.StatusConflict:
		return 6 // AlreadyExists
	case http.StatusInsufficientStorage:
		return 8 // ResourceExhausted
	case http.StatusServiceUnavailable:
		return 14 // Unavailable
	}
	return 13 // Internal
}

// pathID parses the positive ID in the path parameter name.
func pathID[T ids.ID](r *http.Request, name string) (T, error) {
	v, err := strconv.ParseUint(r.PathValue(name), 10, 64)
	if err != nil || v == 0 {
		return 0, bad("%s must be a positive number, got %q", name, r.PathValue(name))
	}
	return T(v), nil
}

func decodeBody(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return &Error{Status: http.StatusRequestEntityTooLarge,
				Msg: fmt.Sprintf("request body is larger than %d bytes, the most an API call takes", MaxBodyBytes)}
		}
		return bad("request body is not valid JSON for this call: %v", err)
	}
	return nil
}

// flexID accepts an ID as a JSON number or string, as different Headscale
// versions and UIs send both.
type flexID string

func (f *flexID) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*f = flexID(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("want an ID as a number or string")
	}
	*f = flexID(n.String())
	return nil
}

func (a *API) health(r *http.Request) (any, error) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := a.opts.Store.Ping(ctx); err != nil {
		// The reason is ours (Headscale answers only the boolean);
		// `headscale health` prints it.
		return map[string]any{"databaseConnectivity": false, "reason": store.Unavailable(err).Error()}, nil
	}
	return map[string]any{"databaseConnectivity": true}, nil
}
