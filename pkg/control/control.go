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
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/clientaddr"
	"github.com/hsctl/headscale/pkg/h2serve"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/limit"
	"github.com/hsctl/headscale/pkg/mapper"
	"github.com/hsctl/headscale/pkg/pendingreg"
	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/state"
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
	// LimitHit counts one hit of a protective limit (see Limits).
	LimitHit(limit string)
}

type nopObserver struct{}

func (nopObserver) Registration(string) {}
func (nopObserver) LimitHit(string)     {}

// The protective limits on what anyone on the internet can reach before
// their machine belongs to a node: the Noise handshake (any machine key
// completes it) and registration. They are sized for a 10,000-node server
// whose every client reconnects at once (docs/performance.md); an operator
// has no reason to tune them, so they are constants.
const (
	// MaxHandshakeWaiting is how many Noise upgrades may wait for a
	// handshake slot (there are 2 × GOMAXPROCS slots: the handshake is CPU
	// work and a short write); the rest are answered 503 at once. A
	// waiting upgrade costs about 20 KB (its HTTP connection), and a
	// reconnect storm of 10,000 nodes must mostly get through on the
	// first attempt.
	MaxHandshakeWaiting = 4096
	// HandshakeWait is how long an upgrade waits for a slot before it is
	// answered 503 with Retry-After.
	HandshakeWait = 5 * time.Second
	// HandshakeTimeout bounds one handshake, slot held, including writing
	// its reply to the client.
	HandshakeTimeout = 10 * time.Second
	// MaxUnregisteredConns bounds the Noise connections of machine keys
	// no node has (about 30 KB each): new machines between handshake and
	// registration. One more is closed right after its handshake.
	MaxUnregisteredConns = 1024
	// MaxRegistering bounds registrations (and logouts and node-key
	// rotations: whatever writes to the database) in progress; SQLite
	// takes one writer at a time, so more would only queue there.
	MaxRegistering = 8
	// MaxRegisterWaiting is how many more may wait for one of those
	// slots, at most RegisterWait; the rest are answered 503 at once.
	MaxRegisterWaiting = 512
	// RegisterWait is how long a registration waits for a slot.
	RegisterWait = 10 * time.Second
)

// Limits overrides the limits above; a zero field keeps the default.
// Only tests set it.
type Limits struct {
	Handshakes, HandshakeWaiting int
	HandshakeWait                time.Duration
	UnregisteredConns            int
	Registering, RegisterWaiting int
	RegisterWait                 time.Duration
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&l.Handshakes, 2*runtime.GOMAXPROCS(0))
	def(&l.HandshakeWaiting, MaxHandshakeWaiting)
	def(&l.UnregisteredConns, MaxUnregisteredConns)
	def(&l.Registering, MaxRegistering)
	def(&l.RegisterWaiting, MaxRegisterWaiting)
	if l.HandshakeWait == 0 {
		l.HandshakeWait = HandshakeWait
	}
	if l.RegisterWait == 0 {
		l.RegisterWait = RegisterWait
	}
	return l
}

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
	SSHCheckPeriod func(src, dst ids.NodeID) time.Duration
	// Pending holds interactive (web) registrations: a client without a
	// pre-auth key gets an AuthURL and its follow-up waits there. nil
	// refuses such clients, asking for a pre-auth key.
	Pending *pendingreg.Registry
	// ServerURL is server_url, the base of AuthURLs
	// (<ServerURL>/register/<auth-id>).
	ServerURL string
	// SSHCheckLogin tells SSH users held by a check that the source
	// node's owner may approve it by logging in at <ServerURL>/auth/<id>
	// (OIDC configured).
	SSHCheckLogin bool
	// CertDNS sets nodes' certificate challenge records
	// (/machine/set-dns); nil answers that the server does not.
	CertDNS CertDNS
	// Limits lowers the protective limits (tests); zero keeps the defaults.
	Limits Limits
	// HTTP2Server is HTTP2XNet to serve HTTP/2 inside Noise with
	// golang.org/x/net/http2 (for telling whether a problem is in
	// pkg/h2serve); anything else uses pkg/h2serve.
	HTTP2Server string
	// ClientAddr tells a request's client address for logs (the
	// connection's, or the one a trusted proxy names); nil believes no
	// proxy.
	ClientAddr *clientaddr.Resolver
}

// Server handles the control protocol. Mount it with Register.
type Server struct {
	opts Options
	log  *slog.Logger
	pub  key.MachinePublic

	// One HTTP/2 server and one request mux serve every Noise connection;
	// the connection's machine key travels in the request context.
	h2   *h2serve.Server
	xnet *xnetServer // set when Options.HTTP2Server is HTTP2XNet

	ctx    context.Context // ends at Close: detached connections' lifetime
	cancel context.CancelFunc
	mu     sync.Mutex
	conns  map[net.Conn]struct{} // detached Noise connections, closed by Close
	wg     sync.WaitGroup        // Noise connections and request handlers; Close waits

	limits       *limit.Reporter
	refusals     *limit.Reporter // "registration refused" lines, sampled per outcome
	handshakes   *limit.Gate     // Noise handshakes in progress
	unregistered *limit.Gate     // connections of machines without a node
	registering  *limit.Gate     // registrations writing to the database
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
	s := &Server{opts: opts, log: opts.Logger, pub: opts.NoiseKey.Public(), conns: make(map[net.Conn]struct{})}
	l := opts.Limits.withDefaults()
	s.limits = limit.NewReporter(opts.Observer, opts.Logger)
	s.refusals = limit.NewSampler(opts.Logger, "outcome")
	s.handshakes = limit.NewGate(l.Handshakes, l.HandshakeWaiting, l.HandshakeWait)
	s.unregistered = limit.NewGate(l.UnregisteredConns, 0, 0)
	s.registering = limit.NewGate(l.Registering, l.RegisterWaiting, l.RegisterWait)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	on := func(f func(*noiseConn, http.ResponseWriter, *http.Request)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !s.begin() {
				http.Error(w, "server shutting down", http.StatusServiceUnavailable)
				return
			}
			defer s.wg.Done()
			f(r.Context().Value(noiseConnKey{}).(*noiseConn), w, r)
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /machine/register", on((*noiseConn).serveRegister))
	mux.HandleFunc("POST /machine/map", on((*noiseConn).serveMap))
	mux.HandleFunc("GET /machine/ssh/action/{src}/to/{dst}", on((*noiseConn).serveSSHAction))
	mux.HandleFunc("POST /machine/set-dns", on((*noiseConn).serveSetDNS))
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
		s.xnet = newXNetServer()
	}
	return s
}

// noiseIdleTimeout closes a Noise connection with no request in progress.
const noiseIdleTimeout = 5 * time.Minute

// limitHit counts a protective limit's hit in the HTTP/2 layer and logs it
// as a warning (sampled per limit, see limit.Reporter).
func (s *Server) limitHit(limit string) {
	s.limits.Hit(limit, "protective limit hit by a Noise client")
}

// Close ends every Noise connection and waits until their goroutines and
// request handlers have returned, so nothing reaches the state owner or
// the store afterwards; call it at shutdown.
func (s *Server) Close() {
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// begin counts one more goroutine Close must wait for, unless Close has
// begun (then it reports false). The check and the count happen under mu,
// after which Close cannot start waiting without seeing the count.
func (s *Server) begin() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return false
	}
	s.wg.Add(1)
	return true
}

// track registers a Noise connection for Close, or closes it and reports
// false when Close has begun.
func (s *Server) track(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		conn.Close()
		return false
	}
	s.conns[conn] = struct{}{}
	s.wg.Add(1)
	return true
}

// untrack undoes track once the connection's goroutine is done with it.
func (s *Server) untrack(conn net.Conn) {
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
	s.wg.Done()
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
	// The handshake is CPU work anyone can ask for: at most a few at once,
	// so a flood of them leaves the connected nodes' map delivery its
	// share of the CPU.
	if !s.handshakes.Acquire(r.Context()) {
		s.limits.Hit("noise_handshakes", "Noise handshake refused: too many in progress, answered 503",
			"remote", s.opts.ClientAddr.Text(r), "max", s.handshakes.Cap())
		w.Header().Set("Retry-After", "1")
		w.Header().Set("Connection", "close")
		http.Error(w, "server busy: too many connections being set up at once, retry shortly", http.StatusServiceUnavailable)
		return
	}
	ctx := r.Context()
	if r.Method == http.MethodPost {
		// A WebSocket connection lives in ctx, so only the POST upgrade
		// gets a deadline; AcceptHTTP clears it from the connection when
		// the handshake is done.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, HandshakeTimeout)
		defer cancel()
	}
	conn, err := controlhttpserver.AcceptHTTP(ctx, hijackWrapper{w}, r, s.opts.NoiseKey, s.earlyNoise)
	s.handshakes.Release()
	if err != nil {
		s.log.Debug("noise upgrade failed", "remote", s.opts.ClientAddr.Text(r), "err", err)
		return
	}
	nc := &noiseConn{srv: s, machine: conn.Peer()}
	if !s.opts.State.MachineKnown(nc.machine) {
		if !s.unregistered.TryAcquire() {
			s.limits.Hit("noise_unregistered", "Noise connection closed: too many connections of machines that are not nodes",
				"remote", s.opts.ClientAddr.Text(r), "max", s.unregistered.Cap())
			conn.Close()
			return
		}
		nc.unregistered.Store(true)
	}
	if !s.track(conn) {
		nc.registered()
		return
	}
	if r.Method != http.MethodPost {
		// A WebSocket connection lives in this request's context.
		defer s.untrack(conn)
		s.serveNoiseConn(r.Context(), conn, nc)
		return
	}
	// The upgraded connection no longer needs this request: serve it on
	// its own goroutine and return, so net/http lets go of the buffers it
	// keeps while a handler runs (about 11 KiB per connected node).
	go func() {
		defer s.untrack(conn)
		s.serveNoiseConn(s.ctx, conn, nc)
	}()
}

// serveNoiseConn serves the control protocol's HTTP/2 on a Noise
// connection until it ends.
func (s *Server) serveNoiseConn(ctx context.Context, conn *controlbase.Conn, nc *noiseConn) {
	defer conn.Close()
	defer nc.registered() // its slot among unregistered connections
	ctx = context.WithValue(ctx, noiseConnKey{}, nc)
	if s.xnet != nil {
		s.xnet.serve(ctx, conn, s.h2.Handler)
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
	// unregistered: the machine had no node at the handshake and the
	// connection holds a slot of srv.unregistered until it registers.
	unregistered atomic.Bool
}

// registered gives back the connection's slot among the connections of
// machines without a node, if it holds one.
func (c *noiseConn) registered() {
	if c.unregistered.CompareAndSwap(true, false) {
		c.srv.unregistered.Release()
	}
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
