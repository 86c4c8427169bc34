// Package control serves the Tailscale control protocol ("ts2021"): the
// server's public key at /key, the Noise upgrade at /ts2021, and inside the
// encrypted connection the /machine/register, /machine/map and SSH check
// (/machine/ssh/action/...) endpoints that official clients call.
package control

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hsctl/headscale/pkg/h2serve"
	"github.com/hsctl/headscale/pkg/mapper"
	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/state"
	"golang.org/x/net/http2"
	"tailscale.com/control/controlbase"
	"tailscale.com/control/controlhttp/controlhttpserver"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// MinCapabilityVersion is the oldest client this server accepts:
// capability version 113 is Tailscale v1.80, the oldest Headscale supports.
const MinCapabilityVersion tailcfg.CapabilityVersion = 113

// MinClientVersion is MinCapabilityVersion as users know it.
const MinClientVersion = "v1.80.0"

// noiseCapabilityVersion is the first client version that speaks ts2021.
const noiseCapabilityVersion = 39

const maxBodyBytes = 1 << 20

// Observer receives protocol statistics; metrics implement it.
type Observer interface {
	Registration(outcome string)
	// LimitHit counts one hit of the named protective limit.
	LimitHit(limit string)
}

type nopObserver struct{}

func (nopObserver) Registration(string) {}
func (nopObserver) LimitHit(string)     {}

// limitLogEvery is how often a limit's warning is logged at most.
const limitLogEvery = time.Minute

// HTTP2XNet is the Options.HTTP2Server value that serves Noise connections
// with golang.org/x/net/http2's server instead of pkg/h2serve.
const HTTP2XNet = "x/net"

// Options configures a Server.
type Options struct {
	NoiseKey  key.MachinePrivate
	State     *state.State
	Hub       *mapper.Hub
	Logger    *slog.Logger
	Observer  Observer
	KeepAlive time.Duration // map keep-alive interval; default 50s
	// SSHChecks holds pending SSH "check" approvals; nil answers the SSH
	// action path with 501.
	SSHChecks *sshcheck.Registry
	// SSHCheckPeriod returns how long an approved check from node src to
	// node dst is remembered (0: ask every time); nil means
	// sshcheck.DefaultPeriod for every pair.
	SSHCheckPeriod func(src, dst uint64) time.Duration
	// HTTP2Server is HTTP2XNet to serve HTTP/2 inside Noise with
	// golang.org/x/net/http2 (for telling whether a problem is in
	// pkg/h2serve); anything else uses pkg/h2serve.
	HTTP2Server string
}

// Server handles the control protocol. Mount it with Register.
type Server struct {
	opts Options
	log  *slog.Logger
	pub  key.MachinePublic

	// One HTTP/2 server and one request mux serve every Noise connection;
	// the connection's machine key travels in the request context.
	h2   *h2serve.Server
	xnet *http2.Server // set when Options.HTTP2Server is HTTP2XNet

	limitMu     sync.Mutex
	limitLogged map[string]time.Time // when each limit was last logged
	limitQuiet  map[string]int       // hits not logged since

	ctx    context.Context // ends at Close: detached connections' lifetime
	cancel context.CancelFunc
	mu     sync.Mutex
	conns  map[net.Conn]struct{} // detached Noise connections, closed by Close
}

type noiseConnKey struct{}

// New returns a Server.
func New(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	s := &Server{
		opts: opts, log: opts.Logger, pub: opts.NoiseKey.Public(), conns: make(map[net.Conn]struct{}),
		limitLogged: make(map[string]time.Time), limitQuiet: make(map[string]int),
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	on := func(f func(*noiseConn, http.ResponseWriter, *http.Request)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			f(r.Context().Value(noiseConnKey{}).(*noiseConn), w, r)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /machine/register", on((*noiseConn).serveRegister))
	mux.HandleFunc("POST /machine/map", on((*noiseConn).serveMap))
	mux.HandleFunc("GET /machine/ssh/action/{src}/to/{dst}", on((*noiseConn).serveSSHAction))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "not implemented by this control server", http.StatusNotImplemented)
	})
	s.h2 = &h2serve.Server{
		Handler:      http.MaxBytesHandler(mux, maxBodyBytes),
		MaxBodyBytes: maxBodyBytes,
		IdleTimeout:  noiseIdleTimeout,
		BodyTimeout:  30 * time.Second,
		// The mapper's writes carry a 60 s deadline of their own.
		WriteTimeout: 60 * time.Second,
		Logger:       opts.Logger,
		OnLimit:      s.limitHit,
	}
	if opts.HTTP2Server == HTTP2XNet {
		s.xnet = &http2.Server{
			MaxConcurrentStreams: 32,
			IdleTimeout:          noiseIdleTimeout,
			WriteByteTimeout:     60 * time.Second,
		}
	}
	return s
}

// noiseIdleTimeout closes a Noise connection with no request in progress.
const noiseIdleTimeout = 5 * time.Minute

// limitHit counts a protective limit's hit and logs it as a warning, at
// most once a minute per limit (with the hits not logged since).
func (s *Server) limitHit(limit string) {
	s.opts.Observer.LimitHit(limit)
	now := time.Now()
	s.limitMu.Lock()
	last, quiet := s.limitLogged[limit], s.limitQuiet[limit]
	log := now.Sub(last) >= limitLogEvery
	if log {
		s.limitLogged[limit] = now
		s.limitQuiet[limit] = 0
	} else {
		s.limitQuiet[limit] = quiet + 1
	}
	s.limitMu.Unlock()
	if log {
		s.log.Warn("protective limit hit by a Noise client", "limit", limit, "unlogged_since_last", quiet)
	}
}

// Close ends every Noise connection served on its own goroutine (see
// serveNoise); call it at shutdown.
func (s *Server) Close() {
	s.cancel()
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

// Register mounts /key and /ts2021 on mux.
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /key", s.serveKey)
	mux.HandleFunc("POST /ts2021", s.serveNoise)
	mux.HandleFunc("GET /ts2021", s.serveNoise) // WebSocket clients
}

func (s *Server) serveKey(w http.ResponseWriter, r *http.Request) {
	if v := r.URL.Query().Get("v"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			http.Error(w, "v must be a capability version number", http.StatusBadRequest)
			return
		}
		if n < noiseCapabilityVersion {
			http.Error(w, "client too old: this server only speaks the Noise protocol", http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(tailcfg.OverTLSPublicKeyResponse{PublicKey: s.pub})
}

func (s *Server) serveNoise(w http.ResponseWriter, r *http.Request) {
	conn, err := controlhttpserver.AcceptHTTP(r.Context(), hijackWrapper{w}, r, s.opts.NoiseKey, s.earlyNoise)
	if err != nil {
		s.log.Debug("noise upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	if r.Method != http.MethodPost {
		// A WebSocket connection lives in this request's context.
		s.serveNoiseConn(r.Context(), conn)
		return
	}
	// The upgraded connection no longer needs this request: serve it on
	// its own goroutine and return, so net/http lets go of the buffers it
	// keeps while a handler runs (about 11 KiB per connected node).
	s.mu.Lock()
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		conn.Close()
		return
	}
	s.conns[conn] = struct{}{}
	s.mu.Unlock()
	go func() {
		s.serveNoiseConn(s.ctx, conn)
		s.mu.Lock()
		delete(s.conns, conn)
		s.mu.Unlock()
	}()
}

// serveNoiseConn serves the control protocol's HTTP/2 on a Noise
// connection until it ends.
func (s *Server) serveNoiseConn(ctx context.Context, conn *controlbase.Conn) {
	defer conn.Close()
	nc := &noiseConn{srv: s, machine: conn.Peer()}
	ctx = context.WithValue(ctx, noiseConnKey{}, nc)
	if s.xnet != nil {
		s.xnet.ServeConn(conn, &http2.ServeConnOpts{Context: ctx, Handler: s.h2.Handler})
		return
	}
	if err := s.h2.ServeConn(ctx, conn); err != nil {
		s.log.Debug("noise connection ended", "machine", conn.Peer().ShortString(), "err", err)
	}
}

// earlyNoise sends the early payload clients expect before HTTP/2 starts:
// magic, a big-endian length and a JSON EarlyNoise with a node key
// challenge.
func (s *Server) earlyNoise(_ int, w io.Writer) error {
	b, err := json.Marshal(tailcfg.EarlyNoise{NodeKeyChallenge: key.NewChallenge().Public()})
	if err != nil {
		return err
	}
	buf := make([]byte, 0, 9+len(b))
	buf = append(buf, "\xff\xff\xffTS"...)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(b)))
	buf = append(buf, b...)
	_, err = w.Write(buf)
	return err
}

// noiseConn is one client's encrypted connection; its machine key is the
// Noise peer and authenticates every request on it.
type noiseConn struct {
	srv     *Server
	machine key.MachinePublic
}

func tooOld(v tailcfg.CapabilityVersion) string {
	return fmt.Sprintf("unsupported client version: capability version %d is too old; this server supports Tailscale %s and newer (capability version %d+): upgrade the client", v, MinClientVersion, MinCapabilityVersion)
}

func decode(r *http.Request, v any) error {
	if err := json.NewDecoder(r.Body).Decode(v); err != nil {
		return fmt.Errorf("decoding request body: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
