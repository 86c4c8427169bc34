// Package servertest runs this repository's server in the test process,
// for tests that need the whole thing: the control protocol, the REST API,
// the map hub and SQLite together. It replaces the private test servers
// that pkg/server, pkg/loadgen, pkg/cli and the fuzz targets each had.
//
// A test starts a server, creates what it needs through the REST API (over
// the unix socket, with local trust, as the CLI does), attaches simulated
// clients and waits for what it expects with internal/tstest:
//
//	ts := servertest.Start(t, servertest.Options{})
//	user := ts.CreateUser(t, "alice")
//	authKey := ts.CreatePreAuthKey(t, user, true, time.Time{})
//	fleet := ts.Fleet(t, authKey, 2, "node")
//	tstest.WaitFor(t, 30*time.Second, "each node to see the other", func() error {
//		return fleet.WaitConverged(context.Background(), 0)
//	})
//
// (TestTwoNodesSeeEachOther is that test, whole.)
//
// What a server gets:
//
//   - a temporary directory (Options.Dir to choose it) holding config.yaml,
//     the SQLite database, the keys and the unix socket (with
//     Options.SystemRoot, those three go where a Headscale config puts
//     them, under that root); Options.ExtraYAML
//     is appended to the config, and Options.Tweak sees the *server.Server
//     after New and before Listen, so tests in package server (through an
//     export_test.go) can lower limits or swap components;
//   - loopback listeners on free ports (URL is the main one), no metrics
//     listener, STUN on a free port, the gRPC API's on a free port when
//     ExtraYAML turns it on (grpc_allow_insecure, or a TLS pair;
//     Server.GRPCAddr);
//   - every log line at debug level kept in memory (Logs); when the test
//     ends, no line may carry a whole pre-auth or API key, the secret part
//     of a key the harness created, or the Noise or DERP private key
//     (Options.DiscardLogs turns capture and check off, for fuzzing and
//     load);
//   - when the test ends, the server is stopped (Run must return nil) and
//     no goroutine of the server's packages may still be running.
//
// Simulated clients come in two sizes: RegisterNode registers one node
// with keys the test holds (a tsp client, to drive the protocol by hand),
// and Fleet starts the load tool's nodes (pkg/loadgen), each registered
// and holding a streaming map session, with their view of the netmap.
//
// Packages whose tests use the harness keep a leak_test.go whose TestMain
// calls goleak.VerifyTestMain, which checks the whole binary at the end.
// Tests inside a package the harness imports (pkg/server, pkg/loadgen)
// cannot import it; they live in the external test package (server_test,
// loadgen_test), with an export_test.go for the internals they need.
package servertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/loadgen"
	"github.com/hsctl/headscale/pkg/server"
	"go.yaml.in/yaml/v3"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Options adjust a server before it starts. The zero value is a plain
// server with the default (no) policy.
type Options struct {
	// Dir holds the config, database, keys and socket; default a new
	// tb.TempDir(). Tests that put files there first (a policy, TLS
	// certificates) pass their own.
	Dir string
	// ExtraYAML is appended to the generated config.yaml.
	ExtraYAML string
	// Tweak, when set, is called after server.New and before Listen.
	Tweak func(*server.Server)
	// Version is what the server reports as its version; default "test".
	Version string
	// DiscardLogs drops the server's log instead of keeping it for Logs
	// and the end-of-test secrets check.
	DiscardLogs bool
	// SystemRoot, when set, leaves state_dir and unix_socket out of the
	// config, as a Headscale config does, and stands in for / in the
	// locations the server then uses (config.LoadOptions.SystemRoot):
	// SystemRoot/var/lib/headscale and
	// SystemRoot/var/run/headscale/headscale.sock. Dir keeps config.yaml.
	SystemRoot string
	// Postgres, when set, is the database the server runs on (from the
	// test binary's pgtest cluster); ExtraYAML may still override its
	// keys. By default the server runs on SQLite in Dir.
	Postgres *pgtest.Database
	// Several says other servers of the test run beside this one, started
	// after it or stopped after it (several servers serving one tailnet):
	// the check that the server's goroutines end with it is skipped, since
	// it cannot tell theirs from this one's. The package's leak check at
	// the end of the test binary still sees every one.
	Several bool
}

// Server is a running server and how to reach it.
type Server struct {
	// Server is the server itself; tests in package server reach its
	// internals through their export_test.go.
	*server.Server
	// URL is the main listener, "http://127.0.0.1:port".
	URL string
	// Dir is the server's directory; ConfigPath its config.yaml there, the
	// file the CLI (pkg/cli) is pointed at with -c.
	Dir, ConfigPath string
	// Config is the loaded configuration the server runs with.
	Config *config.Config

	stop   func() error // ends Run and returns its result; idempotent
	logs   *tstest.Buffer
	socket *http.Client // the unix socket: the API with local trust

	mu      sync.Mutex
	secrets []string // keys the harness created, and their secret parts
}

// Start runs a server until tb ends and fails tb if it does not come up.
func Start(tb testing.TB, opts Options) *Server {
	tb.Helper()
	cfgPath := WriteConfig(tb, &opts)
	dir := opts.Dir
	cfg, _, err := config.Load(config.LoadOptions{Path: cfgPath, SystemRoot: opts.SystemRoot})
	if err != nil {
		tb.Fatalf("loading the test config: %v", err)
	}
	ts := &Server{Dir: dir, ConfigPath: cfgPath, Config: cfg}
	log := slog.New(slog.DiscardHandler)
	if !opts.DiscardLogs {
		ts.logs = &tstest.Buffer{}
		var to io.Writer = ts.logs
		if testing.Verbose() {
			to = io.MultiWriter(ts.logs, os.Stderr)
		}
		log = slog.New(slog.NewTextHandler(to, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	version := opts.Version
	if version == "" {
		version = "test"
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.New(ctx, cfg, log, version)
	if err != nil {
		cancel()
		tb.Fatalf("server.New: %v", err)
	}
	if opts.Tweak != nil {
		opts.Tweak(s)
	}
	if err := s.Listen(ctx); err != nil {
		cancel()
		s.Close()
		tb.Fatalf("server Listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	ts.Server = s
	ts.URL = "http://" + s.Addr().String()
	ts.stop = sync.OnceValue(func() error { cancel(); return <-done })
	sock := cfg.UnixSocket
	ts.socket = &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}},
	}
	keyFiles := privateKeyTexts(cfg)
	before := goroutineIDs()
	tb.Cleanup(func() {
		ts.socket.CloseIdleConnections()
		if err := ts.stop(); err != nil {
			tb.Errorf("server run: %v", err)
		}
		if opts.Several {
			// Another server's goroutines would be counted.
		} else if err := tstest.Poll(5*time.Second, func() error { return serverGoroutinesGone(before) }); err != nil {
			tb.Errorf("after the server stopped: %v", err)
		}
		if ts.logs != nil {
			ts.mu.Lock()
			secrets := append(keyFiles, ts.secrets...)
			ts.mu.Unlock()
			CheckLogSecrets(tb, ts.logs.String(), secrets)
		}
	})
	return ts
}

// baseYAML is the config every test server starts from; %[1]s is its
// directory.
const baseYAML = `
server_url: http://127.0.0.1:8080
listen_addr: 127.0.0.1:0
metrics_listen_addr: ""
grpc_listen_addr: 127.0.0.1:0
state_dir: %[1]s
unix_socket: %[1]s/hs.sock
derp:
  server:
    stun_listen_addr: 127.0.0.1:0
`

// WriteConfig writes the config.yaml Start would run with into opts.Dir
// (choosing a new tb.TempDir() when it is empty, and setting opts.Dir)
// and returns its path; for tests that use the config before the server
// runs (the CLI's offline commands). opts.ExtraYAML is merged into the
// base config: its keys replace the base's, maps merge key by key.
func WriteConfig(tb testing.TB, opts *Options) string {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	var base, extra map[string]any
	if err := yaml.Unmarshal(fmt.Appendf(nil, baseYAML, opts.Dir), &base); err != nil {
		tb.Fatalf("the base test config: %v", err)
	}
	if err := yaml.Unmarshal([]byte(opts.ExtraYAML), &extra); err != nil {
		tb.Fatalf("Options.ExtraYAML: %v", err)
	}
	if opts.SystemRoot != "" {
		delete(base, "state_dir")
		delete(base, "unix_socket")
	}
	if db := opts.Postgres; db != nil {
		base = mergeYAML(base, map[string]any{"database": map[string]any{"type": "postgres", "postgres": map[string]any{
			"host": db.Host, "port": db.Port, "name": db.Name, "user": db.User}}})
	}
	out, err := yaml.Marshal(mergeYAML(base, extra))
	if err != nil {
		tb.Fatalf("writing the test config: %v", err)
	}
	path := filepath.Join(opts.Dir, "config.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		tb.Fatalf("writing the test config: %v", err)
	}
	return path
}

// mergeYAML returns base with over's keys: a map in both is merged, any
// other value of over replaces base's.
func mergeYAML(base, over map[string]any) map[string]any {
	for k, v := range over {
		bm, bok := base[k].(map[string]any)
		om, ook := v.(map[string]any)
		if bok && ook {
			base[k] = mergeYAML(bm, om)
			continue
		}
		base[k] = v
	}
	return base
}

// Stop ends the server (as the end of the test would) and returns Run's
// result; later calls return the same.
func (ts *Server) Stop() error { return ts.stop() }

// Logs is every line the server has logged so far ("" with DiscardLogs).
func (ts *Server) Logs() string {
	if ts.logs == nil {
		return ""
	}
	return ts.logs.String()
}

// API makes one REST call over the unix socket (local trust: no API key)
// and returns the response with its body, read up to 8 MiB.
func (ts *Server) API(method, path string, body []byte) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, "http://headscale"+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, fmt.Errorf("building %s %s: %w", method, path, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := ts.socket.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return resp, out, fmt.Errorf("reading %s %s: %w", method, path, err)
	}
	return resp, out, nil
}

// MustAPI makes one REST call as API does and fails tb unless it answers
// 200; it returns the body.
func (ts *Server) MustAPI(tb testing.TB, method, path, body string) []byte {
	tb.Helper()
	resp, out, err := ts.API(method, path, []byte(body))
	if err != nil {
		tb.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		tb.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, out)
	}
	return out
}

// CreateUser creates a user and returns its ID (decimal, as the API
// writes it).
func (ts *Server) CreateUser(tb testing.TB, name string) string {
	tb.Helper()
	var out struct {
		User struct {
			ID string `json:"id"`
		} `json:"user"`
	}
	b := ts.MustAPI(tb, "POST", "/api/v1/user", fmt.Sprintf(`{"name":%q}`, name))
	if err := json.Unmarshal(b, &out); err != nil || out.User.ID == "" {
		tb.Fatalf("creating user %q: %v %s", name, err, b)
	}
	return out.User.ID
}

// CreatePreAuthKey creates a pre-auth key for the user with that ID and
// returns the whole key. A zero exp means an hour from now.
func (ts *Server) CreatePreAuthKey(tb testing.TB, userID string, reusable bool, exp time.Time) string {
	tb.Helper()
	if exp.IsZero() {
		exp = time.Now().Add(time.Hour)
	}
	var out struct {
		Key struct {
			Key string `json:"key"`
		} `json:"preAuthKey"`
	}
	b := ts.MustAPI(tb, "POST", "/api/v1/preauthkey",
		fmt.Sprintf(`{"user":%q,"reusable":%v,"expiration":%q}`, userID, reusable, exp.UTC().Format(time.RFC3339)))
	if err := json.Unmarshal(b, &out); err != nil || out.Key.Key == "" {
		tb.Fatalf("creating a pre-auth key: %v %s", err, b)
	}
	ts.NoteSecret(out.Key.Key)
	return out.Key.Key
}

// CreateAPIKey creates an API key and returns the whole key. A zero exp
// leaves the expiration to the server's default.
func (ts *Server) CreateAPIKey(tb testing.TB, exp time.Time) string {
	tb.Helper()
	body := "{}"
	if !exp.IsZero() {
		body = fmt.Sprintf(`{"expiration":%q}`, exp.UTC().Format(time.RFC3339))
	}
	var out struct {
		APIKey string `json:"apiKey"`
	}
	b := ts.MustAPI(tb, "POST", "/api/v1/apikey", body)
	if err := json.Unmarshal(b, &out); err != nil || out.APIKey == "" {
		tb.Fatalf("creating an API key: %v %s", err, b)
	}
	ts.NoteSecret(out.APIKey)
	return out.APIKey
}

// NoteSecret adds a key made outside the harness (by the CLI, by a test's
// own API call) to what no log line may carry: the whole key and its
// secret part (after the last '-').
func (ts *Server) NoteSecret(k string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.secrets = append(ts.secrets, k, k[strings.LastIndexByte(k, '-')+1:])
}

// Node is a node RegisterNode registered: its keys, and a client that
// speaks the control protocol for it.
type Node struct {
	// ID is the server's node ID (decimal, as the API writes it).
	ID string
	// Machine and Key are the node's machine and node private keys.
	Machine key.MachinePrivate
	Key     key.NodePrivate
	// Client speaks the control protocol (Noise) with Machine; it is
	// closed when the test ends.
	Client *tsp.Client
}

// RegisterNode registers a new node (fresh machine and node keys) with
// authKey and fails tb unless the server authorizes it. The node has no
// map session; open one with Node.Client.Map.
func (ts *Server) RegisterNode(tb testing.TB, authKey, hostname string) *Node {
	tb.Helper()
	n := &Node{Machine: key.NewMachine(), Key: key.NewNode()}
	c, err := tsp.NewClient(tsp.ClientOpts{ServerURL: ts.URL, MachineKey: n.Machine})
	if err != nil {
		tb.Fatalf("control client: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	n.Client = c
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Register(ctx, tsp.RegisterOpts{NodeKey: n.Key, AuthKey: authKey, Hostinfo: &tailcfg.Hostinfo{Hostname: hostname}})
	if err != nil || !resp.MachineAuthorized {
		tb.Fatalf("registering %s: %v %+v", hostname, err, resp)
	}
	var nodes struct {
		Nodes []struct {
			ID      string `json:"id"`
			NodeKey string `json:"nodeKey"`
		} `json:"nodes"`
	}
	b := ts.MustAPI(tb, "GET", "/api/v1/node", "")
	if err := json.Unmarshal(b, &nodes); err != nil {
		tb.Fatalf("listing nodes: %v %s", err, b)
	}
	want, _ := n.Key.Public().MarshalText()
	for _, l := range nodes.Nodes {
		if l.NodeKey == string(want) {
			n.ID = l.ID
		}
	}
	if n.ID == "" {
		tb.Fatalf("registered %s, but the node list lacks it: %s", hostname, b)
	}
	return n
}

// Fleet starts n of the load tool's simulated nodes (hostnames
// hostname-0, hostname-1, ...; see loadgen.Fleet) registered with authKey,
// each holding a streaming map session, and returns once every one of
// them sees all the others. They disconnect when the test ends.
func (ts *Server) Fleet(tb testing.TB, authKey string, n int, hostname string) *loadgen.Fleet {
	tb.Helper()
	cfg := loadgen.DefaultConfig()
	cfg.URL = ts.URL
	cfg.AuthKey = authKey
	cfg.N = n
	cfg.Hostname = hostname
	cfg.Concurrency = min(n, 16)
	cfg.RegisterTimeout = time.Minute
	cfg.ConvergeTimeout = time.Minute
	if testing.Verbose() {
		cfg.Logf = tb.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f, err := loadgen.StartFleet(ctx, cfg)
	if err != nil {
		tb.Fatalf("starting %d simulated nodes: %v", n, err)
	}
	tb.Cleanup(f.Close)
	return f
}

// fullKey matches a whole pre-auth or API key, which no log line may carry.
var fullKey = regexp.MustCompile(`hskey-(auth|api)-[0-9a-f]{12}-[0-9a-f]{64}`)

// CheckLogSecrets fails tb for each line of logs that carries a whole key
// or one of secrets.
func CheckLogSecrets(tb testing.TB, logs string, secrets []string) {
	tb.Helper()
	for i, line := range strings.Split(logs, "\n") {
		if fullKey.MatchString(line) {
			tb.Errorf("log line %d carries a key: %s", i+1, line)
			continue
		}
		for _, s := range secrets {
			if s != "" && strings.Contains(line, s) {
				tb.Errorf("log line %d carries a secret: %s", i+1, line)
			}
		}
	}
}

// privateKeyTexts reads the Noise and DERP private key files the server
// wrote: each whole, and its hex part.
func privateKeyTexts(cfg *config.Config) []string {
	var out []string
	for _, p := range []string{cfg.Noise.PrivateKeyPath, cfg.DERP.Server.PrivateKeyPath} {
		if b, err := os.ReadFile(p); err == nil {
			text := strings.TrimSpace(string(b))
			_, hex, _ := strings.Cut(text, ":")
			out = append(out, text, hex)
		}
	}
	return out
}

// serverPackages are the packages whose goroutines belong to a running
// server: none may be left once it has stopped.
var serverPackages = []string{"/pkg/control.", "/pkg/state.", "/pkg/mapper.", "/pkg/store.", "/pkg/server."}

// goroutines returns the stacks of every goroutine, keyed by the
// "goroutine N" that starts each.
func goroutines() map[string]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := map[string]string{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		id, _, _ := strings.Cut(g, " [")
		out[id] = g
	}
	return out
}

// goroutineIDs is the set of goroutines running now.
func goroutineIDs() map[string]bool {
	ids := map[string]bool{}
	for id := range goroutines() {
		ids[id] = true
	}
	return ids
}

// serverGoroutinesGone reports the goroutines not in before that still run
// code of the server's packages, other than tests' own, or nil when there
// are none. Goroutines of a server started earlier in the same test (and
// stopped later: cleanups run last-in first-out) are in before.
func serverGoroutinesGone(before map[string]bool) error {
	var left []string
	for id, g := range goroutines() {
		if before[id] || strings.Contains(g, "_test.go:") {
			continue
		}
		for _, pkg := range serverPackages {
			if strings.Contains(g, "github.com/hsctl/headscale"+pkg) {
				left = append(left, g)
				break
			}
		}
	}
	if len(left) > 0 {
		return errors.New("server goroutines left behind:\n" + strings.Join(left, "\n\n"))
	}
	return nil
}

// Engine returns o for the engine the run asks for: when
// PostgresRequested, a server not given its database otherwise (Postgres,
// or database keys in ExtraYAML) runs on a new database of c.
func Engine(tb testing.TB, c *pgtest.Cluster, o Options) Options {
	if pgtest.Requested() && o.Postgres == nil && !strings.Contains(o.ExtraYAML, "database:") {
		db := c.Database(tb)
		o.Postgres = &db
	}
	return o
}
