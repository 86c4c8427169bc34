//go:build linux

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/tstest"
)

// ServerOptions tunes a server started by StartServer.
type ServerOptions struct {
	// EphemeralInactivityTimeout is node.ephemeral.inactivity_timeout;
	// zero means 120s.
	EphemeralInactivityTimeout time.Duration
	// ExtraConfig is YAML appended verbatim to the generated config.
	ExtraConfig string
	// Port fixes the HTTP port (server_url is http://127.0.0.1:Port);
	// zero picks a free one. A test restarting clients whose saved state
	// names a control URL needs that URL's port.
	Port int
	// BaseDomain is dns.base_domain; empty means tailnet.test.
	BaseDomain string
	// DNSExtra is YAML added inside the dns section (two-space indented
	// keys, e.g. "  certificates:\n    provider: rfc2136\n"); ExtraConfig
	// cannot add to a section the config already has. MagicDNS is on
	// unless it says "  magic_dns: false".
	DNSExtra string
	// RequireApproval is node.require_approval (device approval).
	RequireApproval bool
	// Prepare, when set, runs on the state directory before the server
	// starts, e.g. to put a database and key files there.
	Prepare func(dir string)
	// ServerURL, when set, is server_url (a proxy's address, or an https
	// URL under one of testHosts); by default http://127.0.0.1:Port.
	ServerURL string
	// DirectTLS says the server itself serves TLS on listen_addr (with
	// ExtraConfig's tls_* keys): its health is then checked over https,
	// with ServerURL's host name dialled at 127.0.0.1:Port.
	DirectTLS bool
	// Env is added to the server process's environment (e.g.
	// SSL_CERT_FILE trusting a test ACME server's listener).
	Env []string
	// Postgres, when set, is the database the server runs on (a database
	// of the run's private cluster, pg); by default it runs on SQLite
	// (db.sqlite in its state directory).
	Postgres *pgtest.Database
	// DatabaseFromEnv leaves the database out of the config file: Env
	// names it (PG_DSN or HEADSCALE_DATABASE_POSTGRES_URL), as a
	// deployment that passes it in the environment does.
	DatabaseFromEnv bool
	// STUNPort fixes the embedded DERP's STUN port; zero picks a free
	// one. A DERP map file naming this server's relay needs it.
	STUNPort int
	// DERPRegionID is the embedded relay's derp.server.region_id; zero
	// means 999.
	DERPRegionID int
	// DERPPaths, when set, is derp.paths, and the embedded region is not
	// added by itself (automatically_add_embedded_derp_region: false):
	// the files list the regions, this server's relay among them.
	DERPPaths []string
}

// Server is a running headscale server with its own state directory.
type Server struct {
	t   testing.TB
	env *Env

	// Dir is the server's state directory (config, keys, database, socket).
	Dir string
	// ConfigPath is the YAML config passed with -c.
	ConfigPath string
	// LogPath receives the server's stdout and stderr.
	LogPath string
	// Port is the HTTP port (control protocol, DERP, /health).
	Port int
	// MetricsPort is the metrics listener port.
	MetricsPort int
	// STUNPort is the embedded DERP's STUN port (UDP).
	STUNPort int
	// URL is the server_url, http://127.0.0.1:Port unless
	// ServerOptions.ServerURL says otherwise.
	URL string
	// Direct is the base URL of the server's own listener, bypassing any
	// proxy: http://127.0.0.1:Port, or https://<server_url host>:Port with
	// DirectTLS (the name resolves to 127.0.0.1 in the namespace).
	Direct string

	extraEnv []string // ServerOptions.Env
	proc     *process
}

// StartServer writes a config into a fresh temporary directory, starts
// `headscale serve` and waits until /health passes. The server is stopped
// when the test ends; its log tail is printed if the test failed.
func StartServer(t testing.TB, opts ServerOptions) *Server {
	t.Helper()
	env := requireEnv(t)
	if env.Headscale == "" {
		t.Fatalf("headscale binary not available; ./cmd/headscale failed to build:\n%s", env.HeadscaleBuildErr)
	}
	s := &Server{
		t:           t,
		env:         env,
		Dir:         t.TempDir(),
		Port:        opts.Port,
		MetricsPort: env.FreePort(t),
		STUNPort:    opts.STUNPort,
		extraEnv:    opts.Env,
	}
	if s.STUNPort == 0 {
		s.STUNPort = env.FreePort(t)
	}
	if s.Port == 0 {
		s.Port = env.FreePort(t)
	} else if !portFree(s.Port) {
		t.Fatalf("port %d is taken; this test needs it (run it inside the e2e network namespace)", s.Port)
	}
	s.URL = fmt.Sprintf("http://127.0.0.1:%d", s.Port)
	s.Direct = s.URL
	if opts.ServerURL != "" {
		s.URL = opts.ServerURL
	}
	if opts.DirectTLS {
		u, err := url.Parse(s.URL)
		if err != nil {
			t.Fatal(err)
		}
		s.Direct = fmt.Sprintf("https://%s:%d", u.Hostname(), s.Port)
	}
	s.ConfigPath = filepath.Join(s.Dir, "config.yaml")
	// In the run's audit directory: TestMain checks every server log
	// for the secrets the run created.
	s.LogPath = env.audit.logPath(t, "headscale")
	if sock := filepath.Join(s.Dir, "hs.sock"); len(sock) > 100 {
		t.Fatalf("unix socket path %q too long; use a shorter TMPDIR", sock)
	}
	if err := os.WriteFile(s.ConfigPath, []byte(s.config(opts)), 0o600); err != nil {
		t.Fatal(err)
	}
	if opts.Prepare != nil {
		opts.Prepare(s.Dir)
	}
	logTailOnFailure(t, "headscale", s.LogPath, 80)
	t.Cleanup(func() {
		if s.proc != nil {
			s.proc.stop(10 * time.Second)
		}
	})
	s.start()
	env.audit.addKeyFile(t, "noise private key", filepath.Join(s.Dir, "noise.key"))
	env.audit.addKeyFile(t, "DERP private key", filepath.Join(s.Dir, "derp.key"))
	return s
}

func (s *Server) config(opts ServerOptions) string {
	timeout := opts.EphemeralInactivityTimeout
	if timeout == 0 {
		timeout = 120 * time.Second
	}
	p := func(name string) string { return fmt.Sprintf("%q", filepath.Join(s.Dir, name)) }
	var b strings.Builder
	fmt.Fprintf(&b, "server_url: %q\n", s.URL)
	fmt.Fprintf(&b, "listen_addr: \"127.0.0.1:%d\"\n", s.Port)
	fmt.Fprintf(&b, "metrics_listen_addr: \"127.0.0.1:%d\"\n", s.MetricsPort)
	fmt.Fprintf(&b, "state_dir: %q\n", s.Dir)
	fmt.Fprintf(&b, "noise:\n  private_key_path: %s\n", p("noise.key"))
	fmt.Fprintf(&b, "prefixes:\n  v4: 100.64.0.0/10\n  v6: fd7a:115c:a1e0::/48\n")
	if opts.DatabaseFromEnv {
		// Nothing: the environment selects and names the database.
	} else if db := opts.Postgres; db != nil {
		fmt.Fprintf(&b, "database:\n  type: postgres\n  postgres:\n    host: %q\n    port: %d\n    name: %q\n    user: %q\n",
			db.Host, db.Port, db.Name, db.User)
	} else {
		fmt.Fprintf(&b, "database:\n  type: sqlite\n  sqlite:\n    path: %s\n", p("db.sqlite"))
	}
	fmt.Fprintf(&b, "unix_socket: %s\n", p("hs.sock"))
	fmt.Fprintf(&b, "derp:\n")
	fmt.Fprintf(&b, "  server:\n")
	fmt.Fprintf(&b, "    enabled: true\n")
	region := opts.DERPRegionID
	if region == 0 {
		region = 999
	}
	fmt.Fprintf(&b, "    region_id: %d\n", region)
	if len(opts.DERPPaths) > 0 {
		fmt.Fprintf(&b, "    automatically_add_embedded_derp_region: false\n")
	}
	fmt.Fprintf(&b, "    region_code: headscale\n")
	fmt.Fprintf(&b, "    region_name: \"Headscale Embedded DERP\"\n")
	fmt.Fprintf(&b, "    stun_listen_addr: \"127.0.0.1:%d\"\n", s.STUNPort)
	fmt.Fprintf(&b, "    private_key_path: %s\n", p("derp.key"))
	fmt.Fprintf(&b, "  urls: []\n")
	var paths []string
	for _, p := range opts.DERPPaths {
		paths = append(paths, fmt.Sprintf("%q", p))
	}
	fmt.Fprintf(&b, "  paths: [%s]\n", strings.Join(paths, ", "))
	fmt.Fprintf(&b, "  auto_update_enabled: false\n")
	domain := opts.BaseDomain
	if domain == "" {
		domain = "tailnet.test"
	}
	fmt.Fprintf(&b, "dns:\n  base_domain: %s\n", domain)
	if !strings.Contains(opts.DNSExtra, "magic_dns:") {
		b.WriteString("  magic_dns: true\n")
	}
	if opts.DNSExtra != "" {
		b.WriteString(strings.TrimSuffix(opts.DNSExtra, "\n") + "\n")
	}
	fmt.Fprintf(&b, "node:\n  ephemeral:\n    inactivity_timeout: %s\n", timeout)
	if opts.RequireApproval {
		fmt.Fprintf(&b, "  require_approval: true\n")
	}
	fmt.Fprintf(&b, "log:\n  level: debug\n")
	if opts.ExtraConfig != "" {
		b.WriteString(opts.ExtraConfig)
		if !strings.HasSuffix(opts.ExtraConfig, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// start launches `headscale serve` and waits for /health.
func (s *Server) start() {
	s.t.Helper()
	proc, err := startProcess("headscale", s.env.Headscale, []string{"-c", s.ConfigPath, "serve"}, s.extraEnv, s.LogPath)
	if err != nil {
		s.t.Fatal(err)
	}
	s.proc = proc
	if err := tstest.Poll(30*time.Second, s.healthy); err != nil {
		s.t.Fatalf("headscale not ready: %v", err)
	}
}

// healthy checks GET /health for 200 {"status":"pass"}.
func (s *Server) healthy() error {
	if err := s.proc.exited(); err != nil {
		return tstest.Permanent(err)
	}
	c := s.env.HTTPClient()
	c.Timeout = 2 * time.Second
	resp, err := c.Get(s.Direct + "/health")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/health: %s: %s", resp.Status, body)
	}
	var h struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return fmt.Errorf("/health: %v: %q", err, body)
	}
	if h.Status != "pass" {
		return fmt.Errorf("/health: status %q", h.Status)
	}
	return nil
}

// Stop stops the server (SIGTERM, then SIGKILL after 10s).
func (s *Server) Stop() {
	s.t.Helper()
	s.proc.stop(10 * time.Second)
}

// Restart stops the server and starts it again with the same config and
// state, waiting until it is healthy.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// CLI runs `headscale -c CONFIG args...` against the running server and
// returns its stdout. The error includes stderr.
func (s *Server) CLI(t testing.TB, args ...string) (string, error) {
	t.Helper()
	full := append([]string{"-c", s.ConfigPath}, args...)
	stdout, stderr, err := runCmd(30*time.Second, s.env.Headscale, full...)
	s.env.audit.recordCLI(args, stdout, stderr)
	if err != nil {
		t.Logf("headscale %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, stdout, stderr)
		return stdout, fmt.Errorf("headscale %s: %v: %s%s", strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout, nil
}

// cliJSON runs a CLI command and decodes its stdout into v, failing the
// test on any error.
func (s *Server) cliJSON(t testing.TB, v any, args ...string) {
	t.Helper()
	out, err := s.CLI(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("headscale %s: decoding %T: %v\noutput: %s", strings.Join(args, " "), v, err, out)
	}
}

// Timestamp is a time in the CLI's JSON output, printed as Headscale's CLI
// prints a google.protobuf.Timestamp: {"seconds": N, "nanos": N}, zero
// fields omitted. Null, an absent field or Go's zero time (seconds
// -62135596800) all mean "not set" and leave it zero.
type Timestamp struct{ time.Time }

// UnmarshalJSON implements json.Unmarshaler.
func (ts *Timestamp) UnmarshalJSON(b []byte) error {
	*ts = Timestamp{}
	if string(b) == "null" {
		return nil
	}
	var v struct {
		Seconds *int64 `json:"seconds"`
		Nanos   int64  `json:"nanos"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return fmt.Errorf("timestamp: want {seconds, nanos}, got %s: %w", b, err)
	}
	if v.Seconds == nil && v.Nanos == 0 {
		return nil
	}
	var sec int64
	if v.Seconds != nil {
		sec = *v.Seconds
	}
	t := time.Unix(sec, v.Nanos).UTC()
	if t.Equal(time.Time{}) {
		return nil
	}
	*ts = Timestamp{t}
	return nil
}

// ID is an ID in the CLI's JSON output: a number there (Headscale's uint64),
// kept as its decimal text so it can be passed back as a flag.
type ID string

// UnmarshalJSON implements json.Unmarshaler.
func (id *ID) UnmarshalJSON(b []byte) error {
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("id: want a number, got %s: %w", b, err)
	}
	*id = ID(n)
	return nil
}

// User is a user as printed by `headscale users ... -o json`.
type User struct {
	ID        ID        `json:"id"`
	Name      string    `json:"name"`
	CreatedAt Timestamp `json:"created_at"`
}

// PreAuthKey is a pre-auth key as printed by `headscale preauthkeys ... -o json`.
type PreAuthKey struct {
	ID         ID        `json:"id"`
	Key        string    `json:"key"`
	User       User      `json:"user"`
	Reusable   bool      `json:"reusable"`
	Ephemeral  bool      `json:"ephemeral"`
	Used       bool      `json:"used"`
	Expiration Timestamp `json:"expiration"`
	ACLTags    []string  `json:"acl_tags"`
}

// NodeInfo is a node as printed by `headscale nodes list -o json`.
type NodeInfo struct {
	ID          ID        `json:"id"`
	Name        string    `json:"name"`
	GivenName   string    `json:"given_name"`
	IPAddresses []string  `json:"ip_addresses"`
	Online      bool      `json:"online"`
	User        User      `json:"user"`
	LastSeen    Timestamp `json:"last_seen"`
	Expiry      Timestamp `json:"expiry"`
}

// Expired reports whether the node's key expiry is set and not after now.
func (n NodeInfo) Expired(now time.Time) bool {
	return !n.Expiry.IsZero() && !n.Expiry.After(now)
}

// HasIP reports whether ip is among the node's addresses.
func (n NodeInfo) HasIP(ip netip.Addr) bool {
	for _, s := range n.IPAddresses {
		if a, err := netip.ParseAddr(s); err == nil && a == ip {
			return true
		}
	}
	return false
}

// CreateUser runs `users create NAME -o json`.
func (s *Server) CreateUser(t testing.TB, name string) User {
	t.Helper()
	var u User
	s.cliJSON(t, &u, "users", "create", name, "-o", "json")
	if u.ID == "" || u.Name != name {
		t.Fatalf("users create %s: unexpected result %+v", name, u)
	}
	return u
}

// PreAuthKeyOptions selects the flags of `preauthkeys create`.
type PreAuthKeyOptions struct {
	Reusable   bool
	Ephemeral  bool
	Expiration string // e.g. "1h"; empty leaves the server default
	Tags       []string
}

// CreatePreAuthKey runs `preauthkeys create --user USER ... -o json`.
func (s *Server) CreatePreAuthKey(t testing.TB, user string, o PreAuthKeyOptions) PreAuthKey {
	t.Helper()
	args := []string{"preauthkeys", "create", "--user", user}
	if o.Reusable {
		args = append(args, "--reusable")
	}
	if o.Ephemeral {
		args = append(args, "--ephemeral")
	}
	if o.Expiration != "" {
		args = append(args, "--expiration", o.Expiration)
	}
	if len(o.Tags) > 0 {
		args = append(args, "--tags", strings.Join(o.Tags, ","))
	}
	args = append(args, "-o", "json")
	var k PreAuthKey
	s.cliJSON(t, &k, args...)
	if k.ID == "" || !strings.HasPrefix(k.Key, "hskey-auth-") {
		t.Fatalf("preauthkeys create: unexpected result %+v", k)
	}
	s.env.audit.addKey(t, "pre-auth key", k.Key)
	if k.Reusable != o.Reusable || k.Ephemeral != o.Ephemeral || k.Used {
		t.Fatalf("preauthkeys create: flags not reflected: want reusable=%v ephemeral=%v used=false, got %+v", o.Reusable, o.Ephemeral, k)
	}
	return k
}

// ExpirePreAuthKey runs `preauthkeys expire --id ID`.
func (s *Server) ExpirePreAuthKey(t testing.TB, id string) {
	t.Helper()
	if _, err := s.CLI(t, "preauthkeys", "expire", "--id", id); err != nil {
		t.Fatal(err)
	}
}

// ListPreAuthKeys runs `preauthkeys list -o json`.
func (s *Server) ListPreAuthKeys(t testing.TB) []PreAuthKey {
	t.Helper()
	var keys []PreAuthKey
	s.cliJSON(t, &keys, "preauthkeys", "list", "-o", "json")
	return keys
}

// ListNodes runs `nodes list -o json`.
func (s *Server) ListNodes(t testing.TB) []NodeInfo {
	t.Helper()
	nodes, err := s.listNodes(t)
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}

// listNodes is ListNodes returning errors, for use inside waitFor.
func (s *Server) listNodes(t testing.TB) ([]NodeInfo, error) {
	t.Helper()
	out, err := s.CLI(t, "nodes", "list", "-o", "json")
	if err != nil {
		return nil, err
	}
	var nodes []NodeInfo
	if err := json.Unmarshal([]byte(out), &nodes); err != nil {
		return nil, fmt.Errorf("nodes list: %v\noutput: %s", err, out)
	}
	return nodes, nil
}

// errNodeNotFound is returned by findNode when no node has the name.
var errNodeNotFound = errors.New("node not found")

// findNode fetches `nodes list` and returns the node called name.
func (s *Server) findNode(t testing.TB, name string) (NodeInfo, error) {
	t.Helper()
	nodes, err := s.listNodes(t)
	if err != nil {
		return NodeInfo{}, err
	}
	for _, n := range nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return NodeInfo{}, fmt.Errorf("%w: %q in %d nodes", errNodeNotFound, name, len(nodes))
}

// DeleteNode runs `nodes delete --identifier ID`.
func (s *Server) DeleteNode(t testing.TB, id string) {
	t.Helper()
	if _, err := s.CLI(t, "nodes", "delete", "--identifier", id); err != nil {
		t.Fatal(err)
	}
}

// ExpireNode runs `nodes expire --identifier ID`.
func (s *Server) ExpireNode(t testing.TB, id string) {
	t.Helper()
	if _, err := s.CLI(t, "nodes", "expire", "--identifier", id); err != nil {
		t.Fatal(err)
	}
}
