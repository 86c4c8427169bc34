// Package backupscripts_test runs headscale-backup and headscale-healthcheck
// against a real headscale server built from this repository. The server
// listens on loopback only, with its state in a temporary directory.
// logger and systemctl are replaced with recording fakes on PATH, so the
// tests need neither syslog nor systemd.
package backupscripts_test

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/tstest"
)

// headscaleBin is the server binary built by TestMain; buildErr is set
// instead when the build failed.
var headscaleBin, buildErr string

// pg is the test binary's private PostgreSQL, made by TestMain before any
// test runs and only read after; it starts when a test first needs it.
var pg *pgtest.Cluster

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "headscale-scripts-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	pg = pgtest.New()
	defer pg.Stop()
	if err := buildHeadscale(filepath.Join(tmp, "headscale")); err != nil {
		buildErr = err.Error()
	} else {
		headscaleBin = filepath.Join(tmp, "headscale")
	}
	return m.Run()
}

func goCmd() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go" // where .ci/run expects Go
}

// buildHeadscale builds ./cmd/headscale from the module root into out.
func buildHeadscale(out string) error {
	gomod, err := exec.Command(goCmd(), "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	if _, err := os.Stat(filepath.Join(root, "cmd", "headscale")); err != nil {
		return fmt.Errorf("module root %s has no cmd/headscale: %v", root, err)
	}
	cmd := exec.Command(goCmd(), "build", "-o", out, "./cmd/headscale")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/headscale: %v\n%s", err, b)
	}
	return nil
}

func needServer(t *testing.T) {
	t.Helper()
	if headscaleBin == "" {
		t.Fatalf("headscale did not build:\n%s", buildErr)
	}
}

func script(t *testing.T, name string) string {
	t.Helper()
	p, err := filepath.Abs(name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// fakes is a directory of stand-ins for logger and systemctl that record
// their arguments, put first on PATH.
type fakes struct {
	dir       string
	loggerLog string
	sysctlLog string
}

func newFakes(t *testing.T) *fakes {
	t.Helper()
	f := &fakes{dir: t.TempDir()}
	f.loggerLog = filepath.Join(f.dir, "logger.log")
	f.sysctlLog = filepath.Join(f.dir, "systemctl.log")
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(f.dir, name), []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("logger", "#!/bin/sh\nprintf '%s\\n' \"$*\" >> \"$FAKE_LOGGER_LOG\"\n")
	// systemctl: is-active prints $FAKE_ACTIVE (default active) and
	// succeeds only for "active"; is-enabled exits $FAKE_ENABLED_RC;
	// restart exits $FAKE_RESTART_RC.
	write("systemctl", `#!/bin/sh
printf '%s\n' "$*" >> "$FAKE_SYSTEMCTL_LOG"
case "$1" in
is-active)
	state=${FAKE_ACTIVE:-active}
	echo "$state"
	[ "$state" = active ] ;;
is-enabled) exit "${FAKE_ENABLED_RC:-0}" ;;
restart)
	[ "${FAKE_RESTART_RC:-0}" = 0 ] || echo "Job for headscale.service failed." >&2
	exit "${FAKE_RESTART_RC:-0}" ;;
*) exit 1 ;;
esac
`)
	return f
}

func (f *fakes) lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

type result struct {
	stdout, stderr string
	code           int
}

// runScript runs a script with the fakes first on PATH and a clean
// environment for the variables the scripts read.
func runScript(t *testing.T, f *fakes, env []string, path string, args ...string) result {
	t.Helper()
	cmd := exec.Command(path, args...)
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "PATH", "HEADSCALE_CONFIG", "HEADSCALE_BIN", "JOURNAL_STREAM", "TMPDIR":
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"PATH="+f.dir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"FAKE_LOGGER_LOG="+f.loggerLog,
		"FAKE_SYSTEMCTL_LOG="+f.sysctlLog,
		"TMPDIR="+t.TempDir(),
	)
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s %v did not finish within 2 minutes\nstdout:\n%s\nstderr:\n%s", filepath.Base(path), args, stdout.String(), stderr.String())
	}
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		r.code = ee.ExitCode()
	}
	t.Logf("%s %s: exit %d\nstdout: %s\nstderr: %s", filepath.Base(path), strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// server is a headscale server on loopback ports in a temporary directory.
type server struct {
	dir, config, logPath string
	metricsPort          int
	cmd                  *exec.Cmd
	exited               chan struct{}
	waitErr              error
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// configYAML is a loopback-only configuration with its state in dir.
// database is the database section; "" means SQLite in dir.
func configYAML(dir string, port, metricsPort, stunPort int, database string) string {
	p := func(name string) string { return fmt.Sprintf("%q", filepath.Join(dir, name)) }
	var b strings.Builder
	fmt.Fprintf(&b, "server_url: \"http://127.0.0.1:%d\"\n", port)
	fmt.Fprintf(&b, "listen_addr: \"127.0.0.1:%d\"\n", port)
	fmt.Fprintf(&b, "metrics_listen_addr: \"127.0.0.1:%d\"\n", metricsPort)
	fmt.Fprintf(&b, "state_dir: %q\n", dir)
	if database == "" {
		database = fmt.Sprintf("database:\n  type: sqlite\n  sqlite:\n    path: %s\n", p("db.sqlite"))
	}
	b.WriteString(database)
	fmt.Fprintf(&b, "unix_socket: %s\n", p("hs.sock"))
	fmt.Fprintf(&b, "derp:\n  server:\n    enabled: true\n    stun_listen_addr: \"127.0.0.1:%d\"\n", stunPort)
	fmt.Fprintf(&b, "  urls: []\n  paths: []\n  auto_update_enabled: false\n")
	fmt.Fprintf(&b, "dns:\n  magic_dns: true\n  base_domain: tailnet.test\n  nameservers:\n    global: []\n")
	return b.String()
}

// startServer starts `headscale serve` and waits, with a deadline, until
// `headscale health` passes over the unix socket.
func startServer(t *testing.T) *server { return startServerOn(t, "") }

// startServerOn is startServer with database as the config's database
// section ("" for SQLite in its directory).
func startServerOn(t *testing.T, database string) *server {
	t.Helper()
	needServer(t)
	s := &server{dir: t.TempDir(), metricsPort: freeTCPPort(t), exited: make(chan struct{})}
	if len(filepath.Join(s.dir, "hs.sock")) > 100 {
		t.Skipf("temporary directory %s is too long for a unix socket path; set a shorter TMPDIR", s.dir)
	}
	s.config = filepath.Join(s.dir, "config.yaml")
	s.logPath = filepath.Join(s.dir, "server.log")
	if err := os.WriteFile(s.config, []byte(configYAML(s.dir, freeTCPPort(t), s.metricsPort, freeUDPPort(t), database)), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(headscaleBin, "serve", "--config", s.config)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.Env = cleanEnv()
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		logf.Close()
		close(s.exited)
	}()
	t.Cleanup(func() {
		s.stop(t)
		if t.Failed() {
			b, _ := os.ReadFile(s.logPath)
			t.Logf("server log:\n%s", b)
		}
	})
	err = tstest.Poll(30*time.Second, func() error {
		select {
		case <-s.exited:
			return tstest.Permanent(fmt.Errorf("headscale serve exited: %v", s.waitErr))
		default:
		}
		if out, err := exec.Command(headscaleBin, "health", "--config", s.config).CombinedOutput(); err != nil {
			return fmt.Errorf("headscale not healthy: %v: %s", err, out)
		}
		return nil
	})
	if err != nil {
		b, _ := os.ReadFile(s.logPath)
		t.Fatalf("%v\nserver log:\n%s", err, b)
	}
	if _, err := os.Stat(filepath.Join(s.dir, "db.sqlite")); err != nil && database == "" {
		t.Fatalf("server is healthy but has no database: %v", err)
	}
	return s
}

// stop sends SIGTERM and waits (with a deadline) for the server to exit.
func (s *server) stop(t *testing.T) {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
		t.Errorf("headscale did not exit within 15s of SIGTERM")
	}
}

func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "HEADSCALE_") {
			env = append(env, kv)
		}
	}
	return env
}

// helpOptions are the options each script must explain in --help.
var helpOptions = map[string][]string{
	"headscale-backup":      {"--config", "--dir", "--keep", "--max-age", "--bin", "--quiet", "--help"},
	"headscale-healthcheck": {"--config", "--bin", "--unit", "--no-systemd", "--no-metrics", "--if-enabled", "--restart", "--timeout", "--quiet", "--help"},
}

func TestHelp(t *testing.T) {
	f := newFakes(t)
	for name, opts := range helpOptions {
		t.Run(name, func(t *testing.T) {
			path := script(t, name)
			r := runScript(t, f, nil, path, "--help")
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("--help: exit %d, stderr %q", r.code, r.stderr)
			}
			for _, o := range opts {
				if !strings.Contains(r.stdout, o) {
					t.Errorf("--help does not explain %s", o)
				}
			}
			if !strings.Contains(r.stdout, "Exit status") {
				t.Errorf("--help does not list the exit status")
			}
			// Every option the parser knows is in the help text.
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range regexp.MustCompile(`--[a-z][a-z-]+\)|--[a-z][a-z-]+ \|`).FindAllString(string(src), -1) {
				o := strings.TrimRight(m, ") |")
				if !strings.Contains(r.stdout, o) {
					t.Errorf("option %s is parsed but not in --help", o)
				}
			}
			if r := runScript(t, f, nil, path, "-h"); r.code != 0 || r.stdout == "" {
				t.Errorf("-h: exit %d", r.code)
			}
			if r := runScript(t, f, nil, path, "--no-such-option"); r.code != 2 || !strings.Contains(r.stderr, "--no-such-option") {
				t.Errorf("unknown option: exit %d (want 2), stderr %q", r.code, r.stderr)
			}
		})
	}
}

func TestBackupUsageErrors(t *testing.T) {
	f := newFakes(t)
	path := script(t, "headscale-backup")
	for _, args := range [][]string{
		{"--keep", "-1"}, {"--keep", "many"}, {"--max-age", "1.5"}, {"--dir"}, {"--dir", ""},
	} {
		r := runScript(t, f, nil, path, args...)
		if r.code != 2 || len(nonEmptyLines(r.stderr)) != 1 {
			t.Errorf("%v: exit %d (want 2) with one line on stderr, got %q", args, r.code, r.stderr)
		}
	}
	if lines := f.lines(t, f.loggerLog); len(lines) > 0 {
		t.Errorf("usage errors were logged: %q", lines)
	}
}

func nonEmptyLines(s string) []string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	return out
}

// touch creates path with the given modification time, as `touch -d` does.
func touch(t *testing.T, path, when string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("not really a backup\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("touch", "-d", when, path).CombinedOutput(); err != nil {
		t.Fatalf("touch -d %q %s: %v: %s", when, path, err, out)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

var writtenRE = regexp.MustCompile(`(?m)^headscale-backup: backup written: (\S+) \((\d+) bytes, integrity ok\)$`)

// backupOK runs headscale-backup, expects success and returns the base name
// of the new backup after checking it is a private SQLite file.
func backupOK(t *testing.T, f *fakes, s *server, dir string, args ...string) string {
	t.Helper()
	all := append([]string{"--bin", headscaleBin, "--config", s.config, "--dir", dir}, args...)
	r := runScript(t, f, nil, script(t, "headscale-backup"), all...)
	if r.code != 0 {
		t.Fatalf("headscale-backup %v: exit %d\nstdout:\n%s\nstderr:\n%s", args, r.code, r.stdout, r.stderr)
	}
	m := writtenRE.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("no 'backup written:' line in:\n%s", r.stdout)
	}
	if filepath.Dir(m[1]) != filepath.Clean(dir) {
		t.Errorf("backup %s is not in %s", m[1], dir)
	}
	base := filepath.Base(m[1])
	if !regexp.MustCompile(`^headscale-.+-\d{8}T\d{6}Z\.sqlite$`).MatchString(base) {
		t.Errorf("backup name %q does not follow headscale-<version>-<UTC time>.sqlite", base)
	}
	fi, err := os.Stat(m[1])
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("backup mode %v, want 0600", fi.Mode().Perm())
	}
	head := make([]byte, 16)
	fh, err := os.Open(m[1])
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.Read(head); err != nil || string(head) != "SQLite format 3\x00" {
		t.Errorf("backup %s is not an SQLite database (header %q)", m[1], head)
	}
	if !strings.Contains(r.stdout, "headscale-backup: done: ") {
		t.Errorf("no closing 'done:' line in:\n%s", r.stdout)
	}
	return base
}

func TestBackup(t *testing.T) {
	s := startServer(t)
	f := newFakes(t)

	t.Run("creates the directory 0700 and logs each step", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "backups")
		base := backupOK(t, f, s, dir)
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("new backup directory mode %v, want 0700 (umask 077)", fi.Mode().Perm())
		}
		if got := listDir(t, dir); len(got) != 1 || got[0] != base {
			t.Errorf("directory holds %q, want only %s", got, base)
		}
		logged := strings.Join(f.lines(t, f.loggerLog), "\n")
		for _, want := range []string{"-t headscale-backup -p user.info -- starting backup", "-p user.info -- backup written: ", "-p user.info -- done: "} {
			if !strings.Contains(logged, want) {
				t.Errorf("logger was not called with %q; calls:\n%s", want, logged)
			}
		}
	})

	t.Run("--quiet prints nothing but still logs", func(t *testing.T) {
		f := newFakes(t)
		dir := t.TempDir()
		r := runScript(t, f, nil, script(t, "headscale-backup"), "--bin", headscaleBin, "--config", s.config, "--dir", dir, "--quiet")
		if r.code != 0 || r.stdout != "" || r.stderr != "" {
			t.Errorf("exit %d, stdout %q, stderr %q; want 0 and silence", r.code, r.stdout, r.stderr)
		}
		if got := listDir(t, dir); len(got) != 1 {
			t.Errorf("directory holds %q, want one backup", got)
		}
		if logged := strings.Join(f.lines(t, f.loggerLog), "\n"); !strings.Contains(logged, "-p user.info -- backup written: ") {
			t.Errorf("--quiet also silenced syslog; logger calls:\n%s", logged)
		}
	})

	t.Run("prunes by count and age, only headscale-*.sqlite", func(t *testing.T) {
		dir := t.TempDir()
		for i := 1; i <= 5; i++ {
			touch(t, filepath.Join(dir, fmt.Sprintf("headscale-v0.9-2020010%dT000000Z.sqlite", i)), fmt.Sprintf("%d days ago", i))
		}
		touch(t, filepath.Join(dir, "headscale-ancient.sqlite"), "40 days ago")
		// Never touched, whatever their age: other names, a directory and
		// a symlink that match the pattern.
		touch(t, filepath.Join(dir, "notes.txt"), "400 days ago")
		touch(t, filepath.Join(dir, "db.sqlite"), "400 days ago")
		touch(t, filepath.Join(dir, "headscale-x.sqlite.bak"), "400 days ago")
		touch(t, filepath.Join(dir, "myheadscale-old.sqlite"), "400 days ago")
		// The package's pre-upgrade backups stay until deleted by hand.
		touch(t, filepath.Join(dir, "headscale-0.1.0-preupgrade-20200101T000000Z.sqlite"), "400 days ago")
		if err := os.Mkdir(filepath.Join(dir, "headscale-dir.sqlite"), 0o700); err != nil {
			t.Fatal(err)
		}
		exec.Command("touch", "-d", "400 days ago", filepath.Join(dir, "headscale-dir.sqlite")).Run()
		if err := os.Symlink("notes.txt", filepath.Join(dir, "headscale-link.sqlite")); err != nil {
			t.Fatal(err)
		}
		nested := filepath.Join(dir, "headscale-dir.sqlite", "headscale-nested.sqlite")
		touch(t, nested, "400 days ago")

		base := backupOK(t, f, s, dir, "--keep", "3", "--max-age", "30")
		want := []string{
			"db.sqlite", "headscale-0.1.0-preupgrade-20200101T000000Z.sqlite", "headscale-dir.sqlite", "headscale-link.sqlite",
			"headscale-v0.9-20200101T000000Z.sqlite", "headscale-v0.9-20200102T000000Z.sqlite",
			"headscale-x.sqlite.bak", "myheadscale-old.sqlite", "notes.txt", base,
		}
		sort.Strings(want)
		if got := listDir(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("after --keep 3 --max-age 30:\n got %q\nwant %q", got, want)
		}
		if _, err := os.Stat(nested); err != nil {
			t.Errorf("a file in a subdirectory was touched: %v", err)
		}
	})

	t.Run("age limit alone", func(t *testing.T) {
		dir := t.TempDir()
		for _, d := range []int{1, 2, 10, 31, 90} {
			touch(t, filepath.Join(dir, fmt.Sprintf("headscale-old-%02d.sqlite", d)), fmt.Sprintf("%d days ago", d))
		}
		base := backupOK(t, f, s, dir, "--keep", "0", "--max-age", "7")
		want := []string{"headscale-old-01.sqlite", "headscale-old-02.sqlite", base}
		sort.Strings(want)
		if got := listDir(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("after --keep 0 --max-age 7:\n got %q\nwant %q", got, want)
		}
	})

	t.Run("no limits prunes nothing", func(t *testing.T) {
		dir := t.TempDir()
		touch(t, filepath.Join(dir, "headscale-old.sqlite"), "1000 days ago")
		base := backupOK(t, f, s, dir, "--keep", "0", "--max-age", "0")
		if got := listDir(t, dir); len(got) != 2 || got[0] != base && got[1] != base {
			t.Errorf("after --keep 0 --max-age 0: %q", got)
		}
	})

	t.Run("the new backup survives even when others look newer", func(t *testing.T) {
		dir := t.TempDir()
		// Files from a clock that ran ahead sort before the new backup.
		touch(t, filepath.Join(dir, "headscale-future-1.sqlite"), "+1 day")
		touch(t, filepath.Join(dir, "headscale-future-2.sqlite"), "+2 days")
		base := backupOK(t, f, s, dir, "--keep", "1", "--max-age", "1")
		if got := listDir(t, dir); len(got) != 1 || got[0] != base {
			t.Errorf("after --keep 1: %q, want only the new backup %s", got, base)
		}
	})

	t.Run("the default directory and config come from the options' defaults", func(t *testing.T) {
		r := runScript(t, f, nil, script(t, "headscale-backup"), "--help")
		for _, def := range []string{"/var/lib/headscale/backups", "/etc/headscale/config.yaml", "/usr/bin/headscale", "default: 14", "default: 30"} {
			if !strings.Contains(r.stdout, def) {
				t.Errorf("--help does not state the default %s", def)
			}
		}
	})
}

// TestBackupPostgres: the cron script backs up a server running on
// PostgreSQL the same way, into a SQLite file that passes the integrity
// check and holds the server's users.
func TestBackupPostgres(t *testing.T) {
	needServer(t)
	db := pg.Database(t)
	s := startServerOn(t, fmt.Sprintf("database:\n  type: postgres\n  postgres:\n    host: %s\n    port: %d\n    name: %s\n    user: %s\n",
		db.Host, db.Port, db.Name, db.User))
	if out, err := exec.Command(headscaleBin, "users", "create", "alice", "--config", s.config).CombinedOutput(); err != nil {
		t.Fatalf("users create: %v: %s", err, out)
	}
	f := newFakes(t)
	dir := t.TempDir()
	touch(t, filepath.Join(dir, "headscale-old-1.sqlite"), "1 day ago")
	touch(t, filepath.Join(dir, "headscale-old-2.sqlite"), "2 days ago")
	base := backupOK(t, f, s, dir, "--keep", "2")
	want := []string{"headscale-old-1.sqlite", base}
	sort.Strings(want)
	if got := listDir(t, dir); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("after --keep 2: %q, want %q", got, want)
	}
	// The backup is a database of this server holding alice: migrate it
	// into a new file and read it there offline.
	moved := filepath.Join(t.TempDir(), "db.sqlite")
	if out, err := exec.Command(headscaleBin, "db", "migrate", "--from", filepath.Join(dir, base), "--to", moved).CombinedOutput(); err != nil || !strings.Contains(string(out), "migrated 1 rows") {
		t.Fatalf("db migrate from the backup: %v: %s", err, out)
	}
}

// wantFailure checks a failed run: the exit code, a single
// "headscale-backup: failed: <reason>" line on stderr containing reason,
// and the failure logged at user.err.
func wantFailure(t *testing.T, f *fakes, r result, code int, reason string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit %d, want %d", r.code, code)
	}
	lines := nonEmptyLines(r.stderr)
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "headscale-backup: failed: ") || !strings.Contains(lines[0], reason) {
		t.Errorf("stderr %q, want one line 'headscale-backup: failed: ...%s...'", r.stderr, reason)
	}
	logged := f.lines(t, f.loggerLog)
	if len(logged) == 0 || !strings.Contains(logged[len(logged)-1], "-p user.err -- failed: ") {
		t.Errorf("failure not logged at user.err; logger calls: %q", logged)
	}
}

func TestBackupFailures(t *testing.T) {
	s := startServer(t)
	path := script(t, "headscale-backup")

	t.Run("missing program", func(t *testing.T) {
		f := newFakes(t)
		dir := t.TempDir()
		touch(t, filepath.Join(dir, "headscale-old.sqlite"), "400 days ago")
		r := runScript(t, f, nil, path, "--bin", filepath.Join(dir, "no-such-headscale"), "--config", s.config, "--dir", dir, "--keep", "1")
		wantFailure(t, f, r, 1, "no-such-headscale is missing or not executable")
		if got := listDir(t, dir); len(got) != 1 {
			t.Errorf("a failed run pruned: %q", got)
		}
	})

	t.Run("under systemd: priority prefixes, no logger", func(t *testing.T) {
		// systemd sets JOURNAL_STREAM to the device:inode of the stream
		// connected to stdout/stderr; a file stands in for that stream.
		f := newFakes(t)
		errPath := filepath.Join(t.TempDir(), "journal-stream")
		errFile, err := os.Create(errPath)
		if err != nil {
			t.Fatal(err)
		}
		defer errFile.Close()
		var st syscall.Stat_t
		if err := syscall.Fstat(int(errFile.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(path, "--bin", "/nonexistent/headscale", "--dir", t.TempDir())
		cmd.Env = append(cleanEnv(),
			"PATH="+f.dir+string(os.PathListSeparator)+os.Getenv("PATH"),
			"FAKE_LOGGER_LOG="+f.loggerLog,
			fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
		cmd.Stdout, cmd.Stderr = errFile, errFile
		err = cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Errorf("exit: %v, want status 1", err)
		}
		out, _ := os.ReadFile(errPath)
		if !strings.HasPrefix(string(out), "<3>headscale-backup: failed: headscale program /nonexistent/headscale") {
			t.Errorf("journal stream got %q, want a <3> (err) prefixed failure line", out)
		}
		if calls := f.lines(t, f.loggerLog); len(calls) > 0 {
			t.Errorf("logger called although stderr is the journal: %q", calls)
		}
	})

	t.Run("program that is not headscale", func(t *testing.T) {
		f := newFakes(t)
		r := runScript(t, f, nil, path, "--bin", "/bin/false", "--config", s.config, "--dir", t.TempDir())
		wantFailure(t, f, r, 1, "headscale backup: exit status 1")
	})

	t.Run("error from headscale backup", func(t *testing.T) {
		f := newFakes(t)
		missing := filepath.Join(t.TempDir(), "missing.yaml")
		r := runScript(t, f, nil, path, "--bin", headscaleBin, "--config", missing, "--dir", t.TempDir())
		wantFailure(t, f, r, 1, "headscale backup: ")
		if strings.Contains(r.stderr, "Error: ") {
			t.Errorf("the CLI's 'Error: ' prefix was not stripped: %q", r.stderr)
		}
		if !strings.Contains(r.stderr, "missing.yaml") {
			t.Errorf("the CLI's reason was lost: %q", r.stderr)
		}
	})

	t.Run("directory path is a file", func(t *testing.T) {
		f := newFakes(t)
		file := filepath.Join(t.TempDir(), "plain-file")
		touch(t, file, "now")
		r := runScript(t, f, nil, path, "--bin", headscaleBin, "--config", s.config, "--dir", file)
		wantFailure(t, f, r, 1, "is not a directory")
		r = runScript(t, f, nil, path, "--bin", headscaleBin, "--config", s.config, "--dir", filepath.Join(file, "sub"))
		wantFailure(t, f, r, 1, "cannot create backup directory")
	})

	t.Run("unwritable directory", func(t *testing.T) {
		f := newFakes(t)
		// Not t.TempDir: its parent is 0700, and nobody (below) must be able
		// to reach the directory and find it unwritable.
		dir, err := os.MkdirTemp("", "headscale-unwritable-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		touch(t, filepath.Join(dir, "headscale-old.sqlite"), "400 days ago")
		if os.Geteuid() != 0 {
			if err := os.Chmod(dir, 0o500); err != nil {
				t.Fatal(err)
			}
			defer os.Chmod(dir, 0o700)
			r := runScript(t, f, nil, path, "--bin", headscaleBin, "--config", s.config, "--dir", dir, "--keep", "1")
			wantFailure(t, f, r, 1, "is not writable")
			return
		}
		// Root may write anywhere, so run the script as nobody against a
		// root-owned 0755 directory. --bin /bin/true: the directory check
		// comes before headscale runs.
		setpriv, err := exec.LookPath("setpriv")
		if err != nil {
			t.Skip("running as root without setpriv(1): cannot drop to an unprivileged user")
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		r := runScript(t, f, nil, setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--",
			path, "--bin", "/bin/true", "--config", "/dev/null", "--dir", dir, "--keep", "1")
		if r.code == 126 || strings.Contains(r.stderr, "Permission denied") && !strings.Contains(r.stderr, "headscale-backup:") {
			t.Skipf("user nobody cannot run %s (checkout not world-readable?)", path)
		}
		lines := nonEmptyLines(r.stderr)
		if r.code != 1 || len(lines) != 1 || !strings.HasPrefix(lines[0], "headscale-backup: failed: ") || !strings.Contains(lines[0], "is not writable") {
			t.Errorf("exit %d, stderr %q; want 1 and one line 'headscale-backup: failed: ... is not writable ...'", r.code, r.stderr)
		}
		if got := listDir(t, dir); len(got) != 1 {
			t.Errorf("a failed run changed the directory: %q", got)
		}
	})
}

var healthOK = "headscale-healthcheck: ok\n"

// healthFailure checks the single FAILED line for check and a non-zero exit.
func healthFailure(t *testing.T, f *fakes, r result, code int, check, reason string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit %d, want %d", r.code, code)
	}
	first, _, _ := strings.Cut(r.stderr, "\n")
	prefix := "headscale-healthcheck: FAILED: " + check + ": "
	if !strings.HasPrefix(first, prefix) || !strings.Contains(first, reason) {
		t.Errorf("first stderr line %q, want %q...%q", first, prefix, reason)
	}
	if r.stdout != "" {
		t.Errorf("stdout %q on failure, want nothing", r.stdout)
	}
	logged := strings.Join(f.lines(t, f.loggerLog), "\n")
	if !strings.Contains(logged, "-t headscale-healthcheck -p user.err -- FAILED: "+check+": ") {
		t.Errorf("failure not logged at user.err; logger calls:\n%s", logged)
	}
}

func TestHealthcheck(t *testing.T) {
	s := startServer(t)
	path := script(t, "headscale-healthcheck")
	base := []string{"--bin", headscaleBin, "--config", s.config}
	with := func(extra ...string) []string { return append(append([]string{}, base...), extra...) }

	t.Run("healthy without systemd", func(t *testing.T) {
		f := newFakes(t)
		r := runScript(t, f, nil, path, with("--no-systemd")...)
		if r.code != 0 || r.stdout != healthOK || r.stderr != "" {
			t.Errorf("exit %d, stdout %q, stderr %q; want 0 and %q", r.code, r.stdout, r.stderr, healthOK)
		}
		if calls := f.lines(t, f.sysctlLog); len(calls) > 0 {
			t.Errorf("--no-systemd still ran systemctl: %q", calls)
		}
		r = runScript(t, f, nil, path, with("--no-systemd", "--quiet")...)
		if r.code != 0 || r.stdout != "" || r.stderr != "" {
			t.Errorf("--quiet: exit %d, stdout %q, stderr %q; want 0 and silence", r.code, r.stdout, r.stderr)
		}
	})

	t.Run("healthy with an active unit", func(t *testing.T) {
		f := newFakes(t)
		r := runScript(t, f, nil, path, base...)
		if r.code != 0 || r.stdout != healthOK {
			t.Errorf("exit %d, stdout %q", r.code, r.stdout)
		}
		if calls := f.lines(t, f.sysctlLog); len(calls) != 1 || calls[0] != "is-active -- headscale" {
			t.Errorf("systemctl calls %q, want [is-active -- headscale]", calls)
		}
	})

	t.Run("inactive unit", func(t *testing.T) {
		f := newFakes(t)
		r := runScript(t, f, []string{"FAKE_ACTIVE=failed"}, path, base...)
		healthFailure(t, f, r, 1, "service", "headscale is failed")
		for _, c := range f.lines(t, f.sysctlLog) {
			if strings.HasPrefix(c, "restart") {
				t.Errorf("restarted without --restart")
			}
		}
	})

	t.Run("inactive unit with --restart", func(t *testing.T) {
		f := newFakes(t)
		r := runScript(t, f, []string{"FAKE_ACTIVE=inactive"}, path, with("--restart")...)
		healthFailure(t, f, r, 1, "service", "headscale is inactive")
		calls := f.lines(t, f.sysctlLog)
		if len(calls) != 2 || calls[1] != "restart -- headscale" {
			t.Errorf("systemctl calls %q, want is-active then restart", calls)
		}
		logged := strings.Join(f.lines(t, f.loggerLog), "\n")
		if !strings.Contains(logged, "-p user.warning -- restarting headscale") || !strings.Contains(logged, "-p user.warning -- restarted headscale") {
			t.Errorf("restart not logged at user.warning:\n%s", logged)
		}
	})

	t.Run("restart that fails", func(t *testing.T) {
		f := newFakes(t)
		r := runScript(t, f, []string{"FAKE_ACTIVE=failed", "FAKE_RESTART_RC=1"}, path, with("--restart")...)
		healthFailure(t, f, r, 3, "service", "headscale is failed")
		if !strings.Contains(r.stderr, "restart of headscale failed: Job for headscale.service failed.") {
			t.Errorf("restart failure not reported: %q", r.stderr)
		}
	})

	t.Run("--if-enabled skips a disabled unit", func(t *testing.T) {
		f := newFakes(t)
		r := runScript(t, f, []string{"FAKE_ENABLED_RC=1", "FAKE_ACTIVE=inactive"}, path, with("--if-enabled", "--quiet")...)
		if r.code != 0 || r.stdout != "" || r.stderr != "" {
			t.Errorf("exit %d, stdout %q, stderr %q; want 0 and silence", r.code, r.stdout, r.stderr)
		}
		r = runScript(t, f, []string{"FAKE_ENABLED_RC=0", "FAKE_ACTIVE=inactive"}, path, with("--if-enabled")...)
		if r.code != 1 {
			t.Errorf("enabled but inactive with --if-enabled: exit %d, want 1", r.code)
		}
	})

	t.Run("option conflicts", func(t *testing.T) {
		f := newFakes(t)
		for _, args := range [][]string{with("--no-systemd", "--restart"), with("--no-systemd", "--if-enabled"), with("--timeout", "0"), with("--timeout")} {
			if r := runScript(t, f, nil, path, args...); r.code != 2 {
				t.Errorf("%v: exit %d, want 2", args, r.code)
			}
		}
	})

	t.Run("metrics not answering", func(t *testing.T) {
		f := newFakes(t)
		// Same server and socket, but a metrics address nothing listens on.
		cfg := filepath.Join(t.TempDir(), "config.yaml")
		orig, err := os.ReadFile(s.config)
		if err != nil {
			t.Fatal(err)
		}
		bad := strings.Replace(string(orig), fmt.Sprintf("127.0.0.1:%d", s.metricsPort), fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t)), 1)
		if err := os.WriteFile(cfg, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		r := runScript(t, f, nil, path, "--bin", headscaleBin, "--config", cfg, "--no-systemd")
		healthFailure(t, f, r, 1, "metrics", "metrics do not answer")
		r = runScript(t, f, nil, path, "--bin", headscaleBin, "--config", cfg, "--no-systemd", "--no-metrics")
		if r.code != 0 || r.stdout != healthOK {
			t.Errorf("--no-metrics: exit %d, stdout %q", r.code, r.stdout)
		}
	})

	t.Run("stopped server", func(t *testing.T) {
		s.stop(t)
		f := newFakes(t)
		r := runScript(t, f, nil, path, with("--no-systemd")...)
		healthFailure(t, f, r, 1, "health", "")
		if len(nonEmptyLines(r.stderr)) != 1 {
			t.Errorf("stderr has %d lines, want 1: %q", len(nonEmptyLines(r.stderr)), r.stderr)
		}
	})
}

// TestHealthcheckPostgresAway: while the server runs but its PostgreSQL
// does not answer, the health check fails with the reason and --restart
// does not restart the server, which a restart cannot help (it recovers
// by itself); once PostgreSQL is back the check passes again.
func TestHealthcheckPostgresAway(t *testing.T) {
	needServer(t)
	c := pgtest.New() // its own: the test stops its server
	t.Cleanup(c.Stop)
	db := c.Database(t)
	s := startServerOn(t, fmt.Sprintf("database:\n  type: postgres\n  postgres:\n    host: %s\n    port: %d\n    name: %s\n    user: %s\n",
		db.Host, db.Port, db.Name, db.User))
	path := script(t, "headscale-healthcheck")
	args := []string{"--bin", headscaleBin, "--config", s.config, "--restart", "--no-metrics"}
	if err := c.StopServer(); err != nil {
		t.Fatal(err)
	}
	up := false
	t.Cleanup(func() { // before the database is dropped through it
		if !up {
			c.StartServer()
		}
	})
	for _, active := range []string{"active", "activating"} {
		f := newFakes(t)
		var r result
		tstest.WaitFor(t, 30*time.Second, "the health check to see the outage", func() error {
			r = runScript(t, f, []string{"FAKE_ACTIVE=" + active}, path, args...)
			if !strings.Contains(r.stderr, "the database is unavailable") {
				return fmt.Errorf("exit %d, stderr %q", r.code, r.stderr)
			}
			return nil
		})
		if r.code != 1 || !strings.Contains(r.stderr, "FAILED: health: database does not answer: the database is unavailable") {
			t.Errorf("unit %s: exit %d, stderr %q; want 1 and the reason", active, r.code, r.stderr)
		}
		for _, call := range f.lines(t, f.sysctlLog) {
			if strings.HasPrefix(call, "restart") {
				t.Errorf("unit %s: restarted during a PostgreSQL outage (systemctl %s)", active, call)
			}
		}
		if logged := strings.Join(f.lines(t, f.loggerLog), "\n"); !strings.Contains(logged, "-p user.warning -- not restarting headscale: it runs, but its PostgreSQL database does not answer") {
			t.Errorf("unit %s: the skipped restart is not logged:\n%s", active, logged)
		}
	}
	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	up = true
	f := newFakes(t)
	tstest.WaitFor(t, 30*time.Second, "the health check to pass again", func() error {
		if r := runScript(t, f, nil, path, args...); r.code != 0 {
			return fmt.Errorf("exit %d, stderr %q", r.code, r.stderr)
		}
		return nil
	})
}
