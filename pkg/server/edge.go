package server

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/limit"
)

// The HTTP listeners' limits. Everything up to the Noise handshake is
// reachable by anyone, so a client that sends its request slowly, not at
// all, or too big is answered (where HTTP allows) and closed. Connections
// that are hijacked (the /ts2021 Noise upgrade, DERP) are no longer subject
// to them: net/http clears the deadlines when it hands a connection over,
// and map streams and DERP have keep-alives of their own.
const (
	// ReadHeaderTimeout bounds reading a request's headers (and a TLS
	// handshake); a slow-loris client is closed after it.
	ReadHeaderTimeout = 10 * time.Second
	// ReadTimeout bounds reading a whole request, body included, on the
	// main listener. net/http also ends a request's context once it has
	// passed, so no API call may run longer.
	ReadTimeout = time.Minute
	// WriteTimeout bounds writing a response on the main listener.
	WriteTimeout = time.Minute
	// IdleTimeout closes a kept-alive connection with no request.
	IdleTimeout = 2 * time.Minute
	// MaxHeaderBytes bounds a request's headers; larger ones are answered
	// 431 and closed. (net/http reads up to 4 KiB more before refusing.)
	MaxHeaderBytes = 64 << 10
)

// httpLimits are the limits above, as one server applies them (zero: none).
type httpLimits struct {
	ReadHeader, Read, Write, Idle time.Duration
	MaxHeaderBytes                int
}

// mainHTTPLimits apply to the public listener; the metrics listener and
// the unix socket leave out the whole-request limits (a CPU profile runs
// for as long as asked, a CLI command on a large database may take a
// while).
var (
	mainHTTPLimits  = httpLimits{ReadHeader: ReadHeaderTimeout, Read: ReadTimeout, Write: WriteTimeout, Idle: IdleTimeout, MaxHeaderBytes: MaxHeaderBytes}
	localHTTPLimits = httpLimits{ReadHeader: ReadHeaderTimeout, Idle: IdleTimeout, MaxHeaderBytes: MaxHeaderBytes}
)

// httpServer returns an http.Server for h with limits l whose limit hits
// are counted and logged through rep, and the listener to serve it on.
func httpServer(h http.Handler, l httpLimits, ln net.Listener, rep *limit.Reporter, log *slog.Logger) (*http.Server, net.Listener) {
	w := &connWatch{limits: l, rep: rep}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
			if c, ok := r.Context().Value(watchKey{}).(*watchedConn); ok {
				c.started.Store(true)
			}
			h.ServeHTTP(rw, r)
		}),
		ReadHeaderTimeout: l.ReadHeader,
		ReadTimeout:       l.Read,
		WriteTimeout:      l.Write,
		IdleTimeout:       l.Idle,
		MaxHeaderBytes:    l.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if wc := watched(c); wc != nil {
				return context.WithValue(ctx, watchKey{}, wc)
			}
			return ctx
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if wc := watched(c); wc != nil {
				wc.setState(st)
			}
		},
	}
	return srv, watchListener{Listener: ln, w: w}
}

type watchKey struct{}

// connWatch finds out which limit net/http applied when it closes a
// connection, which it does without telling anyone: it watches the
// connection's reads, deadlines and states.
type connWatch struct {
	limits httpLimits
	rep    *limit.Reporter
}

type watchListener struct {
	net.Listener
	w *connWatch
}

func (l watchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	wc := &watchedConn{Conn: c, w: l.w}
	wc.state.Store(int32(http.StateNew))
	return wc, nil
}

// watchedConn is a connection as the HTTP server sees it (under TLS, the
// one under the *tls.Conn).
type watchedConn struct {
	net.Conn
	w *connWatch

	state   atomic.Int32 // http.ConnState
	read    atomic.Int64 // bytes read since the connection or its last request ended
	started atomic.Bool  // a handler started since then
	aborted atomic.Bool  // the read deadline is net/http's "stop the pending read" (in the past)
	hit     atomic.Bool  // a limit was reported for this connection
}

func watched(c net.Conn) *watchedConn {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	wc, _ := c.(*watchedConn)
	return wc
}

func (c *watchedConn) setState(st http.ConnState) {
	switch st {
	case http.StateIdle:
		c.read.Store(0)
		c.started.Store(false)
	case http.StateClosed:
		// Headers too large: net/http answered 431 and closed before any
		// handler ran, after reading the most it allows.
		if !c.started.Load() && c.w.limits.MaxHeaderBytes > 0 && c.read.Load() >= int64(c.w.limits.MaxHeaderBytes)+4096 &&
			http.ConnState(c.state.Load()) != http.StateHijacked {
			c.report("http_header_size", "request headers too large: answered 431 and closed", "max_bytes", c.w.limits.MaxHeaderBytes)
		}
	}
	c.state.Store(int32(st))
}

func (c *watchedConn) report(name, msg string, attrs ...any) {
	if c.hit.CompareAndSwap(false, true) {
		c.w.rep.Hit(name, msg, append([]any{"remote", c.RemoteAddr().String()}, attrs...)...)
	}
}

func (c *watchedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.read.Add(int64(n))
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) && !c.aborted.Load() {
		switch http.ConnState(c.state.Load()) {
		case http.StateNew, http.StateIdle:
			// Reading a request's headers. Nothing read since the last
			// request is the idle timeout (or a connection opened and never
			// used): housekeeping, not a client to warn about.
			if c.read.Load() > 0 {
				c.report("http_header_timeout", "request headers not received in time: connection closed", "timeout", c.w.limits.ReadHeader)
			}
		case http.StateActive:
			c.report("http_read_timeout", "request not received in time: connection closed", "timeout", c.w.limits.Read)
		}
	}
	return n, err
}

func (c *watchedConn) SetReadDeadline(t time.Time) error {
	c.aborted.Store(!t.IsZero() && t.Before(time.Now()))
	return c.Conn.SetReadDeadline(t)
}

func (c *watchedConn) SetDeadline(t time.Time) error {
	c.aborted.Store(!t.IsZero() && t.Before(time.Now()))
	return c.Conn.SetDeadline(t)
}

// CloseWrite half-closes the connection when the one below can (TCP), as
// net/http does before closing a connection with unread input, so the
// client reads the answer before the close.
func (c *watchedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
