//lint:file-ignore SA1019 x/net's HTTP/2 server is the operator's fallback (noise.http2_server: x/net), and net/http has no way to serve HTTP/2 on one given connection

package control

import (
	"context"
	"net"
	"net/http"
	"time"

	"golang.org/x/net/http2"
)

// xnetServer serves Noise connections with golang.org/x/net/http2's
// server instead of h2serve, with the same stream limit and timeouts.
type xnetServer struct {
	srv *http2.Server
}

func newXNetServer() *xnetServer {
	return &xnetServer{srv: &http2.Server{
		MaxConcurrentStreams: 32,
		IdleTimeout:          noiseIdleTimeout,
		WriteByteTimeout:     60 * time.Second,
	}}
}

// serve serves HTTP/2 on conn until it closes.
func (x *xnetServer) serve(ctx context.Context, conn net.Conn, h http.Handler) {
	x.srv.ServeConn(conn, &http2.ServeConnOpts{Context: ctx, Handler: h})
}
