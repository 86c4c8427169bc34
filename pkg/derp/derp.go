// Package derp runs the embedded DERP relay and STUN server and maintains
// the DERP map clients receive: the embedded region, regions from local
// files (derp.paths) and regions fetched from URLs (derp.urls).
//
// The server is the network's bootstrap, so nothing here ever blocks
// start-up on the network: URLs are fetched in the background, a failed
// fetch is logged and retried, and the last good map stays in force.
package derp

import (
	"context"
	"encoding/json"
	"expvar"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.yaml.in/yaml/v3"
	"tailscale.com/derp/derpserver"
	"tailscale.com/net/stunserver"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Options configures the DERP service.
type Options struct {
	Enabled        bool
	PrivateKey     key.NodePrivate
	RegionID       int
	RegionCode     string
	RegionName     string
	ServerURL      string // the embedded node's host and port come from here
	STUNListenAddr string
	IPv4, IPv6     string
	// AddEmbeddedRegion puts the embedded region in the map.
	AddEmbeddedRegion bool
	// VerifyClients admits only node keys IsKnownNode accepts.
	VerifyClients bool
	IsKnownNode   func(key.NodePublic) bool

	URLs            []string
	Paths           []string
	AutoUpdate      bool
	UpdateFrequency time.Duration

	// OnChange is called with the new map whenever it changes after start.
	OnChange   func(*tailcfg.DERPMap)
	HTTPClient *http.Client
	Logger     *slog.Logger
}

// Service is the DERP relay, STUN server and DERP map source.
type Service struct {
	opts   Options
	log    *slog.Logger
	server *derpserver.Server

	statsOnce sync.Once
	stats     interface{ Get(string) expvar.Var }

	mu        sync.Mutex
	fromURLs  map[string]*tailcfg.DERPMap // last good map per URL
	fromPaths *tailcfg.DERPMap
	current   atomic.Pointer[tailcfg.DERPMap]

	stun       *stunserver.STUNServer
	verifyLn   net.Listener
	verifySrv  *http.Server
	stunCancel context.CancelFunc
}

// New creates the service and loads the DERP map files. A file that does
// not parse is an error; URLs are not fetched here (see Run).
func New(opts Options) (*Service, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.HTTPClient == nil {
		// Go's resolver reads /etc/resolv.conf: the host's DNS, never the
		// tailnet's.
		opts.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if opts.UpdateFrequency <= 0 {
		opts.UpdateFrequency = 3 * time.Hour
	}
	s := &Service{opts: opts, log: opts.Logger, fromURLs: map[string]*tailcfg.DERPMap{}}
	if err := s.loadPaths(); err != nil {
		return nil, err
	}
	if opts.Enabled {
		logf := func(format string, args ...any) { s.log.Debug(fmt.Sprintf(format, args...), "component", "derp") }
		s.server = derpserver.New(opts.PrivateKey, logf)
	}
	s.rebuild(false)
	return s, nil
}

// Start binds the STUN listener and, with verify_clients, the loopback
// admission endpoint the relay asks about each client.
func (s *Service) Start(ctx context.Context) error {
	if s.server == nil {
		return nil
	}
	if s.opts.VerifyClients {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("listening for DERP client verification: %w", err)
		}
		s.verifyLn = ln
		s.verifySrv = &http.Server{Handler: http.HandlerFunc(s.serveVerify), ReadHeaderTimeout: 5 * time.Second}
		go s.verifySrv.Serve(ln)
		s.server.SetVerifyClientURL("http://" + ln.Addr().String() + "/verify")
		s.server.SetVerifyClientURLFailOpen(false)
	}
	if s.opts.STUNListenAddr != "" {
		sctx, cancel := context.WithCancel(ctx)
		s.stunCancel = cancel
		s.stun = stunserver.New(sctx)
		if err := s.stun.Listen(s.opts.STUNListenAddr); err != nil {
			cancel()
			return fmt.Errorf("listening for STUN on %s: %w", s.opts.STUNListenAddr, err)
		}
		go func() {
			if err := s.stun.Serve(); err != nil && sctx.Err() == nil {
				s.log.Error("STUN server stopped", "err", err)
			}
		}()
		s.log.Info("STUN listening", "addr", s.stun.LocalAddr().String())
		s.rebuild(false) // the embedded region advertises the bound port
	}
	return nil
}

// serveVerify answers the relay's admission question for one node key.
func (s *Service) serveVerify(w http.ResponseWriter, r *http.Request) {
	var req tailcfg.DERPAdmitClientRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10)).Decode(&req); err != nil {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	allow := s.opts.IsKnownNode != nil && s.opts.IsKnownNode(req.NodePublic)
	if !allow {
		s.log.Info("DERP client refused: unknown node key", "nodekey", req.NodePublic.ShortString())
	}
	json.NewEncoder(w).Encode(tailcfg.DERPAdmitClientResponse{Allow: allow})
}

// Handler serves /derp and the latency probes, or nil when the embedded
// relay is off.
func (s *Service) Handler() http.Handler {
	if s.server == nil {
		return nil
	}
	return derpserver.Handler(s.server)
}

// ProbeHandler serves /derp/probe and /derp/latency-check.
func ProbeHandler() http.Handler { return http.HandlerFunc(derpserver.ProbeHandler) }

// Map returns the current DERP map.
func (s *Service) Map() *tailcfg.DERPMap { return s.current.Load() }

// Run fetches the URL sources now and, with auto-update, periodically,
// until ctx ends. A failed fetch keeps the previous map and is retried with
// backoff.
func (s *Service) Run(ctx context.Context) {
	if len(s.opts.URLs) == 0 && !s.opts.AutoUpdate {
		<-ctx.Done()
		return
	}
	backoff := 10 * time.Second
	for {
		ok := s.fetchAll(ctx)
		wait := s.opts.UpdateFrequency
		if !ok {
			wait = backoff
			backoff = min(backoff*2, 10*time.Minute)
		} else {
			backoff = 10 * time.Second
			if !s.opts.AutoUpdate {
				<-ctx.Done()
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if s.opts.AutoUpdate {
			if err := s.Reload(); err != nil {
				s.log.Warn("reloading DERP map files", "err", err)
			}
		}
	}
}

func (s *Service) fetchAll(ctx context.Context) bool {
	ok := true
	for _, u := range s.opts.URLs {
		m, err := s.fetch(ctx, u)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Warn("fetching DERP map failed; keeping the previous map and retrying", "url", u, "err", err)
			}
			ok = false
			continue
		}
		s.mu.Lock()
		s.fromURLs[u] = m
		s.mu.Unlock()
	}
	s.rebuild(true)
	return ok
}

func (s *Service) fetch(ctx context.Context, u string) (*tailcfg.DERPMap, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := s.opts.HTTPClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s", resp.Status)
	}
	var m tailcfg.DERPMap
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 4<<20)).Decode(&m); err != nil {
		return nil, fmt.Errorf("decoding DERP map: %w", err)
	}
	if err := checkRegions(&m); err != nil {
		return nil, fmt.Errorf("DERP map: %w", err)
	}
	return &m, nil
}

// checkRegions rejects what clients cannot use: a null region or node, or
// a region whose regionid differs from its key.
func checkRegions(m *tailcfg.DERPMap) error {
	for id, r := range m.Regions {
		if r == nil || r.RegionID != id {
			return fmt.Errorf("region %d: regionid must equal its key", id)
		}
		for i, n := range r.Nodes {
			if n == nil {
				return fmt.Errorf("region %d: node %d is empty", id, i+1)
			}
		}
	}
	return nil
}

// Reload re-reads the derp.paths files (SIGHUP). On error the previous map
// stays.
func (s *Service) Reload() error {
	if err := s.loadPaths(); err != nil {
		return err
	}
	s.rebuild(true)
	return nil
}

func (s *Service) loadPaths() error {
	merged := &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{}}
	for _, p := range s.opts.Paths {
		m, err := LoadFile(p)
		if err != nil {
			return err
		}
		for id, r := range m.Regions {
			merged.Regions[id] = r
		}
	}
	s.mu.Lock()
	s.fromPaths = merged
	s.mu.Unlock()
	return nil
}

// rebuild merges the sources (URLs, then files, then the embedded region;
// later sources win per region ID) and publishes the result.
func (s *Service) rebuild(notify bool) {
	m := &tailcfg.DERPMap{Regions: map[int]*tailcfg.DERPRegion{}}
	s.mu.Lock()
	for _, u := range s.opts.URLs {
		if um := s.fromURLs[u]; um != nil {
			for id, r := range um.Regions {
				m.Regions[id] = r
			}
		}
	}
	if s.fromPaths != nil {
		for id, r := range s.fromPaths.Regions {
			m.Regions[id] = r
		}
	}
	s.mu.Unlock()
	if s.opts.Enabled && s.opts.AddEmbeddedRegion {
		if r, err := s.embeddedRegion(); err != nil {
			s.log.Error("building embedded DERP region", "err", err)
		} else {
			m.Regions[r.RegionID] = r
		}
	}
	old := s.current.Swap(m)
	if notify && old != nil && !mapsEqual(old, m) {
		s.log.Info("DERP map changed", "regions", len(m.Regions))
		if s.opts.OnChange != nil {
			s.opts.OnChange(m)
		}
	}
}

func mapsEqual(a, b *tailcfg.DERPMap) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func (s *Service) embeddedRegion() (*tailcfg.DERPRegion, error) {
	u, err := url.Parse(s.opts.ServerURL)
	if err != nil {
		return nil, fmt.Errorf("parsing server_url: %w", err)
	}
	port := 443
	if u.Scheme == "http" {
		port = 80
	}
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("server_url port: %w", err)
		}
	}
	stunPort := -1
	if s.opts.STUNListenAddr != "" {
		addr := s.opts.STUNListenAddr
		if s.stun != nil {
			addr = s.stun.LocalAddr().String()
		}
		if _, p, err := net.SplitHostPort(addr); err == nil {
			stunPort, _ = strconv.Atoi(p)
		}
	}
	node := &tailcfg.DERPNode{
		Name:     strconv.Itoa(s.opts.RegionID) + "a",
		RegionID: s.opts.RegionID,
		HostName: u.Hostname(),
		DERPPort: port,
		STUNPort: stunPort,
		IPv4:     s.opts.IPv4,
		IPv6:     s.opts.IPv6,
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err == nil {
		if ip.Is4() && node.IPv4 == "" {
			node.IPv4 = ip.String()
		} else if ip.Is6() && node.IPv6 == "" {
			node.IPv6 = ip.String()
		}
	}
	if u.Scheme == "http" {
		// Plain-HTTP DERP is for local testing; clients need
		// TS_DEBUG_USE_DERP_HTTP=1 to use it.
		node.InsecureForTests = true
	}
	return &tailcfg.DERPRegion{
		RegionID:   s.opts.RegionID,
		RegionCode: s.opts.RegionCode,
		RegionName: s.opts.RegionName,
		Nodes:      []*tailcfg.DERPNode{node},
	}, nil
}

// Close stops the relay and STUN.
func (s *Service) Close() error {
	if s.stunCancel != nil {
		s.stunCancel()
	}
	if s.verifySrv != nil {
		s.verifySrv.Close()
	}
	if s.server != nil {
		return s.server.Close()
	}
	return nil
}

// LoadFile reads a DERP map from a YAML or JSON file (Headscale's
// derp.paths format: lower-case field names as in derp-example.yaml, or
// Tailscale's JSON names).
func LoadFile(path string) (*tailcfg.DERPMap, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading DERP map: %w", err)
	}
	var raw any
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	j, err := json.Marshal(stringKeys(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var m tailcfg.DERPMap
	// encoding/json matches field names case-insensitively, so YAML's
	// "regionid" fills RegionID.
	if err := json.Unmarshal(j, &m); err != nil {
		return nil, fmt.Errorf("%s: not a DERP map: %w", path, err)
	}
	if len(m.Regions) == 0 {
		return nil, fmt.Errorf("%s: DERP map has no regions", path)
	}
	if err := checkRegions(&m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for id, r := range m.Regions {
		if len(r.Nodes) == 0 {
			return nil, fmt.Errorf("%s: region %d has no nodes", path, id)
		}
	}
	return &m, nil
}

func stringKeys(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			t[k] = stringKeys(x)
		}
		return t
	case map[any]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[fmt.Sprint(k)] = stringKeys(x)
		}
		return out
	case []any:
		for i, x := range t {
			t[i] = stringKeys(x)
		}
		return t
	}
	return v
}

// Stats reports the embedded relay's counters for the metrics: clients
// connected now, connections accepted since start, and bytes relayed to
// clients. All zero when the relay is off.
func (s *Service) Stats() (current, accepted, bytesRelayed int64) {
	if s.server == nil {
		return 0, 0, 0
	}
	s.statsOnce.Do(func() {
		if m, ok := s.server.ExpVar(false).(interface{ Get(string) expvar.Var }); ok {
			s.stats = m
		}
	})
	if s.stats == nil {
		return 0, 0, 0
	}
	get := func(name string) int64 {
		if v, ok := s.stats.Get(name).(*expvar.Int); ok {
			return v.Value()
		}
		return 0
	}
	return get("gauge_current_connections"), get("accepts"), get("bytes_sent")
}
