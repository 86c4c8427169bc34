// Package pebbletest runs Let's Encrypt's Pebble, a real ACME server made
// for tests, on loopback. It is test-only code (under internal/, never
// imported by pkg/). Pebble is pinned in go.mod's tool block
// (github.com/letsencrypt/pebble/v2/cmd/pebble) and built once per version
// into a cache directory under GOCACHE, as internal/testbin builds the
// Tailscale client.
//
// The pin is v2.8.0 on purpose: it is the last release whose finalize
// response carries a Location header, as Let's Encrypt's production CA's
// does. Later releases drop it (letsencrypt/pebble#508), and the ACME
// client of our tailscale.com version (feature/acme, for `tailscale cert`)
// finds the order by that header (x/crypto's CreateOrderCert; see
// golang/go#77704), so with them `tailscale cert` fails against Pebble
// though it works against Let's Encrypt.
//
// Pebble validates every challenge for real (PEBBLE_VA_ALWAYS_VALID is
// never set here): for HTTP-01 it fetches
// http://<name>:<HTTPPort>/.well-known/acme-challenge/..., for TLS-ALPN-01
// it dials <name>:<TLSPort> with ALPN acme-tls/1, for DNS-01 it asks its
// DNS server for the TXT record. It finds <name>'s address through
// Options.DNSServer, or, when that is empty, through a small DNS server
// started here (StartDNS) answering Options.Names with 127.0.0.1.
//
//	p := pebbletest.Start(t, pebbletest.Options{Names: []string{"hs.test"}, HTTPPort: port})
//	client := &acme.Client{DirectoryURL: p.DirectoryURL(), HTTPClient: p.HTTPClient()}
//	...
//	roots := p.Roots(t) // trust what Pebble issues
//
// Pebble's own listener (the ACME directory and its management interface)
// serves a certificate made here (by internal/testca) for 127.0.0.1, ::1, localhost
// and Options.ListenerNames; ListenerCertPEM (its root) and HTTPClient trust it. The
// issuing root is made by Pebble at each start and fetched from its
// management interface (Roots, RootsPEM).
//
// New prepares an instance (ports, certificate, configuration) without
// starting it, so a test can configure an ACME client before the server is
// up; Start and Stop run and end the process, and may be called again (the
// ports stay, the issuing root changes). Pebble's output is kept and shown
// when the test fails.
package pebbletest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/testbin"
	"github.com/hsctl/headscale/internal/testca"
	"github.com/hsctl/headscale/internal/tstest"
)

// Options configures a Pebble instance.
type Options struct {
	// Addr is the ACME listener ("127.0.0.1:port"); empty picks a free
	// port. The directory is https://Addr/dir.
	Addr string
	// HTTPPort is the port Pebble connects to for HTTP-01 (its httpPort);
	// TLSPort the one for TLS-ALPN-01 (its tlsPort). Zero leaves a port
	// where nothing listens, so that challenge fails.
	HTTPPort, TLSPort int
	// DNSServer is the DNS server ("host:port", asked over TCP) Pebble
	// resolves names and DNS-01 TXT records with (its -dnsserver flag).
	// Empty starts a test DNS answering Names with 127.0.0.1.
	DNSServer string
	// Names are the names the test DNS answers (every name when empty).
	// Unused with DNSServer.
	Names []string
	// ListenerNames are extra DNS names on the certificate of Pebble's own
	// listener (beside 127.0.0.1, ::1 and localhost).
	ListenerNames []string
	// Validity is how long the certificates Pebble issues last (its
	// default profile's validityPeriod); zero means 90 days, as Let's
	// Encrypt's. A short one makes ACME clients renew soon.
	Validity time.Duration
	// Env is added to Pebble's environment after this package's defaults
	// (PEBBLE_VA_NOSLEEP=1, PEBBLE_WFE_NONCEREJECT=0, PEBBLE_AUTHZREUSE=0),
	// so an entry here overrides them.
	Env []string
	// Config, when set, may edit Pebble's configuration (the object under
	// "pebble" in its JSON file) before it is written.
	Config func(pebble map[string]any)
}

// Pebble is one Pebble instance.
type Pebble struct {
	tb      testing.TB
	bin     string
	dir     string
	addr    string
	mgmt    string
	dns     *DNS
	dnsAddr string
	env     []string
	certPEM []byte
	pool    *x509.CertPool

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	out  *tstest.Buffer
}

// Start prepares and starts Pebble (New, then Start), failing tb if it
// does not answer.
func Start(tb testing.TB, opts Options) *Pebble {
	tb.Helper()
	p := New(tb, opts)
	p.Start()
	return p
}

// New builds Pebble if needed and prepares an instance without starting
// it: ports, its listener's certificate, its configuration, and the test
// DNS unless opts.DNSServer is set. Everything it makes is removed, and
// the process stopped, when the test ends.
func New(tb testing.TB, opts Options) *Pebble {
	tb.Helper()
	bin, err := Binary(testWriter{tb})
	if err != nil {
		tb.Fatalf("pebble: %v", err)
	}
	p := &Pebble{tb: tb, bin: bin, dir: tb.TempDir(), addr: opts.Addr, out: &tstest.Buffer{}}
	if p.addr == "" {
		p.addr = freeAddr(tb)
	}
	p.mgmt = freeAddr(tb)
	p.dnsAddr = opts.DNSServer
	if p.dnsAddr == "" {
		if p.dns, err = StartDNS(opts.Names...); err != nil {
			tb.Fatalf("pebble: test DNS: %v", err)
		}
		tb.Cleanup(p.dns.Close)
		p.dnsAddr = p.dns.Addr()
	}
	certFile, keyFile := filepath.Join(p.dir, "listener.pem"), filepath.Join(p.dir, "listener.key")
	if p.certPEM, err = writeListenerCert(certFile, keyFile, opts.ListenerNames); err != nil {
		tb.Fatalf("pebble: %v", err)
	}
	p.pool = x509.NewCertPool()
	p.pool.AppendCertsFromPEM(p.certPEM)
	httpPort, tlsPort := opts.HTTPPort, opts.TLSPort
	if httpPort == 0 {
		httpPort = closedPort(tb)
	}
	if tlsPort == 0 {
		tlsPort = closedPort(tb)
	}
	validity := opts.Validity
	if validity == 0 {
		validity = 90 * 24 * time.Hour
	}
	cfg := map[string]any{
		"listenAddress":                  p.addr,
		"managementListenAddress":        p.mgmt,
		"certificate":                    certFile,
		"privateKey":                     keyFile,
		"httpPort":                       httpPort,
		"tlsPort":                        tlsPort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
		"retryAfter":                     map[string]any{"authz": 1, "order": 1},
		"keyAlgorithm":                   "ecdsa",
		"profiles": map[string]any{
			"default": map[string]any{"description": "pebbletest", "validityPeriod": int64(validity / time.Second)},
		},
	}
	if opts.Config != nil {
		opts.Config(cfg)
	}
	b, err := json.MarshalIndent(map[string]any{"pebble": cfg}, "", "  ")
	if err != nil {
		tb.Fatalf("pebble: config: %v", err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, "pebble.json"), b, 0o600); err != nil {
		tb.Fatalf("pebble: %v", err)
	}
	p.env = append([]string{"PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0", "PEBBLE_AUTHZREUSE=0"}, opts.Env...)
	tb.Cleanup(func() {
		p.Stop()
		if tb.Failed() {
			tb.Logf("pebble output:\n%s", p.out.String())
		}
	})
	return p
}

// Start runs Pebble and waits until its directory answers; it fails the
// test if Pebble is already running or does not come up.
func (p *Pebble) Start() {
	p.tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		p.tb.Fatal("pebble: already running")
	}
	cmd := exec.Command(p.bin, "-config", filepath.Join(p.dir, "pebble.json"), "-dnsserver", p.dnsAddr)
	cmd.Dir = p.dir
	// Pebble's environment: the process's, minus any PEBBLE_ setting the
	// test's environment might carry, plus ours.
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PEBBLE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, p.env...)
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		p.tb.Fatalf("pebble: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.cmd, p.done = cmd, done
	client := p.HTTPClient()
	err := tstest.Poll(30*time.Second, func() error {
		select {
		case <-done:
			return tstest.Permanent(fmt.Errorf("pebble exited: %s", p.out.String()))
		default:
		}
		resp, err := client.Get(p.DirectoryURL())
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("directory: %s", resp.Status)
		}
		return nil
	})
	client.CloseIdleConnections()
	if err != nil {
		p.tb.Fatalf("pebble did not come up: %v", err)
	}
}

// Stop ends the Pebble process, if running, and waits for it.
func (p *Pebble) Stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
	p.cmd, p.done = nil, nil
}

// DirectoryURL is the ACME directory, https://Addr/dir.
func (p *Pebble) DirectoryURL() string { return "https://" + p.addr + "/dir" }

// Addr is the ACME listener's "127.0.0.1:port".
func (p *Pebble) Addr() string { return p.addr }

// DNSAddr is the DNS server Pebble asks ("127.0.0.1:port" of the test DNS,
// or Options.DNSServer).
func (p *Pebble) DNSAddr() string { return p.dnsAddr }

// ListenerCertPEM is the root of Pebble's listener certificate, for an
// ACME client to trust (for a process: append it to its
// SSL_CERT_FILE).
func (p *Pebble) ListenerCertPEM() []byte { return bytes.Clone(p.certPEM) }

// HTTPClient is an HTTP client that trusts Pebble's listener only, for
// an ACME client (acme.Client.HTTPClient).
func (p *Pebble) HTTPClient() *http.Client {
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: p.pool},
			ForceAttemptHTTP2: true,
		},
	}
}

// RootsPEM fetches, from the management interface, the root Pebble issues
// certificates under (a new one at each Start).
func (p *Pebble) RootsPEM(tb testing.TB) []byte {
	tb.Helper()
	client := p.HTTPClient()
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + p.mgmt + "/roots/0")
	if err != nil {
		tb.Fatalf("pebble: fetching its root: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		tb.Fatalf("pebble: fetching its root: %s %v", resp.Status, err)
	}
	return b
}

// Roots is RootsPEM as a pool, to verify what Pebble issued.
func (p *Pebble) Roots(tb testing.TB) *x509.CertPool {
	tb.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.RootsPEM(tb)) {
		tb.Fatal("pebble: its root does not parse")
	}
	return pool
}

// Output is what Pebble has printed so far.
func (p *Pebble) Output() string { return p.out.String() }

// Binary returns the path of the pebble binary built from the version in
// go.mod, building it into a cache directory under GOCACHE if needed;
// progress goes to log.
func Binary(log io.Writer) (string, error) {
	root, err := testbin.RepoRoot()
	if err != nil {
		return "", err
	}
	const module = "github.com/letsencrypt/pebble/v2"
	v, err := testbin.Go(root, nil, "list", "-m", "-f", "{{.Version}}", module)
	if err != nil {
		return "", err
	}
	gocache, err := testbin.Go(root, nil, "env", "GOCACHE")
	if err != nil {
		return "", err
	}
	if gocache == "" || gocache == "off" {
		return "", errors.New("GOCACHE is off; need it to cache the pebble build")
	}
	dir := filepath.Join(gocache, "headscale-e2e", "pebble-"+v)
	bin := filepath.Join(dir, "pebble")
	if isExecutable(bin) {
		return bin, nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return "", err
	}
	// Concurrent runs build into private directories; the first rename wins.
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-pebble-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	fmt.Fprintf(log, "building pebble %s into %s (cached for later runs)\n", v, dir)
	if _, err := testbin.Go(root, []string{"CGO_ENABLED=0"}, "build", "-o", tmp,
		"-ldflags", "-X main.version="+v, module+"/cmd/pebble"); err != nil {
		return "", fmt.Errorf("building pebble: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil && !isExecutable(bin) {
		return "", err
	}
	return bin, nil
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// writeListenerCert issues the certificate of Pebble's listener (for
// 127.0.0.1, ::1, localhost and names) from a CA of its own, writes it
// and its key, and returns the CA's root for clients to trust.
func writeListenerCert(certFile, keyFile string, names []string) ([]byte, error) {
	ca, err := testca.New("pebbletest listener CA")
	if err != nil {
		return nil, err
	}
	leaf, err := ca.Issue(24*time.Hour, append([]string{"127.0.0.1", "::1", "localhost"}, names...)...)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(certFile, leaf.CertPEM, 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(keyFile, leaf.KeyPEM, 0o600); err != nil {
		return nil, err
	}
	return ca.RootPEM, nil
}

// freeAddr is a loopback address with a port free right now.
func freeAddr(tb testing.TB) string {
	tb.Helper()
	// Below the kernel's ephemeral range (32768 and up on Linux), so no
	// outgoing connection takes the port while Pebble is stopped and
	// started again on it; random, so parallel test binaries seldom pick
	// the same; below the e2e harness's range (20000 and up).
	for range 200 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(10000+rand.IntN(10000)))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	tb.Fatal("pebble: no free port in 10000-19999")
	return ""
}

// closedPort is a loopback port where nothing listens right now.
func closedPort(tb testing.TB) int {
	_, port, _ := net.SplitHostPort(freeAddr(tb))
	n, _ := strconv.Atoi(port)
	return n
}

type testWriter struct{ tb testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
