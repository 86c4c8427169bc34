// Package pgtest runs a private PostgreSQL server for a test binary.
//
// A test package creates one Cluster in its TestMain (New), hands it to its
// tests, and stops it after they ran (Stop). Nothing starts until a test
// first asks for a database: the cluster is then made with initdb in a
// temporary directory and its postgres process started beside it, listening
// only on a unix socket in that directory (listen_addresses is empty, so it
// has no network address at all; a NewTCP cluster also listens on a free
// loopback port). Each test gets a database of its own
// (Cluster.Database: CREATE DATABASE, dropped when the test ends). A test
// of a database that goes away makes a cluster of its own and stops and
// starts its server under the code it tests (StopServer, StartServer).
//
// initdb and postgres refuse to run as root, so when the tests run as root
// (as CI does) the cluster belongs to an unprivileged user: "postgres" where
// Debian's package created it, else "nobody". The binaries are Debian's
// (/usr/lib/postgresql/<version>/bin, the newest there) or the first initdb
// on PATH. Where none is installed, tests that need PostgreSQL skip, saying
// so, unless HEADSCALE_TEST_POSTGRES=require is set (CI sets it after
// installing the package): then they fail. They also skip in -short mode.
//
// The server is tuned for tests (fsync off): it proves behaviour, not
// durability across power loss. Its postgres process is killed with the
// test binary if that dies without calling Stop (a test timeout, kill -9);
// its directory (pgtest-* in the temporary directory) then stays behind.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/hsctl/headscale/internal/tstest"
)

// RequireEnv is the environment variable that turns a missing PostgreSQL
// installation from a skip into a failure when set to "require".
const RequireEnv = "HEADSCALE_TEST_POSTGRES"

// Superuser is the cluster's superuser role; the test process connects as
// it over the unix socket without a password (trust).
const Superuser = "pgtest"

// PasswordUser is a role that must log in with PasswordUserPass
// (scram-sha-256), for tests of password handling.
const (
	PasswordUser     = "pgtest_pw"
	PasswordUserPass = "pgtest-secret-pw-7f3a"
)

// port names the socket file (.s.PGSQL.<port>); with no TCP listener it is
// never a network port.
const port = 5432

// Cluster is a private PostgreSQL server, started on first use. Its methods
// are safe for concurrent use.
type Cluster struct {
	once    sync.Once
	tcp     bool // also listen on a loopback TCP port (NewTCP)
	stopped atomic.Bool
	next    atomic.Int64 // numbers test databases

	// Set by start, read-only after once.
	skip string // non-empty: tests skip with this reason
	err  error  // the cluster could not be started
	dir  string // temporary directory holding data, socket and log
	// createWith ends CREATE DATABASE: copying the template's files is
	// faster than logging them (PostgreSQL 15 and later).
	createWith string
	port       int                 // the TCP port (NewTCP), else port; names the socket
	bin        string              // directory of the binaries
	cred       *syscall.Credential // whom postgres runs as (nil: this user)

	mu   sync.Mutex // guards cmd and wait, replaced by StartServer
	cmd  *exec.Cmd  // nil while the server is stopped
	wait chan error // postgres' exit status, after cmd.Wait

	tmu    sync.Mutex         // guards shared
	shared map[string]*shared // by key (Shared)
}

// shared is a database made once and shared by tests (Shared).
type shared struct {
	once sync.Once
	db   Database
	ok   bool // fill succeeded
}

// New returns a cluster that starts when a test first needs it.
func New() *Cluster { return &Cluster{} }

// NewTCP is New for a cluster that also listens on a free loopback TCP
// port (Database.TCPHost and Port), trusting every connection from
// 127.0.0.1 except PasswordUser's (password) as it trusts the socket's:
// for tests of TCP-only behaviour, such as TLS the server refuses.
func NewTCP() *Cluster { return &Cluster{tcp: true} }

// Database is a fresh database in the cluster, reached over the unix socket.
type Database struct {
	// Host is the directory holding the server's unix socket.
	Host string
	// Port names the socket file (.s.PGSQL.<Port>).
	Port int
	// Name is the database; User is the superuser role, which needs no
	// password on the socket.
	Name, User string
	// TCPHost is "127.0.0.1" when the cluster also listens on TCP (NewTCP),
	// at Port; else "".
	TCPHost string
}

// DSN is the libpq keyword/value connection string of the database.
func (d Database) DSN() string {
	return fmt.Sprintf("host=%s port=%d dbname=%s user=%s sslmode=disable", d.Host, d.Port, d.Name, d.User)
}

// Database creates a new, empty database for tb, dropped when tb ends
// (connections still open then are closed by the server). It starts the
// cluster on first use; without PostgreSQL binaries it skips tb.
func (c *Cluster) Database(tb testing.TB) Database {
	tb.Helper()
	return c.database(tb)
}

// Shared returns the database key, which fill makes the first time a test
// asks for it (with tb as its test; it must close every connection it
// opens) and which every later test of the binary then shares: it is
// dropped with the cluster, not with a test. Tests that can keep out of
// each other's way in one database (each in a schema of its own) save a
// database per test. A fill that fails (tb.Fatal) fails every later test
// asking for the same key.
func (c *Cluster) Shared(tb testing.TB, key string, fill func(tb testing.TB, db Database)) Database {
	tb.Helper()
	c.tmu.Lock()
	if c.shared == nil {
		c.shared = map[string]*shared{}
	}
	sh := c.shared[key]
	if sh == nil {
		sh = &shared{}
		c.shared[key] = sh
	}
	c.tmu.Unlock()
	c.ready(tb) // skips here, not inside once
	sh.once.Do(func() {
		db := c.create(tb, "shared_"+strconv.FormatInt(c.next.Add(1), 10))
		fill(tb, db) // a tb.Fatal here ends this test and leaves sh.db unset
		sh.db, sh.ok = db, true
	})
	if !sh.ok {
		tb.Fatalf("pgtest: the shared database %q could not be made (see the test that made it)", key)
	}
	return sh.db
}

// database makes a database for tb and drops it when tb ends.
func (c *Cluster) database(tb testing.TB) Database {
	tb.Helper()
	name := "test_" + strconv.FormatInt(c.next.Add(1), 10)
	db := c.create(tb, name)
	tb.Cleanup(func() {
		if c.stopped.Load() {
			return
		}
		if err := c.admin(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: %v", err)
		}
	})
	return db
}

// create starts the cluster if needed (skipping tb without PostgreSQL)
// and creates the database name.
func (c *Cluster) create(tb testing.TB, name string) Database {
	tb.Helper()
	c.ready(tb)
	if err := c.admin(context.Background(), "CREATE DATABASE "+name+c.createWith); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	db := Database{Host: c.socketDir(), Port: c.port, Name: name, User: Superuser}
	if c.tcp {
		db.TCPHost = "127.0.0.1"
	}
	return db
}

// ready starts the cluster on first use, and skips or fails tb when it
// cannot be used.
func (c *Cluster) ready(tb testing.TB) {
	tb.Helper()
	if testing.Short() {
		tb.Skip("pgtest: PostgreSQL tests are skipped in -short mode (they start a server and make a database per test)")
	}
	c.once.Do(c.start)
	switch {
	case c.skip != "":
		if os.Getenv(RequireEnv) == "require" {
			tb.Fatalf("%s (%s=require)", c.skip, RequireEnv)
		}
		tb.Skip(c.skip)
	case c.err != nil:
		tb.Fatalf("pgtest: %v", c.err)
	case c.stopped.Load():
		tb.Fatal("pgtest: the cluster was stopped")
	}
}

// Exec runs statements as the superuser in database db ("" is the
// maintenance database), for tests that change server settings.
func (c *Cluster) Exec(ctx context.Context, db, sql string) error {
	if db == "" {
		db = "postgres"
	}
	conn, err := pgx.Connect(ctx, Database{Host: c.socketDir(), Port: c.port, Name: db, User: Superuser}.DSN())
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%s: %w", sql, err)
	}
	return nil
}

// admin runs one statement in the maintenance database.
func (c *Cluster) admin(ctx context.Context, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return c.Exec(ctx, "", sql)
}

// Stop shuts the server down (if it was started) and removes its directory.
// Tests that ask for a database afterwards fail.
func (c *Cluster) Stop() {
	c.once.Do(func() { c.skip = "pgtest: stopped before use" })
	if c.stopped.Swap(true) || c.dir == "" {
		return
	}
	c.mu.Lock()
	c.shutdown()
	c.mu.Unlock()
	os.RemoveAll(c.dir)
}

// shutdown stops the postgres process, if it runs; c.mu is held.
func (c *Cluster) shutdown() {
	if c.cmd == nil {
		return
	}
	// SIGINT is PostgreSQL's fast shutdown: disconnect clients, stop.
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-c.wait:
	case <-time.After(30 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.wait
	}
	c.cmd = nil
}

// StopServer shuts the running server down as an operator's `systemctl
// stop postgresql` would (fast shutdown: clients are disconnected), keeping
// its data; StartServer starts it again on the same socket. They are for
// tests of a database that goes away, which need a cluster of their own
// (New, Database, and Stop when they end), never a package's shared one.
// A stopped server must be started again before Stop's tests end: the
// databases are dropped through it.
func (c *Cluster) StopServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd == nil {
		return errors.New("pgtest: StopServer: the server is not running")
	}
	c.shutdown()
	return nil
}

// StartServer starts a server StopServer stopped and waits until it
// accepts connections.
func (c *Cluster) StartServer() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return errors.New("pgtest: StartServer: the server is running")
	}
	if c.bin == "" || c.stopped.Load() {
		return errors.New("pgtest: StartServer: the cluster was never started, or was removed")
	}
	return c.startPostgres()
}

func (c *Cluster) socketDir() string { return filepath.Join(c.dir, "sock") }

// start makes and starts the cluster, recording why it could not.
func (c *Cluster) start() {
	bin, err := findBinaries()
	if err != nil {
		c.skip = err.Error()
		return
	}
	cred, owner, err := runAs()
	if err != nil {
		c.err = err
		return
	}
	c.dir, err = os.MkdirTemp(tempRoot(cred != nil), "pgtest-")
	if err != nil {
		c.err = err
		return
	}
	if err := c.initAndStart(bin, cred, owner); err != nil {
		if c.cmd != nil {
			_ = c.cmd.Process.Kill()
			<-c.wait
			c.cmd = nil
		}
		os.RemoveAll(c.dir)
		c.err = err
	}
}

func (c *Cluster) initAndStart(bin string, cred *syscall.Credential, owner string) error {
	c.bin, c.cred = bin, cred
	data, sock := filepath.Join(c.dir, "data"), c.socketDir()
	if err := os.Mkdir(sock, 0o700); err != nil {
		return err
	}
	if cred != nil {
		for _, p := range []string{c.dir, sock} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return fmt.Errorf("giving %s to %s: %w", p, owner, err)
			}
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", Superuser, "-A", "trust",
		"-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Pdeathsig: syscall.SIGKILL}
	initdb.Dir = c.dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb (%s, as %s): %v\n%s", bin, owner, err, out)
	}
	// Only the socket, password-checked for PasswordUser, trusted for the
	// rest: nobody else can reach the socket directory.
	hba := "local all " + PasswordUser + " scram-sha-256\nlocal all all trust\n"
	c.port = port
	if c.tcp {
		hba += "host all " + PasswordUser + " 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n"
		var err error
		if c.port, err = freePort(); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hba), 0o600); err != nil {
		return err
	}
	c.mu.Lock()
	err := c.startPostgres()
	c.mu.Unlock()
	if err != nil {
		return err
	}
	if err := c.Exec(context.Background(), "", "CREATE ROLE "+PasswordUser+" LOGIN SUPERUSER PASSWORD '"+PasswordUserPass+"'"); err != nil {
		return err
	}
	if version, err := os.ReadFile(filepath.Join(data, "PG_VERSION")); err == nil {
		if v, _ := strconv.Atoi(strings.TrimSpace(string(version))); v >= 15 {
			c.createWith = " STRATEGY FILE_COPY"
		}
	}
	return nil
}

// startPostgres starts the postgres process on the cluster's data and
// waits until it accepts connections; c.mu is held. When it does not come
// up, the process is killed and c.cmd left nil.
func (c *Cluster) startPostgres() error {
	data, sock, logPath := filepath.Join(c.dir, "data"), c.socketDir(), filepath.Join(c.dir, "postgres.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	listen := ""
	if c.tcp {
		listen = "127.0.0.1"
	}
	c.cmd = exec.Command(filepath.Join(c.bin, "postgres"), "-D", data, "-k", sock, "-p", strconv.Itoa(c.port),
		"-c", "listen_addresses="+listen, "-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=32MB", "-c", "log_min_messages=warning")
	c.cmd.Dir = c.dir
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	// SIGQUIT is an immediate shutdown; it reaches postgres if the test
	// binary dies without Stop.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Pdeathsig: syscall.SIGQUIT, Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		c.cmd = nil
		return fmt.Errorf("starting postgres: %w", err)
	}
	wait := make(chan error, 1)
	c.wait = wait
	cmd := c.cmd
	go func() { wait <- cmd.Wait() }()

	ready := func() error {
		select {
		case err := <-c.wait:
			c.wait <- err
			return tstest.Permanent(fmt.Errorf("postgres exited: %v", err))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return c.Exec(ctx, "", "SELECT 1")
	}
	if err := tstest.Poll(60*time.Second, ready); err != nil {
		log, _ := os.ReadFile(logPath)
		_ = c.cmd.Process.Kill()
		<-c.wait
		c.cmd = nil
		return fmt.Errorf("postgres did not come up: %w\n%s", err, log)
	}
	return nil
}

// freePort is a loopback TCP port nothing listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// tempRoot is where the cluster's directory goes: the usual temporary
// directory, unless the cluster runs as another user and cannot reach it
// (a TMPDIR under /root), then /tmp. It stays short: a unix socket's path
// is limited to about 100 bytes.
func tempRoot(otherUser bool) string {
	dir := os.TempDir()
	if !otherUser {
		return dir
	}
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == filepath.Dir(d) {
			return dir
		}
	}
}

// findBinaries returns the directory holding initdb and postgres.
func findBinaries() (string, error) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	versions, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(versions, func(a, b string) int { return versionOf(b) - versionOf(a) })
	dirs = append(dirs, versions...)
	for _, d := range dirs {
		if isExec(filepath.Join(d, "initdb")) && isExec(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", errors.New("pgtest: PostgreSQL is not installed (no initdb and postgres on PATH or in /usr/lib/postgresql/*/bin); install Debian's postgresql package to run the PostgreSQL tests")
}

func versionOf(binDir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return v
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// runAs returns the credentials to run PostgreSQL with: nil when the tests
// do not run as root, else an unprivileged user's.
func runAs() (*syscall.Credential, string, error) {
	if os.Geteuid() != 0 {
		return nil, strconv.Itoa(os.Geteuid()), nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, name, nil
	}
	return nil, "", errors.New("tests run as root and there is no unprivileged user (postgres or nobody) to run PostgreSQL as: initdb refuses root")
}

// String describes the cluster for test logs.
func (c *Cluster) String() string {
	if c.dir == "" {
		return "pgtest cluster (not started)"
	}
	return "pgtest cluster at " + strings.TrimSuffix(c.socketDir(), "/")
}
