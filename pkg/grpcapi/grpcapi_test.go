package grpcapi_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/testca"
	"github.com/hsctl/headscale/pkg/api"
	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"github.com/hsctl/headscale/pkg/pendingreg"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"tailscale.com/types/key"
)

// bearer sends an API key the way Headscale's CLI does: metadata
// "authorization: Bearer <key>" on every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false so the key also goes over h2c.
func (bearer) RequireTransportSecurity() bool { return false }

// grpcServer is a server with its gRPC API on, and how to reach it.
type grpcServer struct {
	*servertest.Server
	target string                           // host:port of grpc_listen_addr
	creds  credentials.TransportCredentials // what a client dials it with
	tls    bool
}

// startGRPC starts a server whose gRPC API is served over TLS (a
// self-signed certificate made here) or, with useTLS false, h2c
// (grpc_allow_insecure). The policy is in database mode, so SetPolicy
// works.
func startGRPC(t *testing.T, useTLS bool) *grpcServer {
	t.Helper()
	dir := t.TempDir()
	extra := "policy:\n  mode: database\n"
	creds := insecure.NewCredentials()
	if useTLS {
		pool, _, _ := testca.Files(t, dir, "127.0.0.1", "localhost")
		extra += fmt.Sprintf("tls_cert_path: %s/cert.pem\ntls_key_path: %s/key.pem\n", dir, dir)
		creds = credentials.NewTLS(&tls.Config{RootCAs: pool})
	} else {
		extra += "grpc_allow_insecure: true\n"
	}
	ts := servertest.Start(t, servertest.Engine(t, pg, servertest.Options{Dir: dir, ExtraYAML: extra}))
	addr := ts.GRPCAddr()
	if addr == nil {
		t.Fatal("the gRPC API is off")
	}
	return &grpcServer{Server: ts, target: addr.String(), creds: creds, tls: useTLS}
}

// client dials the gRPC API with key ("" sends none).
func (gs *grpcServer) client(t *testing.T, key string) v1.HeadscaleServiceClient {
	t.Helper()
	opts := []grpc.DialOption{grpc.WithTransportCredentials(gs.creds)}
	if key != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(key)))
	}
	conn, err := grpc.NewClient(gs.target, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return v1.NewHeadscaleServiceClient(conn)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails t unless err is a gRPC status with code.
func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: %v, want %s", what, err, code)
	}
}

func must[T any](t *testing.T, what string) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
}

// TestEveryMethod calls every RPC of the service over TLS and over h2c
// against a real server and checks what each answers against the REST
// API's view. Over TLS no node can be registered (the harness speaks the
// control protocol over plain HTTP), so the node calls there are made for
// a node that does not exist and must answer NotFound; over h2c they run
// on real nodes.
func TestEveryMethod(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		name := "h2c"
		if useTLS {
			name = "tls"
		}
		t.Run(name, func(t *testing.T) {
			gs := startGRPC(t, useTLS)
			c := gs.client(t, gs.CreateAPIKey(t, time.Time{}))
			called := exercise(t, gs, c)
			var missing []string
			for _, m := range v1.HeadscaleService_ServiceDesc.Methods {
				if !called[m.MethodName] {
					missing = append(missing, m.MethodName)
				}
			}
			if len(missing) > 0 {
				t.Errorf("methods not exercised: %v", missing)
			}
		})
	}
}

// exercise runs the scenario and returns the methods it called.
func exercise(t *testing.T, gs *grpcServer, c v1.HeadscaleServiceClient) map[string]bool {
	ctx := ctxT(t)
	called := map[string]bool{}
	call := func(name string) { called[name] = true }

	call("Health")
	if h := must[*v1.HealthResponse](t, "Health")(c.Health(ctx, &v1.HealthRequest{})); !h.GetDatabaseConnectivity() {
		t.Error("Health: no database connectivity")
	}

	// Users.
	call("CreateUser")
	alice := must[*v1.CreateUserResponse](t, "CreateUser")(c.CreateUser(ctx, &v1.CreateUserRequest{
		Name: "alice", DisplayName: "Alice A", Email: "alice@example.com", PictureUrl: "https://example.com/a.png"})).GetUser()
	if alice.GetId() == 0 || alice.GetName() != "alice" || alice.GetDisplayName() != "Alice A" || alice.GetEmail() != "alice@example.com" ||
		alice.GetProfilePicUrl() != "https://example.com/a.png" || alice.GetCreatedAt().AsTime().IsZero() {
		t.Errorf("CreateUser: %v", alice)
	}
	_, err := c.CreateUser(ctx, &v1.CreateUserRequest{Name: "alice"})
	wantCode(t, "CreateUser of an existing name", err, codes.AlreadyExists)
	_, err = c.CreateUser(ctx, &v1.CreateUserRequest{})
	wantCode(t, "CreateUser without a name", err, codes.InvalidArgument)
	bob := must[*v1.CreateUserResponse](t, "CreateUser bob")(c.CreateUser(ctx, &v1.CreateUserRequest{Name: "bob"})).GetUser()

	call("ListUsers")
	for _, tc := range []struct {
		req  *v1.ListUsersRequest
		want []string
	}{
		{&v1.ListUsersRequest{}, []string{"alice", "bob"}},
		{&v1.ListUsersRequest{Name: "bob"}, []string{"bob"}},
		{&v1.ListUsersRequest{Id: alice.GetId()}, []string{"alice"}},
		{&v1.ListUsersRequest{Email: "alice@example.com"}, []string{"alice"}},
		{&v1.ListUsersRequest{Name: "nobody"}, nil},
	} {
		var got []string
		for _, u := range must[*v1.ListUsersResponse](t, "ListUsers")(c.ListUsers(ctx, tc.req)).GetUsers() {
			got = append(got, u.GetName())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("ListUsers(%v) = %v, want %v", tc.req, got, tc.want)
		}
	}
	call("GetUser")
	if u := must[*v1.GetUserResponse](t, "GetUser")(c.GetUser(ctx, &v1.GetUserRequest{Name: "bob"})).GetUser(); u.GetId() != bob.GetId() {
		t.Errorf("GetUser(bob) = %v", u)
	}
	_, err = c.GetUser(ctx, &v1.GetUserRequest{Name: "nobody"})
	wantCode(t, "GetUser of nobody", err, codes.NotFound)
	call("RenameUser")
	if u := must[*v1.RenameUserResponse](t, "RenameUser")(c.RenameUser(ctx, &v1.RenameUserRequest{OldId: bob.GetId(), NewName: "robert"})).GetUser(); u.GetName() != "robert" || u.GetId() != bob.GetId() {
		t.Errorf("RenameUser: %v", u)
	}
	_, err = c.RenameUser(ctx, &v1.RenameUserRequest{OldId: 999, NewName: "x"})
	wantCode(t, "RenameUser of a missing user", err, codes.NotFound)

	// The policy (database mode): tag:ci belongs to alice.
	policy := `{"tagOwners": {"tag:ci": ["alice@"]}, "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}`
	call("CheckPolicy")
	must[*v1.CheckPolicyResponse](t, "CheckPolicy")(c.CheckPolicy(ctx, &v1.CheckPolicyRequest{Policy: policy}))
	_, err = c.CheckPolicy(ctx, &v1.CheckPolicyRequest{Policy: `{"acls": [`})
	wantCode(t, "CheckPolicy of broken JSON", err, codes.InvalidArgument)
	call("SetPolicy")
	set := must[*v1.SetPolicyResponse](t, "SetPolicy")(c.SetPolicy(ctx, &v1.SetPolicyRequest{Policy: policy}))
	if set.GetPolicy() != policy || set.GetUpdatedAt().AsTime().IsZero() {
		t.Errorf("SetPolicy: %v", set)
	}
	call("GetPolicy")
	if got := must[*v1.GetPolicyResponse](t, "GetPolicy")(c.GetPolicy(ctx, &v1.GetPolicyRequest{})); got.GetPolicy() != policy ||
		!got.GetUpdatedAt().AsTime().Equal(set.GetUpdatedAt().AsTime()) {
		t.Errorf("GetPolicy: %v, want what SetPolicy stored (%v)", got, set)
	}

	// Pre-auth keys.
	call("CreatePreAuthKey")
	exp := time.Now().Add(2 * time.Hour).Truncate(time.Second)
	created := must[*v1.CreatePreAuthKeyResponse](t, "CreatePreAuthKey")(c.CreatePreAuthKey(ctx, &v1.CreatePreAuthKeyRequest{
		User: alice.GetId(), Reusable: true, Expiration: timestamppb.New(exp)})).GetPreAuthKey()
	gs.NoteSecret(created.GetKey())
	if created.GetId() == 0 || !strings.HasPrefix(created.GetKey(), "hskey-auth-") || !created.GetReusable() ||
		created.GetUser().GetId() != alice.GetId() || !created.GetExpiration().AsTime().Equal(exp) {
		t.Errorf("CreatePreAuthKey: %v", created)
	}
	tagged := must[*v1.CreatePreAuthKeyResponse](t, "CreatePreAuthKey tagged")(c.CreatePreAuthKey(ctx, &v1.CreatePreAuthKeyRequest{
		AclTags: []string{"tag:ci"}, Ephemeral: true})).GetPreAuthKey()
	gs.NoteSecret(tagged.GetKey())
	if tagged.GetUser() != nil || !slices.Equal(tagged.GetAclTags(), []string{"tag:ci"}) || !tagged.GetEphemeral() {
		t.Errorf("CreatePreAuthKey with tags only: %v", tagged)
	}
	_, err = c.CreatePreAuthKey(ctx, &v1.CreatePreAuthKeyRequest{})
	wantCode(t, "CreatePreAuthKey with neither user nor tags", err, codes.InvalidArgument)
	call("ListPreAuthKeys")
	keys := must[*v1.ListPreAuthKeysResponse](t, "ListPreAuthKeys")(c.ListPreAuthKeys(ctx, &v1.ListPreAuthKeysRequest{})).GetPreAuthKeys()
	if len(keys) != 2 || strings.Contains(keys[0].GetKey()+keys[1].GetKey(), created.GetKey()) {
		t.Errorf("ListPreAuthKeys: %v (want 2 keys, secrets redacted)", keys)
	}
	if ks := must[*v1.ListPreAuthKeysResponse](t, "ListPreAuthKeys of alice")(c.ListPreAuthKeys(ctx, &v1.ListPreAuthKeysRequest{User: alice.GetId()})).GetPreAuthKeys(); len(ks) != 1 || ks[0].GetId() != created.GetId() {
		t.Errorf("ListPreAuthKeys(user alice): %v", ks)
	}

	// Nodes.
	nodeID := uint64(4242) // over TLS: a node that does not exist
	if !gs.tls {
		n := gs.RegisterNode(t, created.GetKey(), "laptop")
		fmt.Sscan(n.ID, &nodeID)
		gs.RegisterNode(t, created.GetKey(), "desktop")
	}
	nodeCall := func(what string, err error) bool {
		t.Helper()
		if gs.tls {
			wantCode(t, what+" of a missing node", err, codes.NotFound)
			return false
		}
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return false
		}
		return true
	}
	call("ListNodes")
	nodes := must[*v1.ListNodesResponse](t, "ListNodes")(c.ListNodes(ctx, &v1.ListNodesRequest{})).GetNodes()
	if !gs.tls {
		var rest struct {
			Nodes []api.Node `json:"nodes"`
		}
		json.Unmarshal(gs.MustAPI(t, "GET", "/api/v1/node", ""), &rest)
		if len(nodes) != 2 || len(rest.Nodes) != 2 {
			t.Fatalf("ListNodes: %d nodes, REST %d, want 2", len(nodes), len(rest.Nodes))
		}
		for i, n := range nodes {
			r := rest.Nodes[i]
			if fmt.Sprint(n.GetId()) != r.ID || n.GetName() != r.Name || n.GetGivenName() != r.GivenName || n.GetNodeKey() != r.NodeKey ||
				n.GetMachineKey() != r.MachineKey || !slices.Equal(n.GetIpAddresses(), r.IPAddresses) || n.GetUser().GetName() != "alice" ||
				n.GetRegisterMethod() != v1.RegisterMethod_REGISTER_METHOD_AUTH_KEY || n.GetCreatedAt() == nil {
				t.Errorf("ListNodes[%d] = %v, REST says %+v", i, n, r)
			}
			// The whole key, as Headscale gives it: owner and flags.
			if k := n.GetPreAuthKey(); k.GetId() != created.GetId() || !k.GetReusable() || k.GetUser().GetName() != "alice" {
				t.Errorf("ListNodes[%d].pre_auth_key = %v", i, k)
			}
		}
	} else if len(nodes) != 0 {
		t.Errorf("ListNodes: %v, want none", nodes)
	}
	if ns := must[*v1.ListNodesResponse](t, "ListNodes of robert")(c.ListNodes(ctx, &v1.ListNodesRequest{User: "robert"})).GetNodes(); len(ns) != 0 {
		t.Errorf("ListNodes(robert) = %v, want none", ns)
	}
	call("GetNode")
	if n, err := c.GetNode(ctx, &v1.GetNodeRequest{NodeId: nodeID}); nodeCall("GetNode", err) && n.GetNode().GetName() != "laptop" {
		t.Errorf("GetNode: %v", n)
	}
	call("RenameNode")
	if n, err := c.RenameNode(ctx, &v1.RenameNodeRequest{NodeId: nodeID, NewName: "work-laptop"}); nodeCall("RenameNode", err) && n.GetNode().GetGivenName() != "work-laptop" {
		t.Errorf("RenameNode: %v", n)
	}
	_, err = c.RenameNode(ctx, &v1.RenameNodeRequest{NodeId: nodeID})
	wantCode(t, "RenameNode without a name", err, codes.InvalidArgument)
	call("SetApprovedRoutes")
	approved := []string{"10.1.0.0/24", "10.2.0.0/24"}
	if n, err := c.SetApprovedRoutes(ctx, &v1.SetApprovedRoutesRequest{NodeId: nodeID, Routes: approved}); nodeCall("SetApprovedRoutes", err) &&
		!slices.Equal(n.GetNode().GetApprovedRoutes(), approved) {
		t.Errorf("SetApprovedRoutes: %v", n)
	}
	_, err = c.SetApprovedRoutes(ctx, &v1.SetApprovedRoutesRequest{NodeId: nodeID, Routes: []string{"not a prefix"}})
	wantCode(t, "SetApprovedRoutes of a non-prefix", err, map[bool]codes.Code{false: codes.InvalidArgument, true: codes.NotFound}[gs.tls])

	// Routes with IDs (0.23 to 0.25): the node's approved prefixes.
	call("GetRoutes")
	routes := must[*v1.GetRoutesResponse](t, "GetRoutes")(c.GetRoutes(ctx, &v1.GetRoutesRequest{})).GetRoutes()
	routeIDs := map[string]uint64{"10.1.0.0/24": 4242, "10.2.0.0/24": 4243}
	if !gs.tls {
		if len(routes) != 2 {
			t.Fatalf("GetRoutes: %v, want the 2 approved routes", routes)
		}
		for _, r := range routes {
			if !r.GetEnabled() || r.GetNode().GetId() != nodeID || r.GetId() == 0 {
				t.Errorf("GetRoutes: %v", r)
			}
			routeIDs[r.GetPrefix()] = r.GetId()
		}
	}
	call("GetNodeRoutes")
	if rs, err := c.GetNodeRoutes(ctx, &v1.GetNodeRoutesRequest{NodeId: nodeID}); nodeCall("GetNodeRoutes", err) && len(rs.GetRoutes()) != 2 {
		t.Errorf("GetNodeRoutes: %v", rs)
	}
	// enabled lists the enabled routes' prefixes.
	enabled := func() []string {
		var out []string
		for _, r := range must[*v1.GetRoutesResponse](t, "GetRoutes")(c.GetRoutes(ctx, &v1.GetRoutesRequest{})).GetRoutes() {
			if r.GetEnabled() {
				out = append(out, r.GetPrefix())
			}
		}
		return out
	}
	call("EnableRoute")
	if _, err := c.EnableRoute(ctx, &v1.EnableRouteRequest{RouteId: routeIDs["10.1.0.0/24"]}); nodeCall("EnableRoute", err) && !slices.Equal(enabled(), approved) {
		t.Errorf("EnableRoute of an enabled route: enabled %v", enabled())
	}
	call("DisableRoute")
	if _, err := c.DisableRoute(ctx, &v1.DisableRouteRequest{RouteId: routeIDs["10.1.0.0/24"]}); nodeCall("DisableRoute", err) && !slices.Equal(enabled(), approved[1:]) {
		t.Errorf("DisableRoute: enabled %v", enabled())
	}
	call("DeleteRoute")
	if _, err := c.DeleteRoute(ctx, &v1.DeleteRouteRequest{RouteId: routeIDs["10.2.0.0/24"]}); nodeCall("DeleteRoute", err) {
		if rs := must[*v1.GetRoutesResponse](t, "GetRoutes")(c.GetRoutes(ctx, &v1.GetRoutesRequest{})).GetRoutes(); len(rs) != 0 {
			t.Errorf("DeleteRoute: routes left %v", rs)
		}
	}

	call("ExpireNode")
	later := time.Now().Add(48 * time.Hour).Truncate(time.Second)
	if n, err := c.ExpireNode(ctx, &v1.ExpireNodeRequest{NodeId: nodeID, Expiry: timestamppb.New(later)}); nodeCall("ExpireNode", err) && !n.GetNode().GetExpiry().AsTime().Equal(later) {
		t.Errorf("ExpireNode at %v: %v", later, n)
	}
	if n, err := c.ExpireNode(ctx, &v1.ExpireNodeRequest{NodeId: nodeID, DisableExpiry: true}); nodeCall("ExpireNode disable", err) && n.GetNode().GetExpiry() != nil {
		t.Errorf("ExpireNode with disable_expiry: %v", n)
	}
	call("MoveNode")
	if n, err := c.MoveNode(ctx, &v1.MoveNodeRequest{NodeId: nodeID, User: bob.GetId()}); nodeCall("MoveNode", err) && n.GetNode().GetUser().GetName() != "robert" {
		t.Errorf("MoveNode: %v", n)
	}
	call("SetTags")
	if n, err := c.SetTags(ctx, &v1.SetTagsRequest{NodeId: nodeID, Tags: []string{"tag:ci"}}); nodeCall("SetTags", err) {
		node := n.GetNode()
		if !slices.Equal(node.GetTags(), []string{"tag:ci"}) || !slices.Equal(node.GetForcedTags(), []string{"tag:ci"}) || !slices.Equal(node.GetValidTags(), []string{"tag:ci"}) {
			t.Errorf("SetTags: %v (want tag:ci in tags, forced_tags and valid_tags)", node)
		}
	}
	_, err = c.SetTags(ctx, &v1.SetTagsRequest{NodeId: nodeID, Tags: []string{"Not A Tag"}})
	wantCode(t, "SetTags of a malformed tag", err, map[bool]codes.Code{false: codes.InvalidArgument, true: codes.NotFound}[gs.tls])
	call("BackfillNodeIPs")
	if _, err := c.BackfillNodeIPs(ctx, &v1.BackfillNodeIPsRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("BackfillNodeIPs unconfirmed: %v, want InvalidArgument", err)
	}
	if b := must[*v1.BackfillNodeIPsResponse](t, "BackfillNodeIPs")(c.BackfillNodeIPs(ctx, &v1.BackfillNodeIPsRequest{Confirmed: true})); len(b.GetChanges()) != 0 {
		t.Errorf("BackfillNodeIPs: %v, want no changes", b)
	}
	call("DeleteNode")
	if _, err := c.DeleteNode(ctx, &v1.DeleteNodeRequest{NodeId: nodeID}); nodeCall("DeleteNode", err) {
		_, err := c.GetNode(ctx, &v1.GetNodeRequest{NodeId: nodeID})
		wantCode(t, "GetNode after DeleteNode", err, codes.NotFound)
	}

	// What needs a pending web registration or SSH check (the success
	// paths below): a malformed or unknown auth ID is NotFound.
	call("RegisterNode")
	_, err = c.RegisterNode(ctx, &v1.RegisterNodeRequest{User: "alice", Key: "mkey:0123"})
	wantCode(t, "RegisterNode", err, codes.NotFound)
	_, err = c.RegisterNode(ctx, &v1.RegisterNodeRequest{User: "alice", Key: pendingreg.NewID()})
	wantCode(t, "RegisterNode of an unknown ID", err, codes.NotFound)
	call("DebugCreateNode")
	_, err = c.DebugCreateNode(ctx, &v1.DebugCreateNodeRequest{User: "alice", Key: "0123", Name: "x"})
	wantCode(t, "DebugCreateNode", err, codes.InvalidArgument)
	call("AuthRegister")
	_, err = c.AuthRegister(ctx, &v1.AuthRegisterRequest{User: "alice", AuthId: "abc"})
	wantCode(t, "AuthRegister", err, codes.NotFound)
	_, err = c.AuthRegister(ctx, &v1.AuthRegisterRequest{User: "alice", AuthId: pendingreg.NewID()})
	wantCode(t, "AuthRegister of an unknown ID", err, codes.NotFound)
	// Web registrations completed by each call, and one rejected (over
	// h2c: the test's Noise client does not trust the TLS certificate).
	for name, register := range map[string]func(id string) (*v1.Node, error){
		"RegisterNode": func(id string) (*v1.Node, error) {
			r, err := c.RegisterNode(ctx, &v1.RegisterNodeRequest{User: "alice", Key: id})
			return r.GetNode(), err
		},
		"AuthRegister": func(id string) (*v1.Node, error) {
			r, err := c.AuthRegister(ctx, &v1.AuthRegisterRequest{User: "alice", AuthId: id})
			return r.GetNode(), err
		},
	} {
		if gs.tls {
			break
		}
		id := servertest.AuthID(gs.WebClient(t, key.MachinePrivate{}, "grpc-web").Start(t))
		if n, err := register(id); err != nil || n.GetUser().GetName() != "alice" || n.GetRegisterMethod() != v1.RegisterMethod_REGISTER_METHOD_CLI {
			t.Errorf("%s of a pending registration: %v %v", name, n, err)
		}
	}
	if !gs.tls {
		rejected := servertest.AuthID(gs.WebClient(t, key.MachinePrivate{}, "grpc-web").Start(t))
		must[*v1.AuthRejectResponse](t, "AuthReject of a registration")(c.AuthReject(ctx, &v1.AuthRejectRequest{AuthId: rejected}))
		_, err = c.AuthApprove(ctx, &v1.AuthApproveRequest{AuthId: servertest.AuthID(gs.WebClient(t, key.MachinePrivate{}, "grpc-web").Start(t))})
		wantCode(t, "AuthApprove of a registration", err, codes.InvalidArgument)
	}
	call("AuthApprove")
	_, err = c.AuthApprove(ctx, &v1.AuthApproveRequest{AuthId: "abc"})
	wantCode(t, "AuthApprove of an unknown ID", err, codes.NotFound)
	call("AuthReject")
	_, err = c.AuthReject(ctx, &v1.AuthRejectRequest{})
	wantCode(t, "AuthReject without an ID", err, codes.InvalidArgument)

	// Expiring and deleting keys.
	call("ExpirePreAuthKey")
	must[*v1.ExpirePreAuthKeyResponse](t, "ExpirePreAuthKey")(c.ExpirePreAuthKey(ctx, &v1.ExpirePreAuthKeyRequest{Id: tagged.GetId()}))
	// 0.26 and 0.27 name the key by its text within its user.
	must[*v1.ExpirePreAuthKeyResponse](t, "ExpirePreAuthKey by user and key")(c.ExpirePreAuthKey(ctx, &v1.ExpirePreAuthKeyRequest{Id: alice.GetId(), Key: created.GetKey()}))
	for _, k := range must[*v1.ListPreAuthKeysResponse](t, "ListPreAuthKeys")(c.ListPreAuthKeys(ctx, &v1.ListPreAuthKeysRequest{})).GetPreAuthKeys() {
		if k.GetExpiration().AsTime().After(time.Now()) {
			t.Errorf("key %d not expired: %v", k.GetId(), k)
		}
	}
	_, err = c.ExpirePreAuthKey(ctx, &v1.ExpirePreAuthKeyRequest{Id: bob.GetId(), Key: created.GetKey()})
	wantCode(t, "ExpirePreAuthKey within another user", err, codes.NotFound)
	call("DeletePreAuthKey")
	must[*v1.DeletePreAuthKeyResponse](t, "DeletePreAuthKey")(c.DeletePreAuthKey(ctx, &v1.DeletePreAuthKeyRequest{Id: tagged.GetId()}))
	_, err = c.DeletePreAuthKey(ctx, &v1.DeletePreAuthKeyRequest{Id: tagged.GetId()})
	wantCode(t, "DeletePreAuthKey twice", err, codes.NotFound)

	// API keys.
	call("CreateApiKey")
	newKey := must[*v1.CreateApiKeyResponse](t, "CreateApiKey")(c.CreateApiKey(ctx, &v1.CreateApiKeyRequest{Expiration: timestamppb.New(exp)})).GetApiKey()
	gs.NoteSecret(newKey)
	if !strings.HasPrefix(newKey, "hskey-api-") {
		t.Errorf("CreateApiKey: %q", newKey)
	}
	call("ListApiKeys")
	apiKeys := must[*v1.ListApiKeysResponse](t, "ListApiKeys")(c.ListApiKeys(ctx, &v1.ListApiKeysRequest{})).GetApiKeys()
	var mine *v1.ApiKey
	for _, k := range apiKeys {
		if strings.HasPrefix(newKey, strings.TrimSuffix(k.GetPrefix(), "-***")) {
			mine = k
		}
	}
	if len(apiKeys) != 2 || mine == nil || !mine.GetExpiration().AsTime().Equal(exp) || strings.Contains(fmt.Sprint(apiKeys), newKey) {
		t.Fatalf("ListApiKeys: %v (want 2, the new one by its prefix, no secret)", apiKeys)
	}
	call("ExpireApiKey")
	must[*v1.ExpireApiKeyResponse](t, "ExpireApiKey")(c.ExpireApiKey(ctx, &v1.ExpireApiKeyRequest{Prefix: mine.GetPrefix()}))
	_, err = gs.client(t, newKey).Health(ctx, &v1.HealthRequest{})
	wantCode(t, "a call with the expired key", err, codes.Unauthenticated)
	call("DeleteApiKey")
	must[*v1.DeleteApiKeyResponse](t, "DeleteApiKey")(c.DeleteApiKey(ctx, &v1.DeleteApiKeyRequest{Id: mine.GetId()}))
	if ks := must[*v1.ListApiKeysResponse](t, "ListApiKeys")(c.ListApiKeys(ctx, &v1.ListApiKeysRequest{})).GetApiKeys(); len(ks) != 1 {
		t.Errorf("after DeleteApiKey: %v", ks)
	}
	_, err = c.DeleteApiKey(ctx, &v1.DeleteApiKeyRequest{})
	wantCode(t, "DeleteApiKey of nothing", err, codes.InvalidArgument)

	call("DeleteUser")
	if !gs.tls {
		_, err = c.DeleteUser(ctx, &v1.DeleteUserRequest{Id: alice.GetId()})
		wantCode(t, "DeleteUser of a user with nodes", err, codes.AlreadyExists) // the REST API's 409
	}
	must[*v1.DeleteUserResponse](t, "DeleteUser")(c.DeleteUser(ctx, &v1.DeleteUserRequest{Id: bob.GetId()}))
	_, err = c.DeleteUser(ctx, &v1.DeleteUserRequest{Id: bob.GetId()})
	wantCode(t, "DeleteUser twice", err, codes.NotFound)
	return called
}

// TestAuthentication: every call needs a valid API key in the
// authorization metadata, checked as the REST API checks it, including
// the slowing down of a client that keeps sending wrong keys.
func TestAuthentication(t *testing.T) {
	gs := startGRPC(t, false)
	ctx := ctxT(t)
	good := gs.client(t, gs.CreateAPIKey(t, time.Time{}))
	if _, err := good.ListUsers(ctx, &v1.ListUsersRequest{}); err != nil {
		t.Fatalf("with a valid key: %v", err)
	}
	expired := gs.CreateAPIKey(t, time.Time{})
	expiredClient := gs.client(t, expired)
	none := gs.client(t, "")
	tests := []struct {
		name   string
		client v1.HeadscaleServiceClient
		md     []string
		msg    string
	}{
		{"no metadata", none, nil, "missing Authorization"},
		{"not Bearer", none, []string{"authorization", "Basic YWxpY2U6c2VjcmV0"}, "must be Bearer"},
		{"wrong key", none, []string{"authorization", "Bearer hskey-api-abcdefghijkl-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"}, "invalid API key"},
		{"not a key", none, []string{"authorization", "Bearer hello"}, "invalid API key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cctx := ctx
			if tt.md != nil {
				cctx = metadata.AppendToOutgoingContext(ctx, tt.md...)
			}
			_, err := tt.client.ListUsers(cctx, &v1.ListUsersRequest{})
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), tt.msg) {
				t.Errorf("%v, want Unauthenticated saying %q", err, tt.msg)
			}
		})
	}
	t.Run("expired key", func(t *testing.T) {
		gs.MustAPI(t, "POST", "/api/v1/apikey/expire", fmt.Sprintf(`{"prefix":%q}`, expired))
		_, err := expiredClient.ListUsers(ctx, &v1.ListUsersRequest{})
		if status.Code(err) != codes.Unauthenticated || !strings.Contains(status.Convert(err).Message(), "expired") {
			t.Errorf("%v, want Unauthenticated: API key expired", err)
		}
	})
	t.Run("throttled", func(t *testing.T) {
		wrong := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer hskey-api-abcdefghijkl-wrongwrongwrongwrongwrongwrongwrongwrongwrongwr")
		var err error
		for range api.KeyFailureBurst + 1 {
			_, err = none.ListUsers(wrong, &v1.ListUsersRequest{})
		}
		if status.Code(err) != codes.ResourceExhausted || !strings.Contains(status.Convert(err).Message(), "retry in") {
			t.Errorf("after %d wrong keys: %v, want ResourceExhausted", api.KeyFailureBurst+1, err)
		}
		// The client is slowed down even with a good key until its budget
		// refills, as on the REST API.
		if _, err := good.ListUsers(ctx, &v1.ListUsersRequest{}); status.Code(err) != codes.ResourceExhausted {
			t.Errorf("a good key from the throttled client: %v, want ResourceExhausted", err)
		}
	})
}

// TestUnixSocket: the unix socket serves the same gRPC API without a key
// (local trust, as Headscale's socket), beside its REST API.
func TestUnixSocket(t *testing.T) {
	ts := servertest.Start(t, servertest.Engine(t, pg, servertest.Options{}))
	if ts.GRPCAddr() != nil {
		t.Errorf("gRPC listener at %v without TLS or grpc_allow_insecure", ts.GRPCAddr())
	}
	conn, err := grpc.NewClient("unix://"+ts.Config.UnixSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c := v1.NewHeadscaleServiceClient(conn)
	ctx := ctxT(t)
	u := must[*v1.CreateUserResponse](t, "CreateUser over the socket")(c.CreateUser(ctx, &v1.CreateUserRequest{Name: "carol"})).GetUser()
	if u.GetName() != "carol" {
		t.Errorf("CreateUser: %v", u)
	}
	// Server reflection lists the service, as on Headscale's socket.
	stream, err := grpc_reflection_v1.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&grpc_reflection_v1.ServerReflectionRequest{MessageRequest: &grpc_reflection_v1.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	listed, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	stream.CloseSend()
	if !strings.Contains(listed.String(), "headscale.v1.HeadscaleService") {
		t.Errorf("reflection lists %v", listed)
	}
	// The REST API on the same socket sees it.
	if b := ts.MustAPI(t, "GET", "/api/v1/user?name=carol", ""); !strings.Contains(string(b), `"carol"`) {
		t.Errorf("REST after a gRPC CreateUser: %s", b)
	}
}

// TestRESTOnGRPCPort: the gRPC listener answers the REST API too (API key
// required), so this server's CLI reaches it with Headscale's scheme-less
// HEADSCALE_CLI_ADDRESS=host:50443.
func TestRESTOnGRPCPort(t *testing.T) {
	gs := startGRPC(t, true)
	key := gs.CreateAPIKey(t, time.Time{})
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	get := func(key string) int {
		req, _ := http.NewRequest("GET", "https://"+gs.target+"/api/v1/user", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get(key); code != http.StatusOK {
		t.Errorf("GET /api/v1/user with a key: %d", code)
	}
	if code := get(""); code != http.StatusUnauthorized {
		t.Errorf("GET /api/v1/user without a key: %d", code)
	}
}

// TestSuiteOnPostgres runs this package's tests again with every server
// on PostgreSQL (pgtest.Cluster.RerunOnPostgres).
func TestSuiteOnPostgres(t *testing.T) {
	pg.RerunOnPostgres(t, "TestSuiteOnPostgres")
}
