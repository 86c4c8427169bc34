package grpcapi

import (
	"context"
	"fmt"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// message is a request or reply message.
type message = proto.Message

// oldString is the string a Headscale 0.23–0.25 client sent at number num
// of req where this definition declares a number (a user's or key's ID):
// protobuf decoding keeps a field of the wrong wire type among the
// message's unknown fields.
func oldString(req message, num int32) (string, bool) {
	b := req.ProtoReflect().GetUnknown()
	found, val := false, ""
	for len(b) > 0 {
		n, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			return "", false
		}
		b = b[l:]
		vl := protowire.ConsumeFieldValue(n, typ, b)
		if vl < 0 {
			return "", false
		}
		if n == protowire.Number(num) && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b[:vl])
			if utf8.Valid(v) {
				found, val = true, string(v) // the last one wins, as in protobuf
			}
		}
		b = b[vl:]
	}
	return val, found
}

// eras answers clients of older Headscale releases in their encoding.
func (s *Service) eras(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(ctx, req)
}

// rawReply is a reply already encoded (for an older client).
type rawReply []byte

// codec is the gRPC server's codec: protobuf, except that a rawReply is
// sent as it is.
type codec struct{}

func (codec) Marshal(v any) ([]byte, error) {
	switch m := v.(type) {
	case rawReply:
		return m, nil
	case proto.Message:
		return proto.Marshal(m)
	}
	return nil, fmt.Errorf("grpcapi: cannot encode %T", v)
}

func (codec) Unmarshal(data []byte, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("grpcapi: cannot decode into %T", v)
	}
	return proto.Unmarshal(data, m)
}

// Name is the content subtype the codec serves ("proto", gRPC's default).
func (codec) Name() string { return "proto" }
