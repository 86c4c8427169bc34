// Package grpcapi serves Headscale's gRPC admin API,
// headscale.v1.HeadscaleService (pkg/headscalev1), so that Headscale's CLI
// in remote mode (HEADSCALE_CLI_ADDRESS=host:50443) and programs built on
// Headscale's generated client work against this server.
//
// Every RPC is answered by the REST API v1 (pkg/api): the service turns the
// request into the REST call of the same operation, runs it in process
// against the API's handler, and turns the JSON answer into the reply
// message, or its problem status into a gRPC status. So the two APIs cannot
// drift apart: the same validation, the same state changes, the same
// messages. The API key is checked by the same code as the REST API's
// (api.API.Authenticate), with its throttling of repeated failures, from
// the call's `authorization: Bearer <key>` metadata; on the unix socket
// there is no check (local trust, as for REST and in Headscale).
//
// Headscale 0.23 to 0.25 used other field types at a few numbers (user and
// key IDs and owners as strings); era.go recognises those clients and
// answers them in their own encoding. It knows them by a string sent where
// today's definition has a number, or by the grpc-go version in the user
// agent (below 1.72: 0.25 or older; below 1.69: 0.23), which holds for
// Headscale's CLI of each release and for Go programs that import that
// release's generated client without raising grpc-go. A client of a
// 0.25-era definition that is recognised neither way (another language,
// or a Go program built with a newer grpc-go) gets today's encoding for
// calls whose request looks the same in both eras (ListNodes, GetNode,
// ...): it cannot decode a pre-auth key's owner inside a node, and reads
// 0.23's user IDs as absent.
package grpcapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/hsctl/headscale/pkg/api"
	v1 "github.com/hsctl/headscale/pkg/headscalev1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Options configure a Service.
type Options struct {
	// API answers every call: the REST API v1's routes without
	// authentication (api.API.Handler).
	API http.Handler
	// Authenticate, when set, guards every call: it wraps a handler the way
	// the REST API's key check does (api.API.Authenticate), and the call
	// goes ahead only if the wrapped handler runs. Nil: local trust (the
	// unix socket).
	Authenticate func(http.Handler) http.Handler
	// Logger gets the service's log lines.
	Logger *slog.Logger
}

// Service implements headscale.v1.HeadscaleService on top of the REST API.
type Service struct {
	v1.UnimplementedHeadscaleServiceServer
	api  http.Handler
	auth func(http.Handler) http.Handler
	log  *slog.Logger
}

// New returns the service.
func New(opts Options) *Service {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Service{api: opts.API, auth: opts.Authenticate, log: opts.Logger}
}

// NewServer returns a gRPC server with the service registered, its API key
// check (when Options.Authenticate is set) and the handling of older
// clients. It is served through its ServeHTTP by an HTTP/2 server (TLS, or
// h2c with grpc_allow_insecure and on the unix socket); see pkg/server.
func NewServer(opts Options) *grpc.Server {
	s := New(opts)
	srv := grpc.NewServer(
		grpc.ForceServerCodec(codec{}),
		grpc.ChainUnaryInterceptor(s.authenticate, s.eras),
	)
	v1.RegisterHeadscaleServiceServer(srv, s)
	return srv
}

// IsGRPC tells whether r is a gRPC call (HTTP/2, content type
// application/grpc*), for a listener that serves gRPC and other HTTP side
// by side.
func IsGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// authenticate lets a call through only if the REST API's key check would
// let the same request through: the `authorization` metadata becomes the
// Authorization header, the peer's address the remote address (for the
// throttling of repeated failures).
func (s *Service) authenticate(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if s.auth == nil {
		return handler(ctx, req)
	}
	r, err := s.request(ctx, http.MethodGet, "/api/v1/", nil, nil)
	if err != nil {
		return nil, err
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("authorization"); len(v) > 0 {
			r.Header.Set("Authorization", v[0])
		}
	}
	passed := false
	rec := newRecorder()
	s.auth(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { passed = true })).ServeHTTP(rec, r)
	if !passed {
		s.log.Debug("gRPC call refused", "method", info.FullMethod, "remote", r.RemoteAddr, "status", rec.status)
		return nil, rec.err()
	}
	return handler(ctx, req)
}

// request builds the in-process REST request for a call: path (escape each
// variable segment with url.PathEscape), query and a JSON body (nil: none).
func (s *Service) request(ctx context.Context, method, path string, query url.Values, body any) (*http.Request, error) {
	var rd io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encoding the request: %v", err)
		}
		rd = bytes.NewReader(b)
	}
	target := "http://headscale" + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	r, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "building the request: %v", err)
	}
	if body != nil {
		r.Header.Set("Content-Type", "application/json")
	}
	r.RemoteAddr = "@" // not TCP: the API's throttling treats it as one shared client
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		r.RemoteAddr = p.Addr.String()
	}
	return r, nil
}

// call runs one REST operation in process and decodes its JSON answer into
// out (nil: ignore it). A problem answer becomes the gRPC status its HTTP
// status maps to, with the problem's detail as the message.
func (s *Service) call(ctx context.Context, method, path string, query url.Values, body, out any) error {
	r, err := s.request(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	rec := newRecorder()
	s.api.ServeHTTP(rec, r)
	if rec.status >= 300 {
		return rec.err()
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
		return status.Errorf(codes.Internal, "reading the API's answer to %s %s: %v", method, path, err)
	}
	return nil
}

// recorder is the in-process ResponseWriter of one REST call.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

func (w *recorder) Header() http.Header { return w.header }

func (w *recorder) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

func (w *recorder) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

// err turns a REST problem answer into a gRPC status.
func (w *recorder) err() error {
	var p struct {
		Detail string `json:"detail"`
	}
	msg := strings.TrimSpace(w.body.String())
	if json.Unmarshal(w.body.Bytes(), &p) == nil && p.Detail != "" {
		msg = p.Detail
	}
	if msg == "" {
		msg = http.StatusText(w.status)
	}
	return status.Error(Code(w.status), msg)
}

// Code is the gRPC code for a REST API answer's HTTP status: Headscale's
// gateway mapping (api.GRPCCode), and for the statuses it did not have,
// ResourceExhausted for a client over a limit (413, 429) and Unavailable
// for 503.
func Code(httpStatus int) codes.Code {
	switch httpStatus {
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	}
	return codes.Code(api.GRPCCode(httpStatus))
}

// idPath is a positive ID as a path segment; 0 (unset) becomes a segment
// the API refuses with its own message.
func idPath(id uint64) string { return strconv.FormatUint(id, 10) }

// pathf builds a REST path from format with each argument escaped as one
// path segment.
func pathf(format string, segs ...string) string {
	args := make([]any, len(segs))
	for i, s := range segs {
		args[i] = url.PathEscape(s)
	}
	return fmt.Sprintf(format, args...)
}
