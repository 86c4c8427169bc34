package systest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/testbin"
)

// versions are the three builds the test installs and upgrades through.
var versions = []string{"0.1.0", "0.1.1", "0.1.2"}

// TestDebianPackageUnderSystemd installs the package into a booted systemd
// and walks through a person's life with it: install, status, journal, a
// client, backups, a watchdog restart, two upgrades (one into a broken
// config), remove and purge; then, on the machine clean again, the switch
// from Headscale's own package (switchFromHeadscale); then, on a machine
// with Debian's PostgreSQL, the server on it (localPostgreSQL).
func TestDebianPackageUnderSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("system test: boots systemd in a container")
	}
	if os.Geteuid() != 0 || runtime.GOOS != "linux" {
		t.Skip("system test: needs root on Linux (systemd-nspawn, dpkg)")
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("system test: builds the amd64 package")
	}
	ensureTools(t)
	root, err := testbin.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	tsDir, _, err := testbin.Tailscale(root, testLog{t})
	if err != nil {
		t.Fatal(err)
	}
	gocache, err := testbin.Go(root, nil, "env", "GOCACHE")
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := filepath.Join(gocache, "headscale-systest")
	tree := rootTree(t, cacheDir, "")

	dist := t.TempDir()
	for _, v := range versions {
		start := time.Now()
		cmd := exec.Command("make", "-C", root, "deb", "VERSION="+v, "DIST="+filepath.Join(dist, v), "ARCHES=amd64")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make deb VERSION=%s: %v\n%s", v, err, out)
		}
		t.Logf("make deb VERSION=%s: %v", v, time.Since(start).Round(time.Second))
	}
	deb := func(v string) string { return "/mnt/debs/" + v + "/headscale_" + v + "_amd64.deb" }

	start := time.Now()
	c := boot(t, tree, dist+":/mnt/debs", tsDir+":/mnt/ts")
	t.Logf("container booted in %v", time.Since(start).Round(100*time.Millisecond))

	// The admin points server_url at this machine and, for the test, makes
	// the watchdog quick; a drop-in is how a person would override the unit.
	c.must(`mkdir -p /etc/systemd/system/headscale.service.d && cat > /etc/systemd/system/headscale.service.d/systest.conf <<'EOF'
[Service]
Environment=HEADSCALE_SERVER_URL=http://127.0.0.1:8080
WatchdogSec=4s
TimeoutAbortSec=3s
RestartSec=1s
EOF`)

	// Install.
	out := c.must("dpkg -i " + deb("0.1.0") + " 2>&1")
	t.Logf("dpkg -i 0.1.0:\n%s", out)
	c.must("systemctl is-active headscale && systemctl is-enabled headscale")
	c.must("id headscale && test \"$(stat -c '%U %a' /var/lib/headscale)\" = 'headscale 750'")
	c.must("test \"$(stat -c '%U %G %a' /etc/headscale/config.yaml)\" = 'root headscale 640'")
	if got := c.must("systemctl show -p StatusText --value headscale"); !strings.Contains(got, "serving 0 nodes") {
		t.Errorf("status text %q", got)
	}
	journal := c.must("journalctl -u headscale --no-pager -o cat")
	if !strings.Contains(journal, "headscale serving") {
		t.Errorf("journal lacks the start:\n%s", journal)
	}
	if strings.Contains(journal, "time=") || strings.Contains(journal, "<6>") {
		t.Errorf("journal lines carry a second timestamp or a raw priority prefix:\n%s", journal)
	}
	if warn := c.must("journalctl -u headscale -p warning -q --no-pager -o cat"); strings.TrimSpace(warn) != "" {
		t.Errorf("journalctl -p warning shows lines on a healthy start:\n%s", warn)
	}

	// A real client registers.
	c.must("headscale users create alice")
	var k struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal([]byte(c.must("headscale preauthkeys create --user alice --reusable -o json")), &k); err != nil || k.Key == "" {
		t.Fatalf("preauthkeys create: %v %+v", err, k)
	}
	// The container's network is loopback only: tailscaled must not wait
	// for "the network" nor try to upload logs.
	c.must("systemd-run --unit=ts1 -E TS_ASSUME_NETWORK_UP_FOR_TEST=1 -E TS_DISABLE_PORTMAPPER=1 -E TS_DEBUG_USE_DERP_HTTP=1 -E TS_PANIC_IF_HIT_MAIN_CONTROL=1 " +
		"/mnt/ts/tailscaled --tun=userspace-networking --no-logs-no-support --statedir=/var/lib/ts1 --socket=/run/ts1.sock --port=20001")
	c.waitFor("tailscaled socket", 30*time.Second, "test -S /run/ts1.sock")
	if out, err := c.sh("/mnt/ts/tailscale --socket=/run/ts1.sock up --login-server=http://127.0.0.1:8080 --auth-key=" + k.Key + " --hostname=c1 --timeout=60s"); err != nil {
		c.diagnose()
		t.Fatalf("tailscale up: %v\n%s", err, out) // the key stays out of the log
	}
	nodeOnline := `headscale nodes list -o json-line | grep -q '"given_name":"c1","online":true'`
	c.waitFor("c1 online", 30*time.Second, nodeOnline)

	// Backups and health checks from the shipped scripts, as cron runs them.
	c.must("runuser -u headscale -- /usr/libexec/headscale/headscale-backup")
	c.must("ls /var/lib/headscale/backups/headscale-0.1.0-*.sqlite")
	c.must("/usr/libexec/headscale/headscale-healthcheck")
	c.waitFor("backup script in the journal", 10*time.Second, "journalctl -t headscale-backup --no-pager -o cat | grep -q .")

	// Reload: systemctl waits for RELOADING=1 ... READY=1 and the process
	// stays (what a reload re-reads is tested in pkg/server).
	pid := strings.TrimSpace(c.must("systemctl show -p MainPID --value headscale"))
	c.must("systemctl reload headscale && systemctl is-active headscale")
	c.waitFor("reload in the journal", 10*time.Second, "journalctl -u headscale --no-pager -o cat | grep -q 'reloading on SIGHUP'")
	if got := strings.TrimSpace(c.must("systemctl show -p MainPID --value headscale")); got != pid {
		t.Errorf("reload replaced the process (%s -> %s)", pid, got)
	}

	// A stalled process: the watchdog pings stop and systemd restarts it.
	c.must("kill -STOP " + pid)
	c.waitFor("watchdog restart", 60*time.Second,
		`test "$(systemctl show -p NRestarts --value headscale)" -ge 1 && systemctl is-active headscale && test "$(systemctl show -p MainPID --value headscale)" != `+pid)
	if j := c.must("journalctl -u headscale --no-pager -o cat"); !strings.Contains(j, "Watchdog timeout") {
		t.Errorf("journal does not show the watchdog timeout:\n%s", lastLines([]byte(j), 30))
	}
	c.waitFor("c1 back online after the restart", 60*time.Second, nodeOnline)

	// Upgrade: a backup first, then a restart into the new version.
	pid = strings.TrimSpace(c.must("systemctl show -p MainPID --value headscale"))
	out = c.must("dpkg -i " + deb("0.1.1") + " 2>&1")
	t.Logf("dpkg -i 0.1.1:\n%s", out)
	c.must("f=$(ls /var/lib/headscale/backups/headscale-0.1.0-preupgrade-*.sqlite) && test \"$(stat -c '%a' $f)\" = 600")
	c.must("systemctl is-active headscale && systemctl is-enabled headscale")
	c.must(`test "$(systemctl show -p MainPID --value headscale)" != ` + pid)
	if v := strings.TrimSpace(c.must("headscale version | head -n1")); v != "headscale version 0.1.1" {
		t.Errorf("version after upgrade = %q", v)
	}
	c.waitFor("c1 online after the upgrade", 60*time.Second, nodeOnline)

	// Upgrade into a broken config: dpkg reports it, the old process keeps
	// serving, and `dpkg --configure -a` finishes once the config is fixed.
	c.must(`sed -i 's/^listen_addr: .*/listen_addr: not-an-address/' /etc/headscale/config.yaml`)
	pid = strings.TrimSpace(c.must("systemctl show -p MainPID --value headscale"))
	out, err = c.sh("dpkg -i --force-confold " + deb("0.1.2") + " 2>&1")
	if err == nil {
		t.Fatalf("dpkg -i with a broken config succeeded:\n%s", out)
	}
	t.Logf("dpkg -i 0.1.2 with a broken config (expected to fail):\n%s", out)
	if !strings.Contains(out, "listen_addr") {
		t.Errorf("dpkg output does not say what is wrong:\n%s", out)
	}
	c.must("systemctl is-active headscale")
	if got := strings.TrimSpace(c.must("systemctl show -p MainPID --value headscale")); got != pid {
		t.Errorf("the old process was replaced (%s -> %s)", pid, got)
	}
	// Still serving: the CLI refuses the broken file, so ask the old
	// process over its socket with a config that names only the socket.
	c.must("printf 'unix_socket: /run/headscale/headscale.sock\\n' > /root/socket-only.yaml && headscale -c /root/socket-only.yaml nodes list >/dev/null")
	if st := c.must("dpkg-query -W -f='${Status}' headscale"); !strings.Contains(st, "half-configured") {
		t.Errorf("package status %q, want half-configured", st)
	}
	c.must("ls /var/lib/headscale/backups/headscale-0.1.1-preupgrade-*.sqlite")
	c.must(`sed -i 's/^listen_addr: .*/listen_addr: 0.0.0.0:8080/' /etc/headscale/config.yaml`)
	c.must("dpkg --configure -a 2>&1")
	c.must("systemctl is-active headscale && systemctl is-enabled headscale")
	if v := strings.TrimSpace(c.must("headscale version | head -n1")); v != "headscale version 0.1.2" {
		t.Errorf("version after the fixed upgrade = %q", v)
	}
	if st := c.must("dpkg-query -W -f='${Status}' headscale"); st != "install ok installed" {
		t.Errorf("package status %q", st)
	}

	// Ports below 1024 need the shipped low-ports drop-in (the default unit
	// holds no capabilities); with it the server binds :80.
	c.must(`cp /usr/share/doc/headscale/examples/low-ports.conf /etc/systemd/system/headscale.service.d/ &&
printf '[Service]\nEnvironment=HEADSCALE_LISTEN_ADDR=127.0.0.1:80\n' > /etc/systemd/system/headscale.service.d/port80.conf &&
systemctl daemon-reload && systemctl restart headscale && systemctl is-active headscale`)
	c.waitFor("listening on :80", 10*time.Second, "journalctl -u headscale --no-pager -o cat | grep -q 'headscale serving.*listen_addr=127.0.0.1:80'")
	c.must("rm /etc/systemd/system/headscale.service.d/port80.conf /etc/systemd/system/headscale.service.d/low-ports.conf && systemctl daemon-reload && systemctl restart headscale")

	// Remove keeps data and the user; purge removes both and says so.
	c.must("dpkg -r headscale 2>&1")
	if out, err := c.sh("systemctl is-active headscale"); err == nil {
		t.Errorf("service still active after remove: %s", out)
	}
	c.must("test -f /var/lib/headscale/db.sqlite && id headscale")
	out = c.must("dpkg -P headscale 2>&1")
	t.Logf("dpkg -P:\n%s", out)
	if !strings.Contains(out, "/var/lib/headscale") {
		t.Errorf("purge does not say what it removed:\n%s", out)
	}
	c.must("test ! -e /var/lib/headscale && ! id headscale")

	// On the machine that is clean again: Headscale's own package, with a
	// real Headscale deployment, replaced by this one (issue 13).
	t.Run("over Headscale's package", func(t *testing.T) {
		switchFromHeadscale(t, c.with(t), dist, versions[len(versions)-1])
	})

	// Another machine, with Debian's PostgreSQL running: the server set up
	// on it as the runbook says (issue 14).
	c.stop()
	t.Run("on a local PostgreSQL", func(t *testing.T) {
		start := time.Now()
		pc := boot(t, rootTree(t, cacheDir, "postgresql", postgresPackages...), dist+":/mnt/debs", tsDir+":/mnt/ts")
		t.Logf("container with PostgreSQL booted in %v", time.Since(start).Round(100*time.Millisecond))
		localPostgreSQL(t, pc, deb(versions[len(versions)-1]))
	})
}

// testLog sends progress lines to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
