// Package api serves Headscale's REST API v1 (/api/v1/...): users, pre-auth
// keys and nodes. The CLI talks to it over the unix socket; the same
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
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hsctl/headscale/pkg/authkey"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/limit"
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
	Logger    *slog.Logger
	Now       func() time.Time
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
		{"POST /api/v1/node/{id}/approve_routes", a.approveRoutes},
		{"POST /api/v1/node/{id}/user", a.setNodeUser},
		{"POST /api/v1/node/register", a.registerNode},
		{"POST /api/v1/node/backfillips", a.backfillIPs},
		{"POST /api/v1/debug/node", a.debugNode},
		{"POST /api/v1/auth/register", a.authPending},
		{"POST /api/v1/auth/approve", a.authPending},
		{"POST /api/v1/auth/reject", a.authPending},
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
		if status >= 500 {
			a.log.Error("API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		if status == http.StatusRequestEntityTooLarge {
			// The rest of the body is not read: close the connection
			// after this answer (MaxBytesReader cannot tell net/http so
			// through the metrics' response wrapper).
			w.Header().Set("Connection", "close")
			a.limits.Hit("api_body_size", "API request body too large: answered 413 and closed",
				"remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "max_bytes", MaxBodyBytes)
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
	case errors.Is(err, store.ErrNotFound), errors.Is(err, state.ErrNodeNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, store.ErrConflict):
		return http.StatusConflict, err.Error()
	case errors.Is(err, store.ErrStorageFull):
		// A server fault, but one the operator must see the cause of.
		return http.StatusInsufficientStorage, err.Error()
	case errors.Is(err, state.ErrInvalidName), errors.Is(err, state.ErrTagNotOwned), errors.Is(err, state.ErrPolicyRejected):
		return http.StatusBadRequest, err.Error()
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
		"message": detail, "code": grpcCode(status),
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

// grpcCode is the gRPC status code Headscale's gRPC gateway used for an
// HTTP status.
func grpcCode(status int) int {
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
	return map[string]bool{"databaseConnectivity": a.opts.Store.Ping(ctx) == nil}, nil
}

// --- users

func (a *API) listUsers(r *http.Request) (any, error) {
	q := r.URL.Query()
	users := []*User{}
	for _, u := range a.opts.State.Users() {
		if v := q.Get("id"); v != "" && v != u.ID.String() {
			continue
		}
		if v := q.Get("name"); v != "" && v != u.Name {
			continue
		}
		if v := q.Get("email"); v != "" && v != u.Email {
			continue
		}
		users = append(users, userJSON(u))
	}
	return map[string]any{"users": users}, nil
}

func (a *API) createUser(r *http.Request) (any, error) {
	var req struct {
		Name        string `json:"name"`
		DisplayName string `json:"displayName"`
		Email       string `json:"email"`
		PictureURL  string `json:"pictureUrl"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	if strings.TrimSpace(req.Name) == "" {
		return nil, bad("name is required")
	}
	u, err := a.opts.State.CreateUser(r.Context(), store.User{Name: req.Name, DisplayName: req.DisplayName, Email: req.Email, ProfilePicURL: req.PictureURL})
	if err != nil {
		return nil, err
	}
	a.log.Info("user created", "user", u.ID, "name", u.Name)
	return map[string]any{"user": userJSON(u)}, nil
}

func (a *API) renameUser(r *http.Request) (any, error) {
	uid, err := pathID[ids.UserID](r, "id")
	if err != nil {
		return nil, err
	}
	u, err := a.opts.State.RenameUser(r.Context(), uid, r.PathValue("name"))
	if err != nil {
		return nil, err
	}
	return map[string]any{"user": userJSON(u)}, nil
}

func (a *API) deleteUser(r *http.Request) (any, error) {
	uid, err := pathID[ids.UserID](r, "id")
	if err != nil {
		return nil, err
	}
	if err := a.opts.State.DeleteUser(r.Context(), uid); err != nil {
		return nil, err
	}
	a.log.Info("user deleted", "user", uid)
	return struct{}{}, nil
}

// resolveUser finds a user by ID or, failing that, by name.
func (a *API) resolveUser(ref string) (*state.User, error) {
	if n, err := strconv.ParseUint(ref, 10, 64); err == nil {
		if u, ok := a.opts.State.User(ids.UserID(n)); ok {
			return u, nil
		}
	}
	for _, u := range a.opts.State.Users() {
		if u.Name == ref {
			return u, nil
		}
	}
	return nil, &Error{Status: http.StatusNotFound, Msg: fmt.Sprintf("user %q not found", ref)}
}

// --- pre-auth keys

func (a *API) listKeys(r *http.Request) (any, error) {
	keys, err := a.opts.Store.ListPreAuthKeys(r.Context())
	if err != nil {
		return nil, err
	}
	var filter ids.UserID
	if ref := r.URL.Query().Get("user"); ref != "" {
		u, err := a.resolveUser(ref)
		if err != nil {
			return nil, err
		}
		filter = u.ID
	}
	out := []PreAuthKey{}
	for _, k := range keys {
		var u *state.User
		if k.UserID != nil {
			if filter != 0 && *k.UserID != filter {
				continue
			}
			u, _ = a.opts.State.User(*k.UserID)
		} else if filter != 0 {
			continue
		}
		out = append(out, keyJSON(k, u, ""))
	}
	return map[string]any{"preAuthKeys": out}, nil
}

func (a *API) createKey(r *http.Request) (any, error) {
	var req struct {
		User       flexID   `json:"user"`
		Reusable   bool     `json:"reusable"`
		Ephemeral  bool     `json:"ephemeral"`
		Expiration string   `json:"expiration"`
		ACLTags    []string `json:"aclTags"`
	}
	if err := decodeBody(r, &req); err != nil {
		return nil, err
	}
	k := store.PreAuthKey{Reusable: req.Reusable, Ephemeral: req.Ephemeral}
	var u *state.User
	if req.User != "" && req.User != "0" {
		var err error
		if u, err = a.resolveUser(string(req.User)); err != nil {
			return nil, err
		}
		uid := u.ID
		k.UserID = &uid
	}
	if err := state.ValidateTags(req.ACLTags); err != nil {
		return nil, err
	}
	k.Tags = slices.Compact(slices.Sorted(slices.Values(req.ACLTags)))
	if k.UserID == nil && len(k.Tags) == 0 {
		return nil, bad("a pre-auth key needs a user or at least one tag")
	}
	exp, err := a.expiration(req.Expiration, time.Hour)
	if err != nil {
		return nil, err
	}
	k.Expiration = exp
	gen, err := authkey.New(authkey.KindAuth)
	if err != nil {
		return nil, err
	}
	k.Prefix, k.Hash = gen.Prefix, gen.Hash
	created, err := a.opts.Store.CreatePreAuthKey(r.Context(), k)
	if err != nil {
		return nil, err
	}
	a.log.Info("pre-auth key created", "key", created.ID, "reusable", k.Reusable, "ephemeral", k.Ephemeral, "tags", k.Tags)
	return map[string]any{"preAuthKey": keyJSON(created, u, gen.Full)}, nil
}

func (a *API) keyID(r *http.Request, body bool) (ids.PreAuthKeyID, error) {
	raw := r.URL.Query().Get("id")
	if body {
		var req struct {
			ID flexID `json:"id"`
			// Older clients (headscale-ui, headscale-admin) name the key by
			// its text and user (an ID or a whole user object) instead of
			// its ID; the key text is enough.
			User json.RawMessage `json:"user"`
			Key  string          `json:"key"`
		}
		if err := decodeBody(r, &req); err != nil {
			return 0, err
		}
		raw = string(req.ID)
		if raw == "" && req.Key != "" {
			prefix := req.Key
			if p, _, err := authkey.Parse(authkey.KindAuth, req.Key); err == nil {
				prefix = p
			}
			prefix = strings.TrimSuffix(strings.TrimPrefix(prefix, "hskey-auth-"), "-***")
			k, err := a.opts.Store.GetPreAuthKeyByPrefix(r.Context(), prefix)
			if err != nil {
				return 0, err
			}
			return k.ID, nil
		}
	}
	v, err := strconv.ParseUint(raw, 10, 64)
	if err != nil || v == 0 {
		return 0, bad("id must be a positive number, got %q", raw)
	}
	return ids.PreAuthKeyID(v), nil
}

func (a *API) expireKey(r *http.Request) (any, error) {
	kid, err := a.keyID(r, true)
	if err != nil {
		return nil, err
	}
	if err := a.opts.Store.ExpirePreAuthKey(r.Context(), kid, a.opts.Now()); err != nil {
		return nil, err
	}
	a.log.Info("pre-auth key expired", "key", kid)
	return struct{}{}, nil
}

func (a *API) deleteKey(r *http.Request) (any, error) {
	kid, err := a.keyID(r, false)
	if err != nil {
		return nil, err
	}
	if err := a.opts.Store.DeletePreAuthKey(r.Context(), kid); err != nil {
		return nil, err
	}
	a.log.Info("pre-auth key deleted", "key", kid)
	return struct{}{}, nil
}

// --- nodes

func (a *API) nodeOut(n *state.Node) Node {
	var u *state.User
	if n.UserID != 0 {
		u, _ = a.opts.State.User(n.UserID)
	}
	return nodeJSON(n, u)
}

func (a *API) listNodes(r *http.Request) (any, error) {
	var filter ids.UserID
	if ref := r.URL.Query().Get("user"); ref != "" {
		u, err := a.resolveUser(ref)
		if err != nil {
			return nil, err
		}
		filter = u.ID
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
