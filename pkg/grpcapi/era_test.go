package grpcapi_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/bufbuild/protocompile"
	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The messages of Headscale 0.24/0.25 and of 0.23 where they differ from
// today's on the wire (only those the tests below send or read), written
// from the releases' field numbers and types. A test encodes requests and
// decodes replies with these, as those releases' CLIs do.
const (
	schema25 = `syntax = "proto3";
package era25;
import "google/protobuf/timestamp.proto";
message User { uint64 id = 1; string name = 2; google.protobuf.Timestamp created_at = 3; }
message PreAuthKey { string user = 1; string id = 2; string key = 3; bool reusable = 4; bool ephemeral = 5; bool used = 6;
  google.protobuf.Timestamp expiration = 7; google.protobuf.Timestamp created_at = 8; repeated string acl_tags = 9; }
message Node { uint64 id = 1; string machine_key = 2; string node_key = 3; string disco_key = 4; repeated string ip_addresses = 5;
  string name = 6; User user = 7; google.protobuf.Timestamp last_seen = 8; google.protobuf.Timestamp expiry = 10;
  PreAuthKey pre_auth_key = 11; google.protobuf.Timestamp created_at = 12; int32 register_method = 13;
  repeated string forced_tags = 18; repeated string invalid_tags = 19; repeated string valid_tags = 20; string given_name = 21; bool online = 22; }
message Route { uint64 id = 1; Node node = 2; string prefix = 3; bool advertised = 4; bool enabled = 5; bool is_primary = 6; }
message CreatePreAuthKeyRequest { string user = 1; bool reusable = 2; bool ephemeral = 3; google.protobuf.Timestamp expiration = 4; repeated string acl_tags = 5; }
message CreatePreAuthKeyResponse { PreAuthKey pre_auth_key = 1; }
message ExpirePreAuthKeyRequest { string user = 1; string key = 2; }
message Empty {}
message ListPreAuthKeysRequest { string user = 1; }
message ListPreAuthKeysResponse { repeated PreAuthKey pre_auth_keys = 1; }
message ListNodesRequest { string user = 1; }
message ListNodesResponse { repeated Node nodes = 1; }
message MoveNodeRequest { uint64 node_id = 1; string user = 2; }
message MoveNodeResponse { Node node = 1; }
message GetRoutesResponse { repeated Route routes = 1; }
`
	schema23 = `syntax = "proto3";
package era23;
import "google/protobuf/timestamp.proto";
message User { string id = 1; string name = 2; google.protobuf.Timestamp created_at = 3; }
message PreAuthKey { string user = 1; string id = 2; string key = 3; }
message Node { uint64 id = 1; string name = 6; User user = 7; PreAuthKey pre_auth_key = 11; string given_name = 21; }
message CreateUserRequest { string name = 1; }
message CreateUserResponse { User user = 1; }
message RenameUserRequest { string old_name = 1; string new_name = 2; }
message RenameUserResponse { User user = 1; }
message DeleteUserRequest { string name = 1; }
message Empty {}
message ListUsersResponse { repeated User users = 1; }
message ListNodesRequest { string user = 1; }
message ListNodesResponse { repeated Node nodes = 1; }
`
)

// oldSchema compiles src and returns a constructor for its messages.
func oldSchema(t *testing.T, name, src string) func(msg string) *dynamicpb.Message {
	t.Helper()
	c := protocompile.Compiler{Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{
		Accessor: protocompile.SourceAccessorFromMap(map[string]string{name + ".proto": src}),
	})}
	files, err := c.Compile(context.Background(), name+".proto")
	if err != nil {
		t.Fatal(err)
	}
	msgs := files[0].Messages()
	return func(msg string) *dynamicpb.Message {
		d := msgs.ByName(protoreflect.Name(msg))
		if d == nil {
			t.Fatalf("no message %s in %s", msg, name)
		}
		return dynamicpb.NewMessage(d)
	}
}

// set fills a dynamic message's fields by name.
func set(m *dynamicpb.Message, kv ...any) *dynamicpb.Message {
	for i := 0; i < len(kv); i += 2 {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(kv[i].(string)))
		switch v := kv[i+1].(type) {
		case *timestamppb.Timestamp:
			m.Set(fd, protoreflect.ValueOfMessage(v.ProtoReflect()))
		default:
			m.Set(fd, protoreflect.ValueOf(v))
		}
	}
	return m
}

// get reads a field by a dotted path of names ("node.user.name"; a list
// field gives its first element).
func get(m protoreflect.Message, path string) any {
	var v protoreflect.Value
	for name := range strings.SplitSeq(path, ".") {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			return fmt.Sprintf("<no field %s>", name)
		}
		v = m.Get(fd)
		if fd.IsList() {
			if v.List().Len() == 0 {
				return nil
			}
			v = v.List().Get(0)
		}
		if fd.Kind() == protoreflect.MessageKind {
			m = v.Message()
		}
	}
	return v.Interface()
}

// rawClient makes gRPC calls over h2c with a chosen user agent and
// messages encoded by hand, as an older Headscale CLI sends them.
type rawClient struct {
	hc     *http.Client
	target string
	ua     string
	key    string
}

func newRawClient(t *testing.T, gs *grpcServer, ua, key string) *rawClient {
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: p}
	t.Cleanup(tr.CloseIdleConnections)
	return &rawClient{hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}, target: gs.target, ua: ua, key: key}
}

// call sends req to method and decodes the reply into resp; it returns
// the call's gRPC status code and message.
func (c *rawClient) call(t *testing.T, method string, req, resp proto.Message) (codes.Code, string) {
	t.Helper()
	body, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var frame bytes.Buffer
	frame.WriteByte(0)
	binary.Write(&frame, binary.BigEndian, uint32(len(body)))
	frame.Write(body)
	r, _ := http.NewRequest("POST", "http://"+c.target+"/headscale.v1.HeadscaleService/"+method, &frame)
	r.Header.Set("Content-Type", "application/grpc")
	r.Header.Set("TE", "trailers")
	r.Header.Set("User-Agent", c.ua)
	r.Header.Set("Authorization", "Bearer "+c.key)
	res, err := c.hc.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	out, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	grpcStatus, msg := res.Trailer.Get("Grpc-Status"), res.Trailer.Get("Grpc-Message")
	if grpcStatus == "" { // a trailers-only answer
		grpcStatus, msg = res.Header.Get("Grpc-Status"), res.Header.Get("Grpc-Message")
	}
	var code codes.Code
	fmt.Sscan(grpcStatus, &code)
	if code != codes.OK {
		return code, msg
	}
	if len(out) < 5 || int(binary.BigEndian.Uint32(out[1:5])) != len(out)-5 {
		t.Fatalf("%s: reply is not one gRPC message: % x", method, out)
	}
	if err := proto.Unmarshal(out[5:], resp); err != nil {
		t.Fatalf("%s: the reply does not decode as that release's %s: %v", method, resp.ProtoReflect().Descriptor().Name(), err)
	}
	return code, msg
}

// TestHeadscale025Client: a client of Headscale 0.24/0.25 (grpc-go 1.69)
// names users by name where today's definition has IDs, and reads a
// pre-auth key's owner as a name and its ID as text; it is answered in
// that encoding, also inside nodes and routes.
func TestHeadscale025Client(t *testing.T) {
	gs := startGRPC(t, false)
	key := gs.CreateAPIKey(t, time.Time{})
	aliceID := gs.CreateUser(t, "alice")
	gs.CreateUser(t, "bob")
	old := oldSchema(t, "era25", schema25)
	c := newRawClient(t, gs, "grpc-go/1.69.0", key)

	created := old("CreatePreAuthKeyResponse")
	exp := timestamppb.New(time.Now().Add(time.Hour))
	if code, msg := c.call(t, "CreatePreAuthKey", set(old("CreatePreAuthKeyRequest"), "user", "alice", "reusable", true, "expiration", exp), created); code != codes.OK {
		t.Fatalf("CreatePreAuthKey for user alice: %s %s", code, msg)
	}
	authKey, _ := get(created, "pre_auth_key.key").(string)
	gs.NoteSecret(authKey)
	if get(created, "pre_auth_key.user") != "alice" || get(created, "pre_auth_key.id") != "1" || !strings.HasPrefix(authKey, "hskey-auth-") {
		t.Errorf("CreatePreAuthKey: %v", created)
	}
	keys := old("ListPreAuthKeysResponse")
	if code, msg := c.call(t, "ListPreAuthKeys", set(old("ListPreAuthKeysRequest"), "user", "alice"), keys); code != codes.OK || get(keys, "pre_auth_keys.user") != "alice" {
		t.Errorf("ListPreAuthKeys of alice: %s %s %v", code, msg, keys)
	}
	node := gs.RegisterNode(t, authKey, "laptop")
	gs.MustAPI(t, "POST", "/api/v1/node/"+node.ID+"/approve_routes", `{"routes":["10.9.0.0/24"]}`)

	nodes := old("ListNodesResponse")
	if code, msg := c.call(t, "ListNodes", old("ListNodesRequest"), nodes); code != codes.OK {
		t.Fatalf("ListNodes: %s %s", code, msg)
	}
	if get(nodes, "nodes.name") != "laptop" || get(nodes, "nodes.user.name") != "alice" || get(nodes, "nodes.user.id") != mustUint(aliceID) ||
		get(nodes, "nodes.pre_auth_key.user") != "alice" || get(nodes, "nodes.pre_auth_key.id") != "1" || get(nodes, "nodes.pre_auth_key.reusable") != true {
		t.Errorf("ListNodes: %v", nodes)
	}
	routes := old("GetRoutesResponse")
	if code, msg := c.call(t, "GetRoutes", old("Empty"), routes); code != codes.OK || get(routes, "routes.prefix") != "10.9.0.0/24" ||
		get(routes, "routes.node.pre_auth_key.user") != "alice" {
		t.Errorf("GetRoutes: %s %s %v", code, msg, routes)
	}
	moved := old("MoveNodeResponse")
	if code, msg := c.call(t, "MoveNode", set(old("MoveNodeRequest"), "node_id", mustUint(node.ID), "user", "bob"), moved); code != codes.OK || get(moved, "node.user.name") != "bob" {
		t.Errorf("MoveNode to bob: %s %s %v", code, msg, moved)
	}
	if code, msg := c.call(t, "ExpirePreAuthKey", set(old("ExpirePreAuthKeyRequest"), "user", "alice", "key", authKey), old("Empty")); code != codes.OK {
		t.Errorf("ExpirePreAuthKey by user name and key: %s %s", code, msg)
	}
	if code, _ := c.call(t, "ExpirePreAuthKey", set(old("ExpirePreAuthKeyRequest"), "user", "bob", "key", authKey), old("Empty")); code != codes.NotFound {
		t.Errorf("ExpirePreAuthKey of alice's key named within bob: %s, want NotFound", code)
	}

	// Today's encoding is what such a client cannot read: the owner of a
	// node's key arrives as a nested message where it wants text.
	current := newRawClient(t, gs, "grpc-go/1.81.1", key)
	var reply v1.ListNodesResponse
	if code, msg := current.call(t, "ListNodes", &v1.ListNodesRequest{}, &reply); code != codes.OK {
		t.Fatalf("ListNodes as 0.29: %s %s", code, msg)
	}
	b, _ := proto.Marshal(&reply)
	if err := proto.Unmarshal(b, nodes); err == nil && get(nodes, "nodes.pre_auth_key.user") == "alice" {
		t.Error("a 0.25 client reads today's encoding: the era handling would not be needed")
	}
	if reply.GetNodes()[0].GetPreAuthKey().GetUser().GetName() != "alice" {
		t.Errorf("ListNodes as 0.29: %v", reply.GetNodes())
	}

	// Without a grpc-go user agent, a string where today's definition has
	// a number still tells a 0.25 request apart.
	other := newRawClient(t, gs, "grpc-python/1.60.0", key)
	created = old("CreatePreAuthKeyResponse")
	if code, msg := other.call(t, "CreatePreAuthKey", set(old("CreatePreAuthKeyRequest"), "user", "bob", "expiration", exp), created); code != codes.OK || get(created, "pre_auth_key.user") != "bob" {
		t.Errorf("CreatePreAuthKey with a user name, no grpc-go: %s %s %v", code, msg, created)
	}
	gs.NoteSecret(get(created, "pre_auth_key.key").(string))
}

// TestHeadscale023Client: a client of Headscale 0.23 (grpc-go 1.66) names
// users by name in rename and delete and reads user IDs as text.
func TestHeadscale023Client(t *testing.T) {
	gs := startGRPC(t, false)
	key := gs.CreateAPIKey(t, time.Time{})
	old := oldSchema(t, "era23", schema23)
	c := newRawClient(t, gs, "grpc-go/1.66.0", key)

	created := old("CreateUserResponse")
	if code, msg := c.call(t, "CreateUser", set(old("CreateUserRequest"), "name", "dave"), created); code != codes.OK || get(created, "user.name") != "dave" || get(created, "user.id") != "1" {
		t.Fatalf("CreateUser: %s %s %v", code, msg, created)
	}
	renamed := old("RenameUserResponse")
	if code, msg := c.call(t, "RenameUser", set(old("RenameUserRequest"), "old_name", "dave", "new_name", "dan"), renamed); code != codes.OK ||
		get(renamed, "user.name") != "dan" || get(renamed, "user.id") != "1" {
		t.Errorf("RenameUser by name: %s %s %v", code, msg, renamed)
	}
	authKey := gs.CreatePreAuthKey(t, "1", false, time.Time{})
	gs.RegisterNode(t, authKey, "box")
	nodes := old("ListNodesResponse")
	if code, msg := c.call(t, "ListNodes", old("ListNodesRequest"), nodes); code != codes.OK || get(nodes, "nodes.user.id") != "1" ||
		get(nodes, "nodes.user.name") != "dan" || get(nodes, "nodes.pre_auth_key.user") != "dan" {
		t.Errorf("ListNodes: %s %s %v", code, msg, nodes)
	}
	gs.MustAPI(t, "DELETE", "/api/v1/node/1", "")
	if code, msg := c.call(t, "DeleteUser", set(old("DeleteUserRequest"), "name", "dan"), old("Empty")); code != codes.OK {
		t.Errorf("DeleteUser by name: %s %s", code, msg)
	}
	users := old("ListUsersResponse")
	if code, msg := c.call(t, "ListUsers", old("Empty"), users); code != codes.OK || get(users, "users") != nil {
		t.Errorf("ListUsers after the delete: %s %s %v", code, msg, users)
	}
	if code, _ := c.call(t, "DeleteUser", set(old("DeleteUserRequest"), "name", "nobody"), old("Empty")); code != codes.NotFound {
		t.Errorf("DeleteUser of an unknown name: %s, want NotFound", code)
	}
}

func mustUint(s string) uint64 {
	var v uint64
	fmt.Sscan(s, &v)
	return v
}
