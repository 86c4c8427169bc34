package server

import (
	"fmt"
	"net"
	"net/http"

	"github.com/hsctl/headscale/pkg/grpcapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
)

// Headscale's gRPC API (pkg/grpcapi) is served on grpc_listen_addr when a
// TLS certificate is configured (with it, HTTP/2 over TLS) or
// grpc_allow_insecure is set (h2c, plain text), as Headscale does; with
// neither it is off and start-up says so once. The same listener answers
// other HTTP requests with the REST API (/api/v1, API key required), so
// this server's CLI reaches it with Headscale's scheme-less
// HEADSCALE_CLI_ADDRESS=host:50443 too. The unix socket answers gRPC
// (h2c) beside its REST API, without a key (local trust, as Headscale's
// socket does, with server reflection as there), for Headscale's CLI and
// local programs.

// grpcMode is how the gRPC API is served: "tls", "insecure", or "" (off).
func (s *Server) grpcMode() string {
	switch {
	case s.cfg.GRPCListenAddr == "":
		return ""
	case s.cfg.TLS.Enabled():
		return "tls"
	case s.cfg.GRPCAllowInsecure:
		return "insecure"
	}
	return ""
}

// listenGRPC binds grpc_listen_addr when the gRPC API is on, and logs once
// how it is served or why it is off.
func (s *Server) listenGRPC() error {
	mode := s.grpcMode()
	if mode == "" {
		why := "grpc_listen_addr is empty"
		if s.cfg.GRPCListenAddr != "" {
			why = "no TLS certificate (tls_cert_path or tls_letsencrypt_hostname) and grpc_allow_insecure is false"
		}
		s.log.Info("gRPC API off: "+why, "grpc_listen_addr", s.cfg.GRPCListenAddr)
		return nil
	}
	ln, err := net.Listen("tcp", s.cfg.GRPCListenAddr)
	if err != nil {
		return fmt.Errorf("listening on grpc_listen_addr %s: %w", s.cfg.GRPCListenAddr, err)
	}
	s.grpcLn = ln
	if mode == "insecure" {
		s.log.Warn("gRPC API served without TLS (grpc_allow_insecure): API keys cross the network in plain text",
			"grpc_listen_addr", ln.Addr().String())
	}
	return nil
}

// GRPCAddr is the gRPC listener's address (after Listen), nil when the
// gRPC API is off.
func (s *Server) GRPCAddr() net.Addr {
	if s.grpcLn == nil {
		return nil
	}
	return s.grpcLn.Addr()
}

// grpcServers builds the gRPC API for grpc_listen_addr (API key required)
// and for the unix socket (local trust) over the current REST API.
func (s *Server) grpcServers() (remote, local *grpc.Server) {
	log := s.log.With("component", "grpc")
	remote = grpcapi.NewServer(grpcapi.Options{API: s.api.Handler(), Authenticate: s.api.Authenticate, Logger: log})
	local = grpcapi.NewServer(grpcapi.Options{API: s.api.Handler(), Logger: log})
	// As on Headscale's socket: tools such as grpcurl can list the
	// service there.
	reflection.Register(local)
	return remote, local
}

// withGRPC sends gRPC calls to g and every other request to h.
func withGRPC(g *grpc.Server, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if grpcapi.IsGRPC(r) {
			g.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// grpcHandler is grpc_listen_addr's routes: gRPC, and the REST API as on
// the main listener.
func (s *Server) grpcHandler(g *grpc.Server) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/api/v1/", s.apiHandler())
	return withGRPC(g, mux)
}

// serveGRPC serves the gRPC listener with srv: TLS with the certificate
// listen_addr serves (the same source, so renewals reach both; offering
// HTTP/2, which gRPC needs), or h2c.
func (s *Server) serveGRPC(srv *http.Server, ln net.Listener) error {
	if s.grpcMode() == "tls" {
		srv.TLSConfig = s.certs.TLSConfig("h2", "http/1.1")
		return srv.ServeTLS(ln, "", "")
	}
	srv.Protocols = h2c()
	return srv.Serve(ln)
}

// h2c is HTTP/1.1 and HTTP/2 without TLS (prior knowledge, as gRPC
// clients speak it).
func h2c() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return p
}
