// Package systemdunit_test checks the systemd units and the cron.d file that
// the Debian package installs: systemd-analyze verify prints nothing,
// systemd-analyze security stays at or below 1.0 for headscale.service, the
// directives the server relies on are present, and the cron.d file is one
// cron accepts.
//
// systemd-analyze verify refuses a unit whose ExecStart=/ExecReload= binary
// does not exist and needs the standard targets (sysinit.target, ...) it
// orders against. The tests therefore build a throw-away root tree: stub
// /usr/bin/headscale and /usr/bin/kill, the real backup script, the host's
// *.target units, and the units under test in usr/lib/systemd/system. They
// then run `systemd-analyze verify --root=TREE`. A negative control checks
// that a bad unit in such a tree does produce output. No systemd has to be
// running (PID 1 need not be systemd).
package systemdunit_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

const (
	mainUnit     = "headscale.service"
	backupUnit   = "headscale-backup.service"
	backupTimer  = "headscale-backup.timer"
	lowPortsConf = "low-ports.conf"
	cronFile     = "headscale.cron.d"

	backupScript      = "/usr/libexec/headscale/headscale-backup"
	healthcheckScript = "/usr/libexec/headscale/headscale-healthcheck"
)

// analyze returns the path of systemd-analyze or skips the test.
func analyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd); unit checks skipped")
	}
	return p
}

// run executes systemd-analyze and returns stdout, stderr and the exit code.
func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(analyze(t), args...)
	cmd.Env = append(os.Environ(), "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "LC_ALL=C.UTF-8")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("systemd-analyze %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return stdout.String(), stderr.String(), code
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// unitTree builds a root tree in which systemd-analyze verify can load the
// units under test, with every executable they name present.
func unitTree(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	unitDir := filepath.Join(root, "usr/lib/systemd/system")
	stub := []byte("#!/bin/sh\nexit 0\n")
	writeFile(t, filepath.Join(root, "usr/bin/headscale"), stub, 0o755)
	writeFile(t, filepath.Join(root, "usr/bin/kill"), stub, 0o755)
	writeFile(t, filepath.Join(root, strings.TrimPrefix(backupScript, "/")), readFile(t, "../../scripts/backup/headscale-backup"), 0o755)
	writeFile(t, filepath.Join(root, strings.TrimPrefix(healthcheckScript, "/")), readFile(t, "../../scripts/backup/headscale-healthcheck"), 0o755)
	// The standard targets come from the host's systemd package.
	var targets []string
	for _, dir := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		m, _ := filepath.Glob(filepath.Join(dir, "*.target"))
		if len(m) > 0 {
			targets = m
			break
		}
	}
	if len(targets) == 0 {
		t.Fatal("no *.target units in /usr/lib/systemd/system or /lib/systemd/system; systemd-analyze verify needs them")
	}
	for _, p := range targets {
		// Some targets are symlinks to others (default.target); copying the
		// content is enough for verify.
		writeFile(t, filepath.Join(unitDir, filepath.Base(p)), readFile(t, p), 0o644)
	}
	for _, u := range []string{mainUnit, backupUnit, backupTimer} {
		writeFile(t, filepath.Join(unitDir, u), readFile(t, u), 0o644)
	}
	return root
}

func TestVerifyPrintsNothing(t *testing.T) {
	root := unitTree(t)
	units := []string{mainUnit, backupUnit, backupTimer}
	stdout, stderr, code := run(t, "verify", "--man=no", "--root="+root, mainUnit, backupUnit, backupTimer)
	if code != 0 || stderr != "" || stdout != "" {
		t.Errorf("systemd-analyze verify %v: exit %d\nstdout:\n%s\nstderr:\n%s", units, code, stdout, stderr)
	}

	t.Run("with low-ports drop-in", func(t *testing.T) {
		writeFile(t, filepath.Join(root, "etc/systemd/system/headscale.service.d", lowPortsConf), readFile(t, lowPortsConf), 0o644)
		defer os.RemoveAll(filepath.Join(root, "etc/systemd/system/headscale.service.d"))
		stdout, stderr, code := run(t, "verify", "--man=no", "--root="+root, mainUnit)
		if code != 0 || stderr != "" || stdout != "" {
			t.Errorf("verify with %s: exit %d\nstdout:\n%s\nstderr:\n%s", lowPortsConf, code, stdout, stderr)
		}
	})

	// Negative controls: the same harness must notice a bad setting and a
	// missing executable, or the checks above prove nothing.
	t.Run("control: bad key is reported", func(t *testing.T) {
		bad := strings.Replace(string(readFile(t, mainUnit)), "[Service]\n", "[Service]\nNoSuchSetting=1\n", 1)
		writeFile(t, filepath.Join(root, "usr/lib/systemd/system/control-bad.service"), []byte(bad), 0o644)
		_, stderr, _ := run(t, "verify", "--man=no", "--root="+root, "control-bad.service")
		if !strings.Contains(stderr, "NoSuchSetting") {
			t.Errorf("verify did not report an unknown key; stderr:\n%s", stderr)
		}
	})
	t.Run("control: missing executable is reported", func(t *testing.T) {
		kill := filepath.Join(root, "usr/bin/kill")
		if err := os.Remove(kill); err != nil {
			t.Fatal(err)
		}
		defer writeFile(t, kill, []byte("#!/bin/sh\nexit 0\n"), 0o755)
		_, stderr, _ := run(t, "verify", "--man=no", "--root="+root, mainUnit)
		if !strings.Contains(stderr, "/usr/bin/kill") {
			t.Errorf("verify did not report the missing /usr/bin/kill; stderr:\n%s", stderr)
		}
	})
}

var overallRE = regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)

// security runs systemd-analyze security --offline on a unit in root and
// returns the overall score, the exit code with --threshold=10, and the
// items that cost points.
func security(t *testing.T, root, unit string) (float64, int, []string) {
	t.Helper()
	stdout, stderr, code := run(t, "security", "--offline=true", "--threshold=10", "--no-pager", "--root="+root, unit)
	m := overallRE.FindStringSubmatch(stdout)
	if m == nil {
		t.Fatalf("no overall exposure in systemd-analyze security %s (exit %d)\nstdout:\n%s\nstderr:\n%s", unit, code, stdout, stderr)
	}
	score, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	var exposed []string
	for _, line := range strings.Split(stdout, "\n") {
		if strings.HasPrefix(line, "✗") {
			exposed = append(exposed, strings.Join(strings.Fields(line), " "))
		}
	}
	return score, code, exposed
}

func TestSecurityScore(t *testing.T) {
	root := unitTree(t)
	for _, unit := range []string{mainUnit, backupUnit} {
		score, code, exposed := security(t, root, unit)
		t.Logf("%s: overall exposure %.1f; remaining items:\n  %s", unit, score, strings.Join(exposed, "\n  "))
		if code != 0 || score > 1.0 {
			t.Errorf("%s: exposure %.1f (exit %d with --threshold=10), want <= 1.0", unit, score, code)
		}
	}
	// The drop-in for ports below 1024 gives up PrivateUsers= and adds a
	// capability; the score it costs is logged, not limited.
	writeFile(t, filepath.Join(root, "etc/systemd/system/headscale.service.d", lowPortsConf), readFile(t, lowPortsConf), 0o644)
	score, _, _ := security(t, root, mainUnit)
	t.Logf("%s with %s: overall exposure %.1f", mainUnit, lowPortsConf, score)
	if score > 1.5 {
		t.Errorf("%s with %s: exposure %.1f, want <= 1.5", mainUnit, lowPortsConf, score)
	}
}

// unitFile is a parsed unit: section name to key to values in order.
type unitFile map[string]map[string][]string

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(readFile(t, path)))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
			}
			if strings.HasSuffix(line, `\`) {
				t.Fatalf("%s:%d: continuation lines are not expected", path, n)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// last is the effective value of a single-valued key ("" when unset).
func (u unitFile) last(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

func wantValue(t *testing.T, u unitFile, name, section, key, want string) {
	t.Helper()
	if got := u.last(section, key); got != want {
		t.Errorf("%s: [%s] %s=%q, want %q", name, section, key, got, want)
	}
}

func TestMainUnitDirectives(t *testing.T) {
	u := parseUnit(t, mainUnit)
	for _, kv := range [][3]string{
		{"Service", "Type", "notify"},
		{"Service", "NotifyAccess", "main"},
		{"Service", "WatchdogSec", "30s"},
		{"Service", "Restart", "on-failure"},
		{"Service", "RestartSec", "5s"},
		{"Service", "TimeoutStopSec", "30s"},
		{"Service", "ExecStartPre", "/usr/bin/headscale configtest --config /etc/headscale/config.yaml"},
		{"Service", "ExecStart", "/usr/bin/headscale serve --config /etc/headscale/config.yaml"},
		{"Service", "ExecReload", "/usr/bin/kill -HUP $MAINPID"},
		{"Service", "User", "headscale"},
		{"Service", "Group", "headscale"},
		{"Service", "StateDirectory", "headscale"},
		{"Service", "StateDirectoryMode", "0750"},
		{"Service", "RuntimeDirectory", "headscale"},
		{"Service", "RuntimeDirectoryMode", "0750"},
		{"Service", "ConfigurationDirectory", "headscale"},
		{"Service", "ConfigurationDirectoryMode", "0750"},
		{"Service", "LimitNOFILE", "1048576"},
		{"Service", "UMask", "0077"},
		{"Service", "NoNewPrivileges", "yes"},
		{"Service", "ProtectSystem", "strict"},
		{"Service", "MemoryDenyWriteExecute", "yes"},
		{"Service", "RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"},
		{"Unit", "Wants", "network-online.target"},
		{"Install", "WantedBy", "multi-user.target"},
	} {
		wantValue(t, u, mainUnit, kv[0], kv[1], kv[2])
	}
	// Ordered after the network and after a local PostgreSQL; only the
	// network is also wanted: PostgreSQL is neither started nor required
	// (the server may use one elsewhere, or SQLite).
	var after []string
	for _, v := range u["Unit"]["After"] {
		after = append(after, strings.Fields(v)...)
	}
	if strings.Join(after, " ") != "network-online.target postgresql.service" {
		t.Errorf("%s: After= %q, want network-online.target and postgresql.service", mainUnit, after)
	}
	for _, key := range []string{"Wants", "Requires", "BindsTo", "Requisite", "PartOf", "Upholds"} {
		for _, v := range u["Unit"][key] {
			for _, dep := range strings.Fields(v) {
				if strings.HasPrefix(dep, "postgresql") {
					t.Errorf("%s: %s=%s: the server must not require or start PostgreSQL", mainUnit, key, v)
				}
			}
		}
	}
	if u.last("Service", "TimeoutStartSec") == "" {
		t.Errorf("%s: TimeoutStartSec is not set", mainUnit)
	}
	// bookworm's systemd 252 has no notify-reload; DynamicUser would fight
	// the headscale user the package creates.
	for _, bad := range []string{"DynamicUser"} {
		if len(u["Service"][bad]) > 0 {
			t.Errorf("%s: %s must not be set", mainUnit, bad)
		}
	}
	// Nothing may tie the control server to the tailnet or a resolver in it.
	for _, key := range []string{"After", "Wants", "Requires", "BindsTo", "Requisite"} {
		for _, v := range u["Unit"][key] {
			for _, dep := range strings.Fields(v) {
				if strings.Contains(dep, "tailscale") || dep == "nss-lookup.target" {
					t.Errorf("%s: %s=%s: the control server must not depend on %s", mainUnit, key, v, dep)
				}
			}
		}
	}
	// The sandbox holds no capabilities: PrivateUsers=yes would void them
	// for binding ports in the host network namespace anyway (low-ports.conf
	// trades the two).
	wantValue(t, u, mainUnit, "Service", "PrivateUsers", "yes")
	wantValue(t, u, mainUnit, "Service", "CapabilityBoundingSet", "")
	if v := u.last("Service", "AmbientCapabilities"); v != "" {
		t.Errorf("%s: AmbientCapabilities=%q, want none", mainUnit, v)
	}

	lp := parseUnit(t, lowPortsConf)
	wantValue(t, lp, lowPortsConf, "Service", "PrivateUsers", "no")
	wantValue(t, lp, lowPortsConf, "Service", "CapabilityBoundingSet", "CAP_NET_BIND_SERVICE")
	wantValue(t, lp, lowPortsConf, "Service", "AmbientCapabilities", "CAP_NET_BIND_SERVICE")
}

func TestBackupUnitsDirectives(t *testing.T) {
	s := parseUnit(t, backupUnit)
	for _, kv := range [][3]string{
		{"Service", "Type", "oneshot"},
		{"Service", "User", "headscale"},
		{"Service", "Group", "headscale"},
		{"Service", "ExecStart", backupScript},
		{"Service", "PrivateNetwork", "yes"},
		{"Service", "StateDirectory", "headscale"},
		// Must match headscale.service: systemd applies the mode on each start.
		{"Service", "StateDirectoryMode", parseUnit(t, mainUnit).last("Service", "StateDirectoryMode")},
		{"Service", "UMask", "0077"},
		{"Service", "NoNewPrivileges", "yes"},
		{"Service", "ProtectSystem", "strict"},
	} {
		wantValue(t, s, backupUnit, kv[0], kv[1], kv[2])
	}
	if len(s["Install"]) > 0 {
		t.Errorf("%s has an [Install] section; only the timer should start it", backupUnit)
	}

	tm := parseUnit(t, backupTimer)
	for _, kv := range [][3]string{
		{"Timer", "OnCalendar", "daily"},
		{"Timer", "Persistent", "true"},
		{"Install", "WantedBy", "timers.target"},
	} {
		wantValue(t, tm, backupTimer, kv[0], kv[1], kv[2])
	}
	if tm.last("Timer", "RandomizedDelaySec") == "" {
		t.Errorf("%s: RandomizedDelaySec is not set", backupTimer)
	}
	if u := tm.last("Timer", "Unit"); u != "" && u != backupUnit {
		t.Errorf("%s: Unit=%s, want %s", backupTimer, u, backupUnit)
	}
}

var (
	cronEnvRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*\s*=`)
	cronTimeRE = regexp.MustCompile(`^(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?)*$`)
	// A commented-out entry: "#" directly followed by five time fields.
	cronCommentedRE = regexp.MustCompile(`^#\s*(@\w+|[*0-9])\S*\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+\S`)
)

func TestCronFile(t *testing.T) {
	data := readFile(t, cronFile)
	if len(data) == 0 || data[len(data)-1] != '\n' {
		t.Fatalf("%s must end with a newline (cron ignores an unterminated last line)", cronFile)
	}
	if bytes.Contains(data, []byte("\r")) {
		t.Errorf("%s contains carriage returns", cronFile)
	}
	var entries, commented []string
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
		case cronCommentedRE.MatchString(trimmed):
			commented = append(commented, strings.TrimSpace(strings.TrimPrefix(trimmed, "#")))
		case strings.HasPrefix(trimmed, "#"):
		case cronEnvRE.MatchString(trimmed):
		default:
			entries = append(entries, trimmed)
		}
	}
	for _, e := range append(append([]string{}, entries...), commented...) {
		f := strings.Fields(e)
		if len(f) < 7 {
			t.Errorf("%s: %q has %d fields, want 5 time fields, a user and a command", cronFile, e, len(f))
			continue
		}
		for i, tf := range f[:5] {
			if !cronTimeRE.MatchString(tf) {
				t.Errorf("%s: %q: time field %d %q is not valid", cronFile, e, i+1, tf)
			}
		}
		user := f[5]
		if user != "root" && user != "headscale" {
			t.Errorf("%s: %q: user field %q, want root or headscale", cronFile, e, user)
		}
		cmd := strings.Join(f[6:], " ")
		if strings.Contains(cmd, "%") {
			t.Errorf("%s: %q: an unescaped %% ends the command in cron", cronFile, e)
		}
		switch {
		case strings.Contains(cmd, backupScript):
			if user != "headscale" {
				t.Errorf("%s: the backup runs as %s, want headscale", cronFile, user)
			}
			if !strings.Contains(cmd, "[ -x "+backupScript+" ]") {
				t.Errorf("%s: the backup line must do nothing once the package is removed ([ -x %s ])", cronFile, backupScript)
			}
			if !strings.Contains(cmd, "is-active "+backupTimer) {
				t.Errorf("%s: the backup line must step aside while %s is active", cronFile, backupTimer)
			}
		case strings.Contains(cmd, healthcheckScript):
			if user != "root" {
				t.Errorf("%s: the health check runs as %s, want root (it uses systemctl)", cronFile, user)
			}
			if !strings.Contains(cmd, "[ -x "+healthcheckScript+" ]") {
				t.Errorf("%s: the health check line must do nothing once the package is removed", cronFile)
			}
		default:
			t.Errorf("%s: unexpected entry %q", cronFile, e)
		}
		if !strings.Contains(cmd, "--quiet") {
			t.Errorf("%s: %q: without --quiet cron mails every successful run", cronFile, e)
		}
	}
	var active []string
	for _, e := range entries {
		active = append(active, strings.Fields(e)[5])
	}
	if strings.Join(active, ",") != "headscale,root" {
		t.Errorf("%s: enabled entries run as %v, want a backup as headscale and a health check as root", cronFile, active)
	}
	if len(commented) == 0 {
		t.Errorf("%s: want the commented --restart alternative of the health check", cronFile)
	}
}
