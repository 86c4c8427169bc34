package grpcapi

import (
	"context"
	"net/http"
	"net/url"
	"strconv"

	"github.com/hsctl/headscale/pkg/api"
	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The RPCs, in the service's order. Each one is the REST route of the same
// operation (pkg/api routes()); a comment names it where the mapping is
// not obvious. Requests from Headscale 0.23 to 0.25 that carry a string
// where this definition has a number arrive with it in the message's
// unknown fields; era.go's helpers (oldString) read it.

type userReply struct {
	User *api.User `json:"user"`
}

type usersReply struct {
	Users []*api.User `json:"users"`
}

type nodeReply struct {
	Node api.Node `json:"node"`
}

type nodesReply struct {
	Nodes []api.Node `json:"nodes"`
}

type keyReply struct {
	PreAuthKey *api.PreAuthKey `json:"preAuthKey"`
}

type keysReply struct {
	PreAuthKeys []*api.PreAuthKey `json:"preAuthKeys"`
}

type routesReply struct {
	Routes []api.Route `json:"routes"`
}

type policyReply struct {
	Policy    string `json:"policy"`
	UpdatedAt string `json:"updatedAt"`
}

// GetUser is 0.23's look-up by name: the user list filtered by name.
func (s *Service) GetUser(ctx context.Context, req *v1.GetUserRequest) (*v1.GetUserResponse, error) {
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	var out usersReply
	if err := s.call(ctx, http.MethodGet, "/api/v1/user", url.Values{"name": {req.GetName()}}, nil, &out); err != nil {
		return nil, err
	}
	if len(out.Users) == 0 {
		return nil, status.Errorf(codes.NotFound, "user %q not found", req.GetName())
	}
	return &v1.GetUserResponse{User: userOut(out.Users[0])}, nil
}

// CreateUser is POST /api/v1/user.
func (s *Service) CreateUser(ctx context.Context, req *v1.CreateUserRequest) (*v1.CreateUserResponse, error) {
	body := map[string]string{"name": req.GetName(), "displayName": req.GetDisplayName(), "email": req.GetEmail(), "pictureUrl": req.GetPictureUrl()}
	var out userReply
	if err := s.call(ctx, http.MethodPost, "/api/v1/user", nil, body, &out); err != nil {
		return nil, err
	}
	return &v1.CreateUserResponse{User: userOut(out.User)}, nil
}

// RenameUser is POST /api/v1/user/{id}/rename/{name}; 0.23 names the user
// instead of giving its ID.
func (s *Service) RenameUser(ctx context.Context, req *v1.RenameUserRequest) (*v1.RenameUserResponse, error) {
	uid, err := s.userID(ctx, req.GetOldId(), req, 1)
	if err != nil {
		return nil, err
	}
	if req.GetNewName() == "" {
		return nil, status.Error(codes.InvalidArgument, "new_name is required")
	}
	var out userReply
	if err := s.call(ctx, http.MethodPost, pathf("/api/v1/user/%s/rename/%s", uid, req.GetNewName()), nil, nil, &out); err != nil {
		return nil, err
	}
	return &v1.RenameUserResponse{User: userOut(out.User)}, nil
}

// DeleteUser is DELETE /api/v1/user/{id}; 0.23 names the user.
func (s *Service) DeleteUser(ctx context.Context, req *v1.DeleteUserRequest) (*v1.DeleteUserResponse, error) {
	uid, err := s.userID(ctx, req.GetId(), req, 1)
	if err != nil {
		return nil, err
	}
	if err := s.call(ctx, http.MethodDelete, pathf("/api/v1/user/%s", uid), nil, nil, nil); err != nil {
		return nil, err
	}
	return &v1.DeleteUserResponse{}, nil
}

// ListUsers is GET /api/v1/user with its filters.
func (s *Service) ListUsers(ctx context.Context, req *v1.ListUsersRequest) (*v1.ListUsersResponse, error) {
	q := url.Values{}
	if req.GetId() != 0 {
		q.Set("id", idPath(req.GetId()))
	}
	if req.GetName() != "" {
		q.Set("name", req.GetName())
	}
	if req.GetEmail() != "" {
		q.Set("email", req.GetEmail())
	}
	var out usersReply
	if err := s.call(ctx, http.MethodGet, "/api/v1/user", q, nil, &out); err != nil {
		return nil, err
	}
	resp := &v1.ListUsersResponse{}
	for _, u := range out.Users {
		resp.Users = append(resp.Users, userOut(u))
	}
	return resp, nil
}

// userID is the user a request names at number num: its ID, or (0.23)
// the name sent there as a string, resolved through the user list.
func (s *Service) userID(ctx context.Context, uid uint64, req message, num int32) (string, error) {
	if uid != 0 {
		return idPath(uid), nil
	}
	name, ok := oldString(req, num)
	if !ok || name == "" {
		return "0", nil // the API refuses it in its own words
	}
	var out usersReply
	if err := s.call(ctx, http.MethodGet, "/api/v1/user", url.Values{"name": {name}}, nil, &out); err != nil {
		return "", err
	}
	if len(out.Users) == 0 {
		return "", status.Errorf(codes.NotFound, "user %q not found", name)
	}
	return out.Users[0].ID, nil
}

// userRef is the user a request names at number num as the API takes it:
// the ID, or (up to 0.25) the name sent there as a string; "" for none.
func userRef(uid uint64, req message, num int32) string {
	if uid != 0 {
		return idPath(uid)
	}
	if name, ok := oldString(req, num); ok {
		return name
	}
	return ""
}

// CreatePreAuthKey is POST /api/v1/preauthkey.
func (s *Service) CreatePreAuthKey(ctx context.Context, req *v1.CreatePreAuthKeyRequest) (*v1.CreatePreAuthKeyResponse, error) {
	body := map[string]any{
		"user": userRef(req.GetUser(), req, 1), "reusable": req.GetReusable(), "ephemeral": req.GetEphemeral(),
		"expiration": apiTime(req.GetExpiration()), "aclTags": nilIfEmpty(req.GetAclTags()),
	}
	var out keyReply
	if err := s.call(ctx, http.MethodPost, "/api/v1/preauthkey", nil, body, &out); err != nil {
		return nil, err
	}
	return &v1.CreatePreAuthKeyResponse{PreAuthKey: keyOut(out.PreAuthKey)}, nil
}

// ExpirePreAuthKey is POST /api/v1/preauthkey/expire: by ID (0.28 and
// newer), or by the key's text within its user (up to 0.27).
func (s *Service) ExpirePreAuthKey(ctx context.Context, req *v1.ExpirePreAuthKeyRequest) (*v1.ExpirePreAuthKeyResponse, error) {
	body := map[string]string{"id": idPath(req.GetId())}
	if req.GetKey() != "" {
		body = map[string]string{"user": userRef(req.GetId(), req, 1), "key": req.GetKey()}
	}
	if err := s.call(ctx, http.MethodPost, "/api/v1/preauthkey/expire", nil, body, nil); err != nil {
		return nil, err
	}
	return &v1.ExpirePreAuthKeyResponse{}, nil
}

// DeletePreAuthKey is DELETE /api/v1/preauthkey?id=.
func (s *Service) DeletePreAuthKey(ctx context.Context, req *v1.DeletePreAuthKeyRequest) (*v1.DeletePreAuthKeyResponse, error) {
	if err := s.call(ctx, http.MethodDelete, "/api/v1/preauthkey", url.Values{"id": {idPath(req.GetId())}}, nil, nil); err != nil {
		return nil, err
	}
	return &v1.DeletePreAuthKeyResponse{}, nil
}

// ListPreAuthKeys is GET /api/v1/preauthkey, of one user up to 0.27.
func (s *Service) ListPreAuthKeys(ctx context.Context, req *v1.ListPreAuthKeysRequest) (*v1.ListPreAuthKeysResponse, error) {
	q := url.Values{}
	if ref := userRef(req.GetUser(), req, 1); ref != "" {
		q.Set("user", ref)
	}
	var out keysReply
	if err := s.call(ctx, http.MethodGet, "/api/v1/preauthkey", q, nil, &out); err != nil {
		return nil, err
	}
	resp := &v1.ListPreAuthKeysResponse{}
	for _, k := range out.PreAuthKeys {
		resp.PreAuthKeys = append(resp.PreAuthKeys, keyOut(k))
	}
	return resp, nil
}

// DebugCreateNode is POST /api/v1/debug/node.
func (s *Service) DebugCreateNode(ctx context.Context, req *v1.DebugCreateNodeRequest) (*v1.DebugCreateNodeResponse, error) {
	body := map[string]any{"user": req.GetUser(), "key": req.GetKey(), "name": req.GetName(), "routes": req.GetRoutes()}
	var out nodeReply
	if err := s.call(ctx, http.MethodPost, "/api/v1/debug/node", nil, body, &out); err != nil {
		return nil, err
	}
	n, err := s.node(ctx, &out.Node)
	return &v1.DebugCreateNodeResponse{Node: n}, err
}

// GetNode is GET /api/v1/node/{id}.
func (s *Service) GetNode(ctx context.Context, req *v1.GetNodeRequest) (*v1.GetNodeResponse, error) {
	var out nodeReply
	if err := s.call(ctx, http.MethodGet, pathf("/api/v1/node/%s", idPath(req.GetNodeId())), nil, nil, &out); err != nil {
		return nil, err
	}
	n, err := s.node(ctx, &out.Node)
	return &v1.GetNodeResponse{Node: n}, err
}

// SetTags is POST /api/v1/node/{id}/tags.
func (s *Service) SetTags(ctx context.Context, req *v1.SetTagsRequest) (*v1.SetTagsResponse, error) {
	body := map[string]any{"tags": nonNil(req.GetTags())}
	var out nodeReply
	if err := s.call(ctx, http.MethodPost, pathf("/api/v1/node/%s/tags", idPath(req.GetNodeId())), nil, body, &out); err != nil {
		return nil, err
	}
	n, err := s.node(ctx, &out.Node)
	return &v1.SetTagsResponse{Node: n}, err
}

// SetApprovedRoutes is POST /api/v1/node/{id}/approve_routes.
func (s *Service) SetApprovedRoutes(ctx context.Context, req *v1.SetApprovedRoutesRequest) (*v1.SetApprovedRoutesResponse, error) {
	body := map[string]any{"routes": nonNil(req.GetRoutes())}
	var out nodeReply
	if err := s.call(ctx, http.MethodPost, pathf("/api/v1/node/%s/approve_routes", idPath(req.GetNodeId())), nil, body, &out); err != nil {
		return nil, err
	}
	n, err := s.node(ctx, &out.Node)
	return &v1.SetApprovedRoutesResponse{Node: n}, err
}

// RegisterNode is POST /api/v1/node/register?user=&key=.
func (s *Service) RegisterNode(ctx context.Context, req *v1.RegisterNodeRequest) (*v1.RegisterNodeResponse, error) {
	q := url.Values{"user": {req.GetUser()}, "key": {req.GetKey()}}
	var out nodeReply
	if err := s.call(ctx, http.MethodPost, "/api/v1/node/register", q, nil, &out); err != nil {
		return nil, err
	}
	n, err := s.node(ctx, &out.Node)
	return &v1.RegisterNodeResponse{Node: n}, err
}

// DeleteNode is DELETE /api/v1/node/{id}.
func (s *Service) DeleteNode(ctx context.Context, req *v1.DeleteNodeRequest) (*v1.DeleteNodeResponse, error) {
	if err := s.call(ctx, http.MethodDelete, pathf("/api/v1/node/%s", idPath(req.GetNodeId())), nil, nil, nil); err != nil {
		return nil, err
	}
	return &v1.DeleteNodeResponse{}, nil
}

// ExpireNode is POST /api/v1/node/{id}/expire.
func (s *Service) ExpireNode(ctx context.Context, req *v1.ExpireNodeRequest) (*v1.ExpireNodeResponse, error) {
	body := map[string]any{"expiry": apiTime(req.GetExpiry()), "disableExpiry": req.GetDisableExpiry()}
	var out nodeReply
	if err := s.call(ctx, http.MethodPost, pathf("/api/v1/node/%s/expire", idPath(req.GetNodeId())), nil, body, &out); err != nil {
		return nil, err
	}
	n, err := s.node(ctx, &out.Node)
	return &v1.ExpireNodeResponse{Node: n}, err
}

// RenameNode is POST /api/v1/node/{id}/rename/{name}.
func (s *Service) RenameNode(ctx context.Context, req *v1.RenameNodeRequest) (*v1.RenameNodeResponse, error) {
	if req.GetNewName() == "" {
		return nil, status.Error(codes.InvalidArgument, "new_name is required")
	}
	var out nodeReply
	if err := s.call(ctx, http.MethodPost, pathf("/api/v1/node/%s/rename/%s", idPath(req.GetNodeId()), req.GetNewName()), nil, nil, &out); err != nil {
		return nil, err
	}
	n, err := s.node(ctx, &out.Node)
	return &v1.RenameNodeResponse{Node: n}, err
}

// ListNodes is GET /api/v1/node?user=.
func (s *Service) ListNodes(ctx context.Context, req *v1.ListNodesRequest) (*v1.ListNodesResponse, error) {
	q := url.Values{}
	if req.GetUser() != "" {
		q.Set("user", req.GetUser())
	}
	var out nodesReply
	if err := s.call(ctx, http.MethodGet, "/api/v1/node", q, nil, &out); err != nil {
		return nil, err
	}
	nodes, err := s.nodes(ctx, out.Nodes)
	return &v1.ListNodesResponse{Nodes: nodes}, err
}

// MoveNode is POST /api/v1/node/{id}/user.
func (s *Service) MoveNode(ctx context.Context, req *v1.MoveNodeRequest) (*v1.MoveNodeResponse, error) {
	body := map[string]string{"user": userRef(req.GetUser(), req, 2)}
	var out nodeReply
	if err := s.call(ctx, http.MethodPost, pathf("/api/v1/node/%s/user", idPath(req.GetNodeId())), nil, body, &out); err != nil {
		return nil, err
	}
	n, err := s.node(ctx, &out.Node)
	return &v1.MoveNodeResponse{Node: n}, err
}

// BackfillNodeIPs is POST /api/v1/node/backfillips?confirmed=.
func (s *Service) BackfillNodeIPs(ctx context.Context, req *v1.BackfillNodeIPsRequest) (*v1.BackfillNodeIPsResponse, error) {
	var out struct {
		Changes []string `json:"changes"`
	}
	q := url.Values{"confirmed": {strconv.FormatBool(req.GetConfirmed())}}
	if err := s.call(ctx, http.MethodPost, "/api/v1/node/backfillips", q, nil, &out); err != nil {
		return nil, err
	}
	return &v1.BackfillNodeIPsResponse{Changes: nilIfEmpty(out.Changes)}, nil
}

// GetRoutes is GET /api/v1/routes.
func (s *Service) GetRoutes(ctx context.Context, req *v1.GetRoutesRequest) (*v1.GetRoutesResponse, error) {
	var out routesReply
	if err := s.call(ctx, http.MethodGet, "/api/v1/routes", nil, nil, &out); err != nil {
		return nil, err
	}
	routes, err := s.routes(ctx, out.Routes)
	return &v1.GetRoutesResponse{Routes: routes}, err
}

// EnableRoute is POST /api/v1/routes/{id}/enable.
func (s *Service) EnableRoute(ctx context.Context, req *v1.EnableRouteRequest) (*v1.EnableRouteResponse, error) {
	if err := s.call(ctx, http.MethodPost, pathf("/api/v1/routes/%s/enable", idPath(req.GetRouteId())), nil, nil, nil); err != nil {
		return nil, err
	}
	return &v1.EnableRouteResponse{}, nil
}

// DisableRoute is POST /api/v1/routes/{id}/disable.
func (s *Service) DisableRoute(ctx context.Context, req *v1.DisableRouteRequest) (*v1.DisableRouteResponse, error) {
	if err := s.call(ctx, http.MethodPost, pathf("/api/v1/routes/%s/disable", idPath(req.GetRouteId())), nil, nil, nil); err != nil {
		return nil, err
	}
	return &v1.DisableRouteResponse{}, nil
}

// GetNodeRoutes is GET /api/v1/node/{id}/routes.
func (s *Service) GetNodeRoutes(ctx context.Context, req *v1.GetNodeRoutesRequest) (*v1.GetNodeRoutesResponse, error) {
	var out routesReply
	if err := s.call(ctx, http.MethodGet, pathf("/api/v1/node/%s/routes", idPath(req.GetNodeId())), nil, nil, &out); err != nil {
		return nil, err
	}
	routes, err := s.routes(ctx, out.Routes)
	return &v1.GetNodeRoutesResponse{Routes: routes}, err
}

// DeleteRoute is DELETE /api/v1/routes/{id}.
func (s *Service) DeleteRoute(ctx context.Context, req *v1.DeleteRouteRequest) (*v1.DeleteRouteResponse, error) {
	if err := s.call(ctx, http.MethodDelete, pathf("/api/v1/routes/%s", idPath(req.GetRouteId())), nil, nil, nil); err != nil {
		return nil, err
	}
	return &v1.DeleteRouteResponse{}, nil
}

// AuthRegister is POST /api/v1/auth/register.
func (s *Service) AuthRegister(ctx context.Context, req *v1.AuthRegisterRequest) (*v1.AuthRegisterResponse, error) {
	body := map[string]string{"user": req.GetUser(), "authId": req.GetAuthId()}
	var out nodeReply
	if err := s.call(ctx, http.MethodPost, "/api/v1/auth/register", nil, body, &out); err != nil {
		return nil, err
	}
	n, err := s.node(ctx, &out.Node)
	return &v1.AuthRegisterResponse{Node: n}, err
}

// AuthApprove is POST /api/v1/auth/approve.
func (s *Service) AuthApprove(ctx context.Context, req *v1.AuthApproveRequest) (*v1.AuthApproveResponse, error) {
	if err := s.call(ctx, http.MethodPost, "/api/v1/auth/approve", nil, map[string]string{"authId": req.GetAuthId()}, nil); err != nil {
		return nil, err
	}
	return &v1.AuthApproveResponse{}, nil
}

// AuthReject is POST /api/v1/auth/reject.
func (s *Service) AuthReject(ctx context.Context, req *v1.AuthRejectRequest) (*v1.AuthRejectResponse, error) {
	if err := s.call(ctx, http.MethodPost, "/api/v1/auth/reject", nil, map[string]string{"authId": req.GetAuthId()}, nil); err != nil {
		return nil, err
	}
	return &v1.AuthRejectResponse{}, nil
}

// CreateApiKey is POST /api/v1/apikey.
func (s *Service) CreateApiKey(ctx context.Context, req *v1.CreateApiKeyRequest) (*v1.CreateApiKeyResponse, error) {
	var out struct {
		APIKey string `json:"apiKey"`
	}
	if err := s.call(ctx, http.MethodPost, "/api/v1/apikey", nil, map[string]string{"expiration": apiTime(req.GetExpiration())}, &out); err != nil {
		return nil, err
	}
	return &v1.CreateApiKeyResponse{ApiKey: out.APIKey}, nil
}

// ExpireApiKey is POST /api/v1/apikey/expire.
func (s *Service) ExpireApiKey(ctx context.Context, req *v1.ExpireApiKeyRequest) (*v1.ExpireApiKeyResponse, error) {
	body := map[string]string{"prefix": req.GetPrefix(), "id": idPath(req.GetId())}
	if err := s.call(ctx, http.MethodPost, "/api/v1/apikey/expire", nil, body, nil); err != nil {
		return nil, err
	}
	return &v1.ExpireApiKeyResponse{}, nil
}

// ListApiKeys is GET /api/v1/apikey.
func (s *Service) ListApiKeys(ctx context.Context, req *v1.ListApiKeysRequest) (*v1.ListApiKeysResponse, error) {
	var out struct {
		APIKeys []*apiKeyJSON `json:"apiKeys"`
	}
	if err := s.call(ctx, http.MethodGet, "/api/v1/apikey", nil, nil, &out); err != nil {
		return nil, err
	}
	resp := &v1.ListApiKeysResponse{}
	for _, k := range out.APIKeys {
		resp.ApiKeys = append(resp.ApiKeys, apiKeyOut(k))
	}
	return resp, nil
}

// DeleteApiKey is DELETE /api/v1/apikey/{prefix}?id=. The route needs a
// prefix segment even when the key is named by ID, which the API looks at
// first.
func (s *Service) DeleteApiKey(ctx context.Context, req *v1.DeleteApiKeyRequest) (*v1.DeleteApiKeyResponse, error) {
	prefix, q := req.GetPrefix(), url.Values{}
	if req.GetId() != 0 {
		q.Set("id", idPath(req.GetId()))
		if prefix == "" {
			prefix = "-"
		}
	}
	if prefix == "" {
		return nil, status.Error(codes.InvalidArgument, "give the key's prefix or id")
	}
	if err := s.call(ctx, http.MethodDelete, pathf("/api/v1/apikey/%s", prefix), q, nil, nil); err != nil {
		return nil, err
	}
	return &v1.DeleteApiKeyResponse{}, nil
}

// GetPolicy is GET /api/v1/policy.
func (s *Service) GetPolicy(ctx context.Context, req *v1.GetPolicyRequest) (*v1.GetPolicyResponse, error) {
	var out policyReply
	if err := s.call(ctx, http.MethodGet, "/api/v1/policy", nil, nil, &out); err != nil {
		return nil, err
	}
	return &v1.GetPolicyResponse{Policy: out.Policy, UpdatedAt: timestamp(out.UpdatedAt)}, nil
}

// SetPolicy is PUT /api/v1/policy.
func (s *Service) SetPolicy(ctx context.Context, req *v1.SetPolicyRequest) (*v1.SetPolicyResponse, error) {
	var out policyReply
	if err := s.call(ctx, http.MethodPut, "/api/v1/policy", nil, map[string]string{"policy": req.GetPolicy()}, &out); err != nil {
		return nil, err
	}
	return &v1.SetPolicyResponse{Policy: out.Policy, UpdatedAt: timestamp(out.UpdatedAt)}, nil
}

// CheckPolicy is POST /api/v1/policy/check.
func (s *Service) CheckPolicy(ctx context.Context, req *v1.CheckPolicyRequest) (*v1.CheckPolicyResponse, error) {
	if err := s.call(ctx, http.MethodPost, "/api/v1/policy/check", nil, map[string]string{"policy": req.GetPolicy()}, nil); err != nil {
		return nil, err
	}
	return &v1.CheckPolicyResponse{}, nil
}

// Health is GET /api/v1/health.
func (s *Service) Health(ctx context.Context, req *v1.HealthRequest) (*v1.HealthResponse, error) {
	var out struct {
		DatabaseConnectivity bool `json:"databaseConnectivity"`
	}
	if err := s.call(ctx, http.MethodGet, "/api/v1/health", nil, nil, &out); err != nil {
		return nil, err
	}
	return &v1.HealthResponse{DatabaseConnectivity: out.DatabaseConnectivity}, nil
}

// node converts one node, with its whole pre-auth key.
func (s *Service) node(ctx context.Context, n *api.Node) (*v1.Node, error) {
	keys, err := s.keysFor(ctx, n.PreAuthKey != nil)
	if err != nil {
		return nil, err
	}
	return nodeOut(n, keys), nil
}

func (s *Service) nodes(ctx context.Context, ns []api.Node) ([]*v1.Node, error) {
	need := false
	for i := range ns {
		need = need || ns[i].PreAuthKey != nil
	}
	keys, err := s.keysFor(ctx, need)
	if err != nil {
		return nil, err
	}
	var out []*v1.Node
	for i := range ns {
		out = append(out, nodeOut(&ns[i], keys))
	}
	return out, nil
}

func (s *Service) routes(ctx context.Context, rs []api.Route) ([]*v1.Route, error) {
	need := false
	for i := range rs {
		need = need || rs[i].Node.PreAuthKey != nil
	}
	keys, err := s.keysFor(ctx, need)
	if err != nil {
		return nil, err
	}
	var out []*v1.Route
	for i := range rs {
		out = append(out, routeOut(&rs[i], keys))
	}
	return out, nil
}

// keysFor lists the pre-auth keys by ID when need is set: Headscale's node
// carries its whole key (owner, flags, times; the text redacted as the key
// list shows it), the REST node only its ID.
func (s *Service) keysFor(ctx context.Context, need bool) (map[uint64]*v1.PreAuthKey, error) {
	if !need {
		return nil, nil
	}
	var out keysReply
	if err := s.call(ctx, http.MethodGet, "/api/v1/preauthkey", nil, nil, &out); err != nil {
		return nil, err
	}
	keys := make(map[uint64]*v1.PreAuthKey, len(out.PreAuthKeys))
	for _, k := range out.PreAuthKeys {
		pk := keyOut(k)
		keys[pk.Id] = pk
	}
	return keys, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
