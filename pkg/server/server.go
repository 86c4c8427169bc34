// Package server wires the domain packages into a running control server:
// it opens the store, loads keys, builds the state owner, mapper, control
// protocol, DERP and API, binds every listener, and runs until its context
// ends.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/api"
	"github.com/hsctl/headscale/pkg/certdns"
	"github.com/hsctl/headscale/pkg/clientaddr"
	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/control"
	"github.com/hsctl/headscale/pkg/derp"
	"github.com/hsctl/headscale/pkg/hsimport"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/ipalloc"
	"github.com/hsctl/headscale/pkg/keyfile"
	"github.com/hsctl/headscale/pkg/limit"
	"github.com/hsctl/headscale/pkg/mapper"
	"github.com/hsctl/headscale/pkg/metrics"
	"github.com/hsctl/headscale/pkg/oidclogin"
	"github.com/hsctl/headscale/pkg/pendingreg"
	"github.com/hsctl/headscale/pkg/policy"
	"github.com/hsctl/headscale/pkg/sdnotify"
	"github.com/hsctl/headscale/pkg/sshcheck"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/hsctl/headscale/pkg/sysdns"
	"github.com/hsctl/headscale/pkg/tlscert"
	"github.com/hsctl/headscale/pkg/unixsock"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Server is a configured, not yet running control server.
type Server struct {
	cfg     *config.Config
	log     *slog.Logger
	version string

	store   *store.Store
	state   *state.State
	hub     *mapper.Hub
	derp    *derp.Service
	metrics *metrics.Metrics
	api     *api.API
	control *control.Server
	// pending holds web registrations waiting for approval (in memory).
	pending *pendingreg.Registry
	// sshChecks holds SSH "check" approvals waiting (in memory).
	sshChecks *sshcheck.Registry
	// oidc serves login through the identity provider; nil without
	// oidc.issuer.
	oidc       *oidclogin.Pages
	oidcClient *oidclogin.Client
	// certDNS sets `tailscale cert` challenge records; nil without
	// dns.certificates.
	certDNS *certdns.Setter
	// controlOpts and apiOpts built control and api (tests rebuild them
	// with other limits).
	controlOpts control.Options
	apiOpts     api.Options

	mainLn, metricsLn, unixLn net.Listener
	grpcLn                    net.Listener // nil when the gRPC API is off (grpc.go)
	// certs is the certificate listen_addr and grpc_listen_addr serve
	// (nil without TLS); acmeLn answers HTTP-01 challenges (tls.go).
	certs       *tlscert.Source
	acmeLn      net.Listener
	releaseOnce sync.Once
	releaseErr  error

	limits *limit.Reporter // protective limits' hits: counted and logged
	// HTTP listener limits (tests lower them before Run).
	mainHTTP, localHTTP httpLimits

	notify *sdnotify.Notifier
	// cluster is this server's part among several serving the tailnet
	// (cluster.enabled; cluster.go).
	cluster        clusterPart
	clusterLag     prometheus.Histogram
	clusterRecords prometheus.Counter
	dns            atomic.Pointer[tailcfg.DNSConfig] // replaced on reload (dns.go)
	// records is dns.extra_records_path's state (dns.go).
	records recordsFile
	// waiting is what start-up waits for (PostgreSQL not reachable yet);
	// dbDown why the database does not answer while running (nil: it
	// does). See dbwait.go.
	waiting, dbDown atomic.Pointer[string]
	// WatchdogInterval overrides how often liveness is checked and the
	// watchdog pinged (default: half of systemd's WatchdogSec).
	WatchdogInterval time.Duration
	// CertPoll, set before Run, overrides how often certificate files
	// are checked for changes (default tlscert.DefaultPoll).
	CertPoll time.Duration
	// ACMEHTTPClient, ACMERetryMin and ACMECheck, set before Listen,
	// override the ACME client's HTTP client (default: the system's
	// roots), its first retry delay and how often it checks the served
	// certificate (tlscert.ACMEOptions); tests use them with their own
	// CA.
	ACMEHTTPClient *http.Client
	ACMERetryMin   time.Duration
	ACMECheck      time.Duration
}

// New opens the database (running migrations), loads keys and builds every
// component. It binds nothing; Run does. On PostgreSQL it waits for a
// database that cannot be reached or refuses the connection, until ctx
// ends, answering on the unix socket meanwhile (see openStore).
//
// A database type this build lacks and a TLS certificate that does not
// load are refused before anything is opened. Each refusal names the
// configuration key and reads as Preflight's, which configtest and serve
// run first. On any error New closes whatever it had opened (database,
// DERP server, map hub) before returning.
func New(ctx context.Context, cfg *config.Config, log *slog.Logger, version string) (_ *Server, err error) {
	s := &Server{cfg: cfg, log: log, version: version, notify: sdnotify.New(log.With("component", "sdnotify")),
		mainHTTP: mainHTTPLimits, localHTTP: localHTTPLimits}
	s.metrics = metrics.New(func() (int, int) {
		if s.state == nil {
			return 0, 0
		}
		return s.state.Counts()
	})
	s.limits = limit.NewReporter(s.metrics, log.With("component", "http"))
	stOpts, err := storeOptions(cfg)
	if err != nil {
		return nil, err
	}
	stOpts.Logger = log.With("component", "store")
	stOpts.Observe = s.metrics.DBQuery
	s.clusterStoreOptions(&stOpts)
	if err := s.setupFileCert(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			if cerr := s.release(); cerr != nil {
				log.Error("closing after a failed start", "err", cerr)
			}
		}
	}()
	// A database Headscale wrote is converted first (a verified copy of
	// it is kept beside it); anything else is left to the store. On
	// PostgreSQL both wait for a database that is not there yet.
	convert := hsimport.Options{PolicyMode: cfg.Policy.Mode, V4: cfg.Prefixes.V4, V6: cfg.Prefixes.V6}
	st, err := s.openStore(ctx, stOpts, func(ctx context.Context, ownSocket bool) error {
		var err error
		if stOpts.Postgres != nil {
			socket := cfg.UnixSocket // a running Headscale answers there
			if ownSocket {
				socket = "" // this server does, while it waits
			}
			_, err = hsimport.TakeOverPostgres(ctx, hsimport.TakeOverPostgresOptions{
				DB:        *stOpts.Postgres,
				Convert:   convert,
				Logger:    log.With("component", "import"),
				Socket:    socket,
				ReportDir: cfg.StateDir,
			})
		} else {
			_, err = hsimport.TakeOver(ctx, hsimport.TakeOverOptions{
				Path:    cfg.Database.SQLite.Path,
				Convert: convert,
				Logger:  log.With("component", "import"),
				Socket:  cfg.UnixSocket,
			})
		}
		if err != nil {
			return fmt.Errorf("taking over the Headscale database: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.store = st
	noiseKey, err := keyfile.MachineKey(cfg.Noise.PrivateKeyPath)
	if err != nil {
		return nil, fmt.Errorf("noise.private_key_path: %w", err)
	}
	alloc := ipalloc.New(cfg.Prefixes.V4, cfg.Prefixes.V6, ipalloc.Strategy(cfg.Prefixes.Allocation))
	stateOpts := state.Options{
		Store:            st,
		Alloc:            alloc,
		NodeExpiry:       cfg.Node.Expiry,
		EphemeralTimeout: cfg.Node.Ephemeral.InactivityTimeout,
		RequireApproval:  cfg.Node.RequireApproval,
		ServerURL:        noiseURL(cfg.ServerURL),
		Logger:           log.With("component", "state"),
	}
	if err := s.joinCluster(ctx, st, noiseKey.Public(), &stateOpts); err != nil {
		return nil, err
	}
	s.registerClusterMetrics()
	s.state, err = state.New(ctx, stateOpts)
	if err != nil {
		return nil, err
	}
	s.metrics.AddDBPools(st.Pools())

	var derpKey key.NodePrivate
	if cfg.DERP.Server.Enabled {
		if derpKey, err = keyfile.NodeKey(cfg.DERP.Server.PrivateKeyPath); err != nil {
			return nil, fmt.Errorf("derp.server.private_key_path: %w", err)
		}
	}
	s.warnLooseFiles()
	var hubRef *mapper.Hub // set below; DERP map changes go to it
	s.derp, err = derp.New(derp.Options{
		Enabled:           cfg.DERP.Server.Enabled,
		PrivateKey:        derpKey,
		RegionID:          cfg.DERP.Server.RegionID,
		RegionCode:        cfg.DERP.Server.RegionCode,
		RegionName:        cfg.DERP.Server.RegionName,
		ServerURL:         cfg.ServerURL,
		STUNListenAddr:    cfg.DERP.Server.STUNListenAddr,
		IPv4:              cfg.DERP.Server.IPv4,
		IPv6:              cfg.DERP.Server.IPv6,
		AddEmbeddedRegion: cfg.DERP.Server.AutomaticallyAddEmbeddedDERPRegion,
		VerifyClients:     cfg.DERP.Server.VerifyClients,
		IsKnownNode: func(k key.NodePublic) bool {
			_, ok := s.state.NodeByNodeKey(k)
			return ok
		},
		// Outbound look-ups use the host's resolvers, never MagicDNS.
		HTTPClient:      sysdns.New(sysdns.Options{Logger: log.With("component", "dns")}).HTTPClient(30 * time.Second),
		URLs:            cfg.DERP.URLs,
		Paths:           cfg.DERP.Paths,
		AutoUpdate:      cfg.DERP.AutoUpdateEnabled,
		UpdateFrequency: cfg.DERP.UpdateFrequency,
		OnChange: func(m *tailcfg.DERPMap) {
			if hubRef != nil {
				hubRef.Broadcast(&tailcfg.MapResponse{DERPMap: m})
			}
		},
		Logger: log.With("component", "derp"),
	})
	if err != nil {
		return nil, fmt.Errorf("derp.paths: %w", err) // its only refusal: a map file
	}

	s.metrics.AddDERP(s.derp.Stats)

	if err := s.initDNS(); err != nil {
		return nil, fmt.Errorf("dns.extra_records_path: %w", err)
	}
	// Nodes are named under base_domain with or without MagicDNS, as in
	// Headscale.
	m := mapper.New(mapper.Options{
		BaseDomain:          cfg.DNS.BaseDomain,
		DNS:                 s.dns.Load,
		DERPMap:             s.derp.Map,
		Taildrop:            cfg.Taildrop.Enabled,
		AutoUpdate:          cfg.AutoUpdate.Enabled,
		RandomizeClientPort: cfg.RandomizeClientPort,
		CertDomains:         cfg.DNS.Certificates.Enabled(),
	})
	if s.certDNS, err = newCertDNS(cfg.DNS.Certificates, s); err != nil {
		return nil, err
	}
	s.hub = mapper.NewHub(m, mapper.HubOptions{Observer: s.metrics})
	hubRef = s.hub
	s.state.SetSink(s.hub)
	// Pending SSH "check" approvals: the control protocol opens and waits
	// on them, the API (auth approve|reject) decides them.
	sshChecks := sshcheck.New(time.Now, 0)
	s.sshChecks = sshChecks
	// Pending web registrations: the control protocol opens and waits on
	// them, the register page shows them, the API (nodes register, auth
	// register|reject) completes them.
	s.pending = pendingreg.New(time.Now, 0)
	if err := s.shareAuth(ctx, st); err != nil {
		return nil, err
	}
	// Client addresses in logs and per-client limits: X-Forwarded-For
	// and X-Real-IP believed only from trusted_proxies (validated by
	// pkg/config).
	trusted, err := clientaddr.ParseList(cfg.TrustedProxies)
	if err != nil {
		return nil, fmt.Errorf("trusted_proxies: %w", err)
	}
	clientAddrs := clientaddr.New(trusted)
	s.controlOpts = control.Options{
		NoiseKey:  noiseKey,
		State:     s.state,
		Hub:       s.hub,
		Logger:    log.With("component", "control"),
		Observer:  s.metrics,
		SSHChecks: sshChecks,
		Pending:   s.pending,
		ServerURL: cfg.ServerURL,
		// The login pages approve SSH checks when OIDC is configured.
		SSHCheckLogin: cfg.OIDC.Enabled(),
		// noise.http2_server: x/net serves Noise connections with
		// golang.org/x/net/http2, to bisect a problem in pkg/h2serve.
		HTTP2Server: cfg.Noise.HTTP2Server,
		ClientAddr:  clientAddrs,
		// An approval lasts the checkPeriod of the rules covering the pair.
		SSHCheckPeriod: func(src, dst ids.NodeID) time.Duration {
			if c := s.state.CompiledPolicy(); c != nil {
				return c.SSHCheckPeriod(src, dst)
			}
			return policy.DefaultSSHCheckPeriod
		},
	}
	if s.certDNS != nil {
		s.controlOpts.CertDNS = certDNS{m: m, setter: s.certDNS}
	}
	s.control = control.New(s.controlOpts)
	s.apiOpts = api.Options{State: s.state, Store: st, Policy: s, SSHChecks: sshChecks, Pending: s.pending, Logger: log.With("component", "api"), Observer: s.metrics, ClientAddr: clientAddrs}
	s.api = api.New(s.apiOpts)
	if err := s.setupOIDC(ctx); err != nil {
		return nil, err
	}
	// The policy is in force before any session starts (READY=1 comes
	// later, in Run).
	if err := s.loadPolicy(ctx, true); err != nil {
		return nil, err
	}
	return s, nil
}

// warnLooseFiles logs a warning for each file holding a secret (the
// private keys, the database and its -wal and -shm files) that users other
// than its owner may read. It does not refuse to start: installs that
// began under Headscale may have 0644 files, and the fix is the
// operator's.
func (s *Server) warnLooseFiles() {
	paths := []string{s.cfg.Noise.PrivateKeyPath}
	if s.cfg.DERP.Server.Enabled {
		paths = append(paths, s.cfg.DERP.Server.PrivateKeyPath)
	}
	if s.cfg.Database.Type == "sqlite" {
		db := s.cfg.Database.SQLite.Path
		paths = append(paths, db, db+"-wal", db+"-shm")
	}
	for _, p := range paths {
		perm, loose, err := keyfile.Loose(p)
		if err != nil {
			s.log.Warn("cannot check the mode of a private file", "path", p, "err", err)
			continue
		}
		if loose {
			s.log.Warn("private file is readable by other users; restrict it with chmod 600",
				"path", p, "mode", fmt.Sprintf("%04o", perm), "fix", "chmod 600 "+p)
		}
	}
}

// noiseURL is serverURL as a base for URLs clients fetch through their
// Noise connection (SSH check actions): tailscaled sends only https URLs
// through it and would dial an http one directly, in the clear and
// without its machine key; the host is not used for routing.
func noiseURL(serverURL string) string {
	if rest, ok := strings.CutPrefix(serverURL, "http://"); ok {
		return "https://" + rest
	}
	return serverURL
}

// Listen binds every listener. Binding before serving lets the caller
// report readiness only once the server can really answer.
func (s *Server) Listen(ctx context.Context) error {
	var err error
	if s.mainLn, err = net.Listen("tcp", s.cfg.ListenAddr); err != nil {
		return fmt.Errorf("listening on listen_addr %s: %w", s.cfg.ListenAddr, err)
	}
	if s.cfg.MetricsListenAddr != "" {
		if s.metricsLn, err = net.Listen("tcp", s.cfg.MetricsListenAddr); err != nil {
			return fmt.Errorf("listening on metrics_listen_addr %s: %w", s.cfg.MetricsListenAddr, err)
		}
	}
	if s.unixLn, err = listenUnix(s.cfg.UnixSocket, s.cfg.UnixSocketPermission); err != nil {
		return err
	}
	if err := s.setupACME(); err != nil {
		return err
	}
	if err := s.listenGRPC(); err != nil {
		return err
	}
	if err := s.derp.Start(ctx); err != nil {
		return err
	}
	return nil
}

func listenUnix(path string, perm os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("creating unix_socket directory: %w", err)
	}
	// A socket left by a crashed server would make the bind fail; remove it
	// only when nothing answers on it.
	if unixsock.Answers(path) {
		return nil, fmt.Errorf("unix_socket %s: another headscale is already running", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on unix_socket %s: %w", path, err)
	}
	if err := os.Chmod(path, perm); err != nil {
		ln.Close()
		return nil, fmt.Errorf("setting unix_socket permission: %w", err)
	}
	return ln, nil
}

// Addr is the main listener's address (after Listen).
func (s *Server) Addr() net.Addr { return s.mainLn.Addr() }

// Handler is the main listener's routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	s.control.Register(mux)
	if h := s.derp.Handler(); h != nil {
		mux.Handle("/derp", h)
	}
	mux.Handle("/derp/probe", derp.ProbeHandler())
	mux.Handle("/derp/latency-check", derp.ProbeHandler())
	mux.Handle("GET /register/{id}", s.metrics.InstrumentHTTP(s.pending.Page(s.registerPageOptions())))
	if s.oidc != nil {
		mux.Handle("GET /oidc/callback", s.metrics.InstrumentHTTP(http.HandlerFunc(s.oidc.Callback)))
		mux.Handle("POST "+oidcConfirmPath+"{id}", s.metrics.InstrumentHTTP(http.HandlerFunc(s.oidc.Confirm)))
		mux.Handle("GET /auth/{id}", s.metrics.InstrumentHTTP(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.oidc.SSHLogin(w, r, r.PathValue("id"))
		})))
	}
	mux.Handle("/api/v1/", s.apiHandler())
	mux.Handle("GET /health", s.metrics.InstrumentHTTP(http.HandlerFunc(s.serveHealth)))
	mux.Handle("GET /version", s.metrics.InstrumentHTTP(http.HandlerFunc(s.serveVersion)))
	mux.HandleFunc("GET /robots.txt", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("User-agent: *\nDisallow: /\n"))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("headscale control server\n"))
	})
	return mux
}

// registerPageOptions configures the register page (GET /register/{id}):
// with OIDC configured the browser is sent to the identity provider
// instead of being shown the admin's commands.
func (s *Server) registerPageOptions() pendingreg.PageOptions {
	if s.oidc == nil {
		return pendingreg.PageOptions{}
	}
	return pendingreg.PageOptions{Login: func(w http.ResponseWriter, r *http.Request, reg pendingreg.Registration) {
		s.oidc.Login(w, r, reg.ID)
	}}
}

// apiHandler is the REST API for web UIs and scripts on the TCP listeners:
// API key required, except for the OpenAPI document; CORS only for
// configured origins.
func (s *Server) apiHandler() http.Handler {
	apiMux := http.NewServeMux()
	apiMux.HandleFunc("GET /api/v1/openapi.yaml", s.api.ServeOpenAPI)
	apiMux.Handle("/api/v1/", s.api.Authenticate(s.api.Handler()))
	return s.metrics.InstrumentHTTP(api.CORS(s.cfg.API.CORSAllowedOrigins, apiMux))
}

// socketHandler is the unix socket's routes: the v1 API with local trust,
// and the gRPC API g (also local trust).
func (s *Server) socketHandler(g *grpc.Server) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/openapi.yaml", s.api.ServeOpenAPI)
	mux.Handle("/api/v1/", s.api.Handler())
	mux.HandleFunc("GET /health", s.serveHealth)
	mux.HandleFunc("GET /version", s.serveVersion)
	return withGRPC(g, mux)
}

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
	defer cancel()
	w.Header().Set("Content-Type", "application/health+json")
	if err := s.store.Ping(ctx); err != nil {
		reason := store.Unavailable(err).Error()
		level := slog.LevelWarn
		if s.store.Engine() == "postgres" {
			level = slog.LevelDebug // watchDatabase logs the outage once
		}
		s.log.Log(ctx, level, "health check failed: database does not answer", "reason", reason, "err", err)
		w.WriteHeader(http.StatusServiceUnavailable)
		json.NewEncoder(w).Encode(map[string]string{"status": "fail", "reason": reason})
		return
	}
	if s.certs == nil && s.cluster.member == nil {
		w.Write([]byte(`{"status":"pass"}` + "\n"))
		return
	}
	// With TLS the certificate is a check of its own (tls.go), and with
	// several servers the membership (cluster.go): the top-level status
	// stays "pass" unless there is no valid certificate or this server
	// must stop serving.
	checks := map[string]any{}
	body := map[string]any{"status": "pass", "checks": checks}
	if s.certs != nil {
		check, fail := s.certCheck(time.Now())
		checks["tls:certificate"] = []any{check}
		if fail {
			body["status"], body["reason"] = "fail", check["output"]
		}
	}
	if check, fail := s.clusterCheck(); check != nil {
		checks["cluster:membership"] = []any{check}
		if fail {
			body["status"], body["reason"] = "fail", check["output"]
		}
	}
	if body["status"] == "fail" {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(body)
}

// HeadscaleAPILevel is the Headscale release whose API this server
// matches. /version reports it, with this server's own version as build
// metadata, because web UIs (Headplane) choose request shapes by the
// Headscale version they see.
const HeadscaleAPILevel = "0.29.0"

func (s *Server) serveVersion(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	own := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '-'
	}, s.version)
	json.NewEncoder(w).Encode(map[string]any{
		"version":         "v" + HeadscaleAPILevel + "+hsctl." + own,
		"serverVersion":   s.version,
		"headscaleCompat": HeadscaleAPILevel,
		"go":              map[string]string{"version": runtime.Version(), "os": runtime.GOOS, "arch": runtime.GOARCH},
	})
}

// Run serves until ctx ends, then shuts down: map sessions end, HTTP
// servers stop, every goroutine Run started is waited for, pending node
// state is flushed and the database closed. The same shutdown runs when a
// listener fails, and when Run has to bind the listeners itself and cannot;
// on every return the server is closed.
func (s *Server) Run(ctx context.Context) error {
	if s.mainLn == nil {
		if err := s.Listen(ctx); err != nil {
			return errors.Join(err, s.Close())
		}
	}
	bg, stopBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { s.state.Run(bg) })
	s.startCluster(bg)
	wg.Go(func() { s.derp.Run(bg) })
	wg.Go(func() { s.discoverOIDC(bg) })
	wg.Go(func() { s.watchRecords(bg) })

	main, mainLn := httpServer(s.Handler(), s.mainHTTP, s.mainLn, s.limits, s.log)
	servers := []*http.Server{main}
	errc := make(chan error, 5)
	if s.certs != nil {
		if s.CertPoll > 0 {
			s.certs.SetPoll(s.CertPoll)
		}
		wg.Go(func() { s.certs.Run(bg) })
		// The control upgrade needs HTTP/1.1, so offer only that.
		main.TLSConfig = s.certs.TLSConfig("http/1.1")
		wg.Go(func() { errc <- main.ServeTLS(mainLn, "", "") })
	} else {
		wg.Go(func() { errc <- main.Serve(mainLn) })
	}
	if s.acmeLn != nil {
		as, ln := httpServer(s.acmeHandler(), s.mainHTTP, s.acmeLn, s.limits, s.log)
		servers = append(servers, as)
		wg.Go(func() { errc <- as.Serve(ln) })
	}
	if s.metricsLn != nil {
		ms, ln := httpServer(s.metrics.Handler(), s.localHTTP, s.metricsLn, s.limits, s.log)
		servers = append(servers, ms)
		wg.Go(func() { errc <- ms.Serve(ln) })
	}
	grpcRemote, grpcLocal := s.grpcServers()
	us, unixLn := httpServer(s.socketHandler(grpcLocal), s.localHTTP, s.unixLn, s.limits, s.log)
	us.Protocols = h2c() // gRPC clients speak HTTP/2 without TLS here
	servers = append(servers, us)
	wg.Go(func() { errc <- us.Serve(unixLn) })
	if s.grpcLn != nil {
		gs, ln := httpServer(s.grpcHandler(grpcRemote), s.mainHTTP, s.grpcLn, s.limits, s.log)
		servers = append(servers, gs)
		wg.Go(func() { errc <- s.serveGRPC(gs, ln) })
	}

	total, _ := s.state.Counts()
	grpcAddr := ""
	if s.grpcLn != nil {
		grpcAddr = s.grpcLn.Addr().String()
	}
	attrs := []any{"version", s.version, "listen_addr", s.mainLn.Addr().String(), "server_url", s.cfg.ServerURL,
		"grpc_listen_addr", grpcAddr, "unix_socket", s.cfg.UnixSocket, "nodes", total, "min_client", control.MinClientVersion}
	if s.cfg.ClusterID != "" {
		// One of several tailnets on the database: say which.
		attrs = append(attrs, "cluster_id", s.cfg.ClusterID, "schema", s.cfg.Schema())
	}
	attrs = append(attrs, s.logCluster()...)
	s.log.Info("headscale serving", attrs...)
	s.notify.Ready(s.status())
	wg.Go(func() { s.statusLoop(bg) })
	wg.Go(func() { s.watchDatabase(bg) })
	// The watchdog reflects this process's liveness. SQLite is a file in
	// this process: a database that stops answering means the process is
	// stuck. PostgreSQL is another service: it restarting is an outage the
	// server rides out (watchDatabase), not a reason to restart it.
	checks := []sdnotify.Check{
		{Name: "change loop", Fn: s.state.Heartbeat},
		{Name: "map delivery", Fn: s.hub.Sync},
	}
	if s.store.Engine() != "postgres" {
		checks = append([]sdnotify.Check{{Name: "database", Fn: s.store.Ping}}, checks...)
	}
	wg.Go(func() { s.notify.RunWatchdog(bg, s.WatchdogInterval, checks) })

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			runErr = fmt.Errorf("HTTP server failed: %w", err)
		}
	case err := <-s.clusterErr():
		runErr = fmt.Errorf("stopping: %w", err)
	}
	s.notify.Stopping()
	s.log.Info("shutting down")
	// Map sessions end first, then the Noise connections (waiting for
	// their handlers), so nothing writes to the store after it closes.
	s.hub.Close()
	s.control.Close()
	shutCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, srv := range servers {
		srv.Shutdown(shutCtx)
	}
	// The HTTP servers waited for the gRPC calls they carried; this ends
	// any the deadline cut short.
	grpcRemote.Stop()
	grpcLocal.Stop()
	s.derp.Close()
	// The sessions' ends are stored for the other servers, and this one
	// leaves their list.
	s.stopCluster()
	// state.Run flushes pending node state when bg ends.
	stopBG()
	wg.Wait()
	if err := s.release(); err != nil {
		s.log.Error("closing database", "err", err)
	}
	return runErr
}

// Reload re-reads what can change without a restart (SIGHUP): the policy
// (file, or database row), DERP map files, the TLS certificate files and
// the extra DNS records file (the last two also re-read whenever they
// change, see tls.go and dns.go). Each part is checked before it replaces
// the running one, so a bad file is reported and what was in force stays.
// systemd hears RELOADING=1 before and READY=1 after.
func (s *Server) Reload() error {
	s.notify.Reloading()
	defer func() { s.notify.Ready(s.status()) }()
	var errs []error
	if err := s.loadPolicy(context.Background(), false); err != nil {
		errs = append(errs, fmt.Errorf("policy not reloaded, the one in force stays: %w", err))
	}
	if err := s.derp.Reload(); err != nil {
		errs = append(errs, err)
	}
	if s.certs != nil {
		if err := s.certs.Reload(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.reloadDNS(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// status is the one-line summary systemd shows.
func (s *Server) status() string {
	total, online := s.state.Counts()
	line := fmt.Sprintf("serving %d nodes, %d online, %d map sessions", total, online, s.hub.Sessions())
	if down := s.dbDown.Load(); down != nil {
		line += "; " + *down
	}
	if c := s.certStatus(); c != "" {
		line += "; " + c
	}
	return line
}

// statusLoop refreshes systemd's status line as the numbers change.
func (s *Server) statusLoop(ctx context.Context) {
	if !s.notify.Enabled() {
		return
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.notify.Status(s.status())
		}
	}
}

// Close releases the resources of a server that never ran (New succeeded,
// Listen may have bound some listeners): listeners, the unix socket file,
// the DERP server, the map hub, the Noise connections and the database.
// Run closes everything itself; Close after Run returns the same result.
func (s *Server) Close() error {
	for _, ln := range []net.Listener{s.mainLn, s.metricsLn, s.unixLn, s.grpcLn, s.acmeLn} {
		if ln != nil {
			ln.Close()
		}
	}
	return s.release()
}

// release closes, once, what New opened and Listen bound that is not an
// HTTP server: a nil part (New failed before it) is skipped.
func (s *Server) release() error {
	s.releaseOnce.Do(func() {
		if s.hub != nil {
			s.hub.Close()
		}
		if s.control != nil {
			s.control.Close()
		}
		if s.certDNS != nil {
			// No request sets records any more: take back those set.
			s.certDNS.Close()
		}
		if s.derp != nil {
			s.derp.Close()
		}
		if s.unixLn != nil {
			os.Remove(s.cfg.UnixSocket)
		}
		if s.store != nil {
			s.releaseErr = s.store.Close()
		}
	})
	return s.releaseErr
}
