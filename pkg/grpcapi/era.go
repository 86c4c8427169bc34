package grpcapi

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
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

// era is the Headscale release range whose encoding a client speaks.
type era int

const (
	// eraCurrent: 0.26 and newer, this package's own definition.
	eraCurrent era = iota
	// era24: 0.24 and 0.25, where PreAuthKey.user is the owner's name and
	// PreAuthKey.id a decimal string.
	era24
	// era23: 0.23, which also has User.id as a decimal string.
	era23
)

// The first grpc-go release each Headscale release range was built with:
// 0.23.0 used v1.66, 0.24.0 to 0.25.1 v1.69, 0.26 v1.72 (each tag's
// go.mod). A Go program that imports Headscale's generated client gets at
// least its release's grpc-go, so a user agent below v1.72 is a client of
// 0.25 or older, below v1.69 one of 0.23.
var (
	grpcGo24      = [2]int{1, 69}
	grpcGoCurrent = [2]int{1, 72}
)

// clientEra tells which encoding the client of a call expects: from a
// string it sent where this definition has a number (only 0.25 and older
// do), and from the grpc-go version in its user agent.
func clientEra(ctx context.Context, req any) era {
	e := eraCurrent
	if m, ok := req.(message); ok && hasOldString(m) {
		e = era24
	}
	if v, ok := grpcGoVersion(ctx); ok {
		switch {
		case less(v, grpcGo24):
			return era23
		case less(v, grpcGoCurrent):
			return era24
		}
	}
	return e
}

// hasOldString tells whether req carries a string at a number where this
// definition has an integer: a request of 0.25 or older.
func hasOldString(req message) bool {
	switch req.(type) {
	case *v1.RenameUserRequest, *v1.DeleteUserRequest, *v1.CreatePreAuthKeyRequest,
		*v1.ExpirePreAuthKeyRequest, *v1.ListPreAuthKeysRequest:
		_, ok := oldString(req, 1)
		return ok
	case *v1.MoveNodeRequest:
		_, ok := oldString(req, 2)
		return ok
	}
	return false
}

// grpcGoVersion reads grpc-go's major and minor version from the call's
// user agent ("[application's own] grpc-go/1.66.0": grpc-go puts its own
// last).
func grpcGoVersion(ctx context.Context) ([2]int, bool) {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, ua := range md.Get("user-agent") {
		i := strings.LastIndex(ua, "grpc-go/")
		if i < 0 {
			continue
		}
		after := ua[i+len("grpc-go/"):]
		major, rest, _ := strings.Cut(after, ".")
		minor, _, _ := strings.Cut(rest, ".")
		a, err1 := strconv.Atoi(major)
		b, err2 := strconv.Atoi(minor)
		if err1 == nil && err2 == nil {
			return [2]int{a, b}, true
		}
	}
	return [2]int{}, false
}

func less(a, b [2]int) bool { return a[0] < b[0] || a[0] == b[0] && a[1] < b[1] }

// eras answers clients of 0.25 and older in their encoding: the reply is
// encoded here, with the fields whose type changed since rewritten
// (downgrade), and sent as it is by the codec.
func (s *Service) eras(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	e := clientEra(ctx, req)
	resp, err := handler(ctx, req)
	if err != nil || e == eraCurrent {
		return resp, err
	}
	m, ok := resp.(message)
	if !ok {
		return resp, nil
	}
	b, err := downgrade(m.ProtoReflect(), e)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding the reply for an older client: %v", err)
	}
	return rawReply(b), nil
}

// downgrade encodes m as a client of era e reads it: PreAuthKey.user as
// the owner's name and PreAuthKey.id as decimal text (0.25 and older),
// User.id as decimal text (0.23), wherever those messages appear (a node's
// key and owner, a route's node, lists of them). Other fields are encoded
// as they are; field order on the wire does not matter to a decoder.
func downgrade(m protoreflect.Message, e era) ([]byte, error) {
	rest := m.Interface()
	rest = proto.Clone(rest)
	rm := rest.ProtoReflect()
	var extra []byte
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		num := fd.Number()
		switch {
		case m.Descriptor().FullName() == "headscale.v1.PreAuthKey" && num == 1:
			rm.Clear(fd)
			extra = appendString(extra, num, v.Message().Interface().(*v1.User).GetName())
		case m.Descriptor().FullName() == "headscale.v1.PreAuthKey" && num == 2,
			m.Descriptor().FullName() == "headscale.v1.User" && num == 1 && e == era23:
			rm.Clear(fd)
			extra = appendString(extra, num, strconv.FormatUint(v.Uint(), 10))
		case fd.Kind() == protoreflect.MessageKind && fd.Message().ParentFile().Package() == "headscale.v1":
			rm.Clear(fd)
			var msgs []protoreflect.Message
			if fd.IsList() {
				for i := range v.List().Len() {
					msgs = append(msgs, v.List().Get(i).Message())
				}
			} else {
				msgs = append(msgs, v.Message())
			}
			for _, sub := range msgs {
				var b []byte
				if b, err = downgrade(sub, e); err != nil {
					return false
				}
				extra = protowire.AppendTag(extra, num, protowire.BytesType)
				extra = protowire.AppendBytes(extra, b)
			}
		}
		return true
	})
	if err != nil {
		return nil, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(rest)
	if err != nil {
		return nil, err
	}
	return append(b, extra...), nil
}

// appendString appends a string field; proto3 leaves an empty one out.
func appendString(b []byte, num protoreflect.FieldNumber, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
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
