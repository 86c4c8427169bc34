package grpcapi

import (
	"context"
	"testing"

	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// TestClientEra: the era of a call comes from grpc-go's version in the
// user agent (the last one, which grpc-go appends after an application's
// own), and from a string sent where today's definition has a number.
func TestClientEra(t *testing.T) {
	oldCreate := &v1.CreatePreAuthKeyRequest{}
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, "alice")
	if err := proto.Unmarshal(b, oldCreate); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ua   string
		req  any
		want era
	}{
		{"0.29", "grpc-go/1.81.1", &v1.ListNodesRequest{}, eraCurrent},
		{"0.26", "grpc-go/1.72.0", &v1.ListNodesRequest{}, eraCurrent},
		{"0.25", "grpc-go/1.69.0", &v1.ListNodesRequest{}, era24},
		{"0.23", "grpc-go/1.66.0", &v1.ListNodesRequest{}, era23},
		{"0.23 with a name", "grpc-go/1.66.0", oldCreate, era23},
		{"application agent first", "hsadmin/2.0 grpc-go/1.69.2", &v1.ListNodesRequest{}, era24},
		{"application agent naming grpc-go", "grpc-go/1.66.0 grpc-go/1.85.0", &v1.ListNodesRequest{}, eraCurrent},
		{"no grpc-go", "grpc-python/1.60.0", &v1.ListNodesRequest{}, eraCurrent},
		{"no grpc-go, a user name", "grpc-python/1.60.0", oldCreate, era24},
		{"no agent, today's request", "", &v1.CreatePreAuthKeyRequest{User: 3}, eraCurrent},
		{"grpc-go 2", "grpc-go/2.0.0", &v1.ListNodesRequest{}, eraCurrent},
		{"garbage version", "grpc-go/x.y", &v1.ListNodesRequest{}, eraCurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.ua != "" {
				ctx = metadata.NewIncomingContext(ctx, metadata.Pairs("user-agent", tt.ua))
			}
			if got := clientEra(ctx, tt.req); got != tt.want {
				t.Errorf("clientEra = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestOldString: a string at a number declared as an integer is read back
// from the unknown fields; a well-typed or absent field is not.
func TestOldString(t *testing.T) {
	var m v1.MoveNodeRequest
	b := protowire.AppendTag(nil, 1, protowire.VarintType)
	b = protowire.AppendVarint(b, 7)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, "bob")
	if err := proto.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if s, ok := oldString(&m, 2); !ok || s != "bob" || m.GetNodeId() != 7 || m.GetUser() != 0 {
		t.Errorf("oldString(2) = %q %v (node %d, user %d)", s, ok, m.GetNodeId(), m.GetUser())
	}
	if _, ok := oldString(&m, 1); ok {
		t.Error("oldString(1) found a string in a well-typed field")
	}
	if _, ok := oldString(&v1.MoveNodeRequest{User: 3}, 2); ok {
		t.Error("oldString found a string in a message without unknown fields")
	}
}
