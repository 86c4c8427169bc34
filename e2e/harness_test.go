//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/testbin"
	"github.com/hsctl/headscale/internal/testca"
)

// envVarState carries the serialized Env from the outer test process into the
// copy of itself that runs inside the private network namespace. Its presence
// is also the marker that we are already inside.
const envVarState = "HEADSCALE_E2E_STATE"

// Env is what TestMain prepares for the tests: the binaries under test and
// facts about where the tests run. Tests obtain it with requireEnv.
type Env struct {
	// Headscale is the path of the freshly built headscale binary; empty
	// when the build failed (see HeadscaleBuildErr).
	Headscale string
	// HeadscaleBuildErr is the build output when ./cmd/headscale did not
	// build. Tests that need a server fail with it.
	HeadscaleBuildErr string
	// Tailscaled and Tailscale are the paths of the official client
	// binaries.
	Tailscaled string
	Tailscale  string
	// TailscaleVersion is the tailscale.com module version without the
	// leading "v", as stamped into the client binaries.
	TailscaleVersion string
	// NetNS reports whether the tests run inside a private network
	// namespace with only a loopback interface. There, a private copy of
	// /etc/hosts (a mount namespace of the run's own) makes testHosts
	// resolve to 127.0.0.1.
	NetNS bool

	// CA is the run's test certificate authority (made inside the
	// namespace); CAFile is the PEM bundle of the roots clients trust:
	// every tailscaled gets it as SSL_CERT_FILE, and HTTPClient trusts it.
	// TrustRoot adds another root (an ACME server's) to it.
	CA     *testca.CA `json:"-"`
	CAFile string     `json:"-"`
	caMu   sync.Mutex // guards writes to CAFile

	skip  string         // non-empty: skip every test with this message
	ports *portAllocator // hands out free loopback ports below 32768
	audit *secretAudit   // the run's logs and secrets, checked after the tests
}

// testHosts are the host names that resolve to 127.0.0.1 inside the run's
// namespace (requireHosts): for servers and proxies serving TLS under a name.
var testHosts = []string{"headscale.e2e.test", "nginx.e2e.test", "haproxy.e2e.test", "caddy.e2e.test",
	"acme.e2e.test", "idp.e2e.test"}

// requireHosts skips the test unless testHosts resolve (inside the run's
// namespace).
func requireHosts(t testing.TB) *Env {
	t.Helper()
	env := requireEnv(t)
	if !env.NetNS {
		t.Skip("e2e: test host names need the run's private namespace (run as root with unshare)")
	}
	return env
}

// TrustRoot adds a root certificate (PEM) to CAFile: clients started after
// it trust certificates it signed.
func (e *Env) TrustRoot(t testing.TB, rootPEM []byte) {
	t.Helper()
	e.caMu.Lock()
	defer e.caMu.Unlock()
	f, err := os.OpenFile(e.CAFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(append(bytes.TrimSpace(rootPEM), '\n')); err != nil {
		t.Fatal(err)
	}
}

// HTTPClient is an HTTP client trusting the roots in CAFile at the time of
// the call, not following redirects.
func (e *Env) HTTPClient() *http.Client {
	e.caMu.Lock()
	pem, _ := os.ReadFile(e.CAFile)
	e.caMu.Unlock()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return &http.Client{
		Timeout:       10 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// testEnv is set once by TestMain before any test runs and only read after.
var testEnv *Env

// pg is the run's private PostgreSQL (internal/pgtest), set once by
// TestMain before any test runs and only read after; it starts when a test
// first asks it for a database (pg.Database) and is stopped after the run.
var pg *pgtest.Cluster

// TestMain builds the binaries, moves the test run into a private network
// namespace when it can, and then runs the tests.
func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		testEnv = &Env{skip: "e2e: skipped in -short mode (these tests build and run headscale and real tailscaled clients)"}
		return m.Run()
	}
	if f := flag.Lookup("test.list"); f != nil && f.Value.String() != "" {
		testEnv = &Env{skip: "e2e: listing only"}
		return m.Run()
	}

	if state := os.Getenv(envVarState); state != "" {
		// We are the re-executed copy inside the namespace.
		env := new(Env)
		if err := json.Unmarshal([]byte(state), env); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: bad %s: %v\n", envVarState, err)
			return 1
		}
		env.ports = newPortAllocator()
		return runAudited(m, env)
	}

	env, cleanup, err := buildBinaries()
	defer cleanup()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}

	if unshare, ip, err := netnsTools(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: no private network namespace (%v); using the host loopback\n", err)
	} else {
		env.NetNS = true
		return reexecInNetNS(env, unshare, ip)
	}
	env.ports = newPortAllocator()
	return runAudited(m, env)
}

// runAudited runs the tests with env and then checks every server log and
// CLI output of the run for every secret the tests created: a leak fails
// the run even when each test passed.
func runAudited(m *testing.M, env *Env) int {
	audit, err := newSecretAudit()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	env.audit = audit
	caDir, err := os.MkdirTemp("", "headscale-e2e-ca-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.RemoveAll(caDir)
	if env.CA, err = testca.New("headscale e2e test CA"); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	env.CAFile = filepath.Join(caDir, "roots.pem")
	if err := os.WriteFile(env.CAFile, env.CA.RootPEM, 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	testEnv = env
	pg = pgtest.New()
	code := m.Run()
	pg.Stop()
	if !audit.finish(os.Stderr) && code == 0 {
		code = 1
	}
	return code
}

// requireEnv returns the environment prepared by TestMain, skipping the
// test in -short mode.
func requireEnv(t testing.TB) *Env {
	t.Helper()
	if testEnv == nil {
		t.Fatal("e2e: TestMain did not prepare the environment")
	}
	if testEnv.skip != "" {
		t.Skip(testEnv.skip)
	}
	return testEnv
}

// buildBinaries builds headscale into a temporary directory and the
// official client into a cache under GOCACHE (reused across runs). The
// returned cleanup removes the temporary directory.
func buildBinaries() (*Env, func(), error) {
	nop := func() {}
	root, err := testbin.RepoRoot()
	if err != nil {
		return nil, nop, err
	}
	tsDir, stamp, err := testbin.Tailscale(root, prefixWriter{"e2e: ", os.Stderr})
	if err != nil {
		return nil, nop, err
	}

	binDir, err := os.MkdirTemp("", "headscale-e2e-bin-")
	if err != nil {
		return nil, nop, err
	}
	cleanup := func() { os.RemoveAll(binDir) }
	env := &Env{
		Tailscaled:       filepath.Join(tsDir, "tailscaled"),
		Tailscale:        filepath.Join(tsDir, "tailscale"),
		TailscaleVersion: stamp,
	}
	start := time.Now()
	hs := filepath.Join(binDir, "headscale")
	if _, err := testbin.Go(root, []string{"CGO_ENABLED=0"}, "build", "-o", hs, "./cmd/headscale"); err != nil {
		env.HeadscaleBuildErr = err.Error()
		fmt.Fprintf(os.Stderr, "e2e: headscale did not build; tests that need a server will fail:\n%v\n", err)
	} else {
		env.Headscale = hs
		fmt.Fprintf(os.Stderr, "e2e: built headscale in %v\n", time.Since(start).Round(time.Millisecond))
	}
	return env, cleanup, nil
}

// netnsTools reports the unshare and ip binaries when a private network
// namespace can be created here, or why not.
func netnsTools() (unshare, ip string, err error) {
	if os.Geteuid() != 0 {
		return "", "", errors.New("not running as root")
	}
	if unshare, err = exec.LookPath("unshare"); err != nil {
		return "", "", err
	}
	if ip, err = exec.LookPath("ip"); err != nil {
		return "", "", err
	}
	// Probe: the namespaces must be creatable, the loopback raisable and
	// /etc/hosts replaceable there.
	probe := exec.Command(unshare, "--net", "--mount", "sh", "-c", `"$1" link set lo up && mount --bind /etc/hosts /etc/hosts`, "sh", ip)
	if out, err := probe.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("unshare --net --mount: %v: %s", err, bytes.TrimSpace(out))
	}
	return unshare, ip, nil
}

// reexecInNetNS runs this test binary again, with the same arguments,
// inside a new network namespace whose loopback is up, and returns its exit
// code. Termination signals are passed on to it.
func reexecInNetNS(env *Env, unshare, ip string) int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	state, err := json.Marshal(env)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	hosts, err := os.CreateTemp("", "headscale-e2e-hosts-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	defer os.Remove(hosts.Name())
	fmt.Fprintf(hosts, "127.0.0.1\tlocalhost %s\n::1\tlocalhost\n", strings.Join(testHosts, " "))
	hosts.Close()
	os.Chmod(hosts.Name(), 0o644) // read by proxies' unprivileged workers too
	// A mount namespace of its own too: /etc/hosts there is the file
	// above, so the test names resolve for every process of the run
	// (tailscaled, proxies, the ACME server) and nowhere else.
	const script = `ip="$1"; hosts="$2"; shift 2; "$ip" link set lo up && mount --bind "$hosts" /etc/hosts && exec "$@"`
	args := append([]string{"--net", "--mount", "sh", "-c", script, "sh", ip, hosts.Name(), exe}, os.Args[1:]...)
	cmd := exec.Command(unshare, args...)
	cmd.Env = append(os.Environ(), envVarState+"="+string(state))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGQUIT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: starting %s: %v\n", unshare, err)
		return 1
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() > 0 {
		return ee.ExitCode()
	}
	fmt.Fprintf(os.Stderr, "e2e: test binary in the network namespace: %v\n", err)
	return 1
}

// portAllocator hands out loopback ports in [20000, 32000), below the
// kernel's ephemeral range, each at most once per test binary, and only
// after checking that TCP and UDP on 127.0.0.1 are both free.
type portAllocator struct {
	mu   sync.Mutex
	next int
}

const (
	portLow  = 20000
	portHigh = 32000
)

func newPortAllocator() *portAllocator {
	// Start at a pid-dependent place so that concurrent runs on the host
	// loopback (no namespace) tend not to probe the same ports.
	return &portAllocator{next: portLow + (os.Getpid()*37)%(portHigh-portLow)}
}

// FreePort returns a loopback port that is free for both TCP and UDP.
func (e *Env) FreePort(t testing.TB) int {
	t.Helper()
	a := e.ports
	a.mu.Lock()
	defer a.mu.Unlock()
	for range portHigh - portLow {
		p := a.next
		a.next++
		if a.next >= portHigh {
			a.next = portLow
		}
		if portFree(p) {
			return p
		}
	}
	t.Fatal("no free loopback port in range")
	return 0
}

func portFree(p int) bool {
	addr := fmt.Sprintf("127.0.0.1:%d", p)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	pc.Close()
	return true
}

// process is a child process (headscale or tailscaled) whose output goes
// to a log file.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // Wait's result, valid after done is closed
}

// startProcess starts bin with args, appending its output to logPath. The
// child gets SIGKILL if the test binary dies.
func startProcess(name, bin string, args, extraEnv []string, logPath string) (*process, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fmt.Fprintf(f, "=== e2e: %s starting at %s: %s %s\n", name, time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited returns a non-nil error describing the exit when the process has
// ended.
func (p *process) exited() error {
	select {
	case <-p.done:
		if p.err == nil {
			return fmt.Errorf("%s exited", p.name)
		}
		return fmt.Errorf("%s exited: %v", p.name, p.err)
	default:
		return nil
	}
}

// stop sends SIGTERM and waits up to grace for the process to exit before
// killing it.
func (p *process) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// kill sends SIGKILL and waits for the process to exit.
func (p *process) kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// tailFile returns the last n lines of the file at path.
func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	const maxBytes = 256 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > maxBytes {
		f.Seek(fi.Size()-maxBytes, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logTailOnFailure registers a cleanup that prints the end of the log at
// path when the test has failed.
func logTailOnFailure(t testing.TB, what, path string, lines int) {
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("---- last %d lines of %s log (%s) ----\n%s\n---- end of %s log ----", lines, what, path, tailFile(path, lines), what)
		}
	})
}

// runCmd runs bin with args under a timeout and returns stdout and stderr
// separately.
func runCmd(timeout time.Duration, bin string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout = &o
	cmd.Stderr = &e
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (timed out after %v)", err, timeout)
	}
	return o.String(), e.String(), err
}

// prefixWriter prefixes every write (one line each) for the test log.
type prefixWriter struct {
	prefix string
	w      io.Writer
}

func (p prefixWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix+string(b)); err != nil {
		return 0, err
	}
	return len(b), nil
}
