package cli

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/hsctl/headscale/internal/servertest"
)

// startServer runs a server (internal/servertest) in dir with extraYAML
// merged into its config and returns it; ts.ConfigPath is the config the
// CLI is pointed at.
func startServer(t *testing.T, dir, extraYAML string) *servertest.Server {
	t.Helper()
	return servertest.Start(t, servertest.Options{Dir: dir, ExtraYAML: extraYAML})
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestBackupRestoreAndHealth(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, dir, "metrics_listen_addr: "+freePort(t)+"\n")
	cfg := ts.ConfigPath
	if code, _, stderr := run(t, "-c", cfg, "users", "create", "alice"); code != 0 {
		t.Fatal(stderr)
	}
	if code, out, stderr := run(t, "-c", cfg, "health", "--metrics"); code != 0 || !strings.Contains(out, "metrics: true") {
		t.Fatalf("health --metrics: %d %q %q", code, out, stderr)
	}

	// Online backup into the default directory.
	code, out, stderr := run(t, "-c", cfg, "backup")
	m := regexp.MustCompile(`^backup written: (\S+/backups/headscale-test-\d{8}T\d{6}Z\.sqlite) \((\d+) bytes, integrity ok\)\n$`).FindStringSubmatch(out)
	if code != 0 || m == nil {
		t.Fatalf("backup: %d %q %q", code, out, stderr)
	}
	if fi, err := os.Stat(m[1]); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	snap := filepath.Join(dir, "snap.sqlite")
	code, out, stderr = run(t, "-c", cfg, "backup", "--output", snap)
	if code != 0 || !strings.HasPrefix(out, "backup written: "+snap+" (") {
		t.Fatalf("backup --output FILE: %d %q %q", code, out, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "backup", "--output", snap); code != 1 || !strings.Contains(stderr, "already exists") {
		t.Fatalf("backup over an existing file: %d %q", code, stderr)
	}

	// Restore refuses while the server runs.
	if code, _, stderr := run(t, "-c", cfg, "restore", snap); code != 1 || !strings.Contains(stderr, "running") {
		t.Fatalf("restore while running: %d %q", code, stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "users", "create", "bob"); code != 0 {
		t.Fatal(stderr)
	}
	if err := ts.Stop(); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = run(t, "-c", cfg, "restore", snap)
	if code != 0 || !strings.Contains(out, "restored "+snap) || !strings.Contains(out, "previous database is kept at "+filepath.Join(dir, "db.sqlite.pre-restore-")) {
		t.Fatalf("restore: %d %q %q", code, out, stderr)
	}
	startServer(t, dir, "metrics_listen_addr: "+ts.Config.MetricsListenAddr+"\n")
	_, out, _ = run(t, "-c", cfg, "users", "list", "-o", "json")
	if !strings.Contains(out, `"alice"`) || strings.Contains(out, `"bob"`) {
		t.Fatalf("users after restore: %s", out)
	}
	if code, _, stderr := run(t, "-c", cfg, "restore", filepath.Join(dir, "nope.sqlite")); code != 1 || !strings.Contains(stderr, "running") {
		t.Fatalf("restore of a missing file while running: %d %q", code, stderr)
	}
}

func TestHealthMetricsDisabled(t *testing.T) {
	cfg := startServer(t, t.TempDir(), "").ConfigPath
	if code, _, stderr := run(t, "-c", cfg, "health"); code != 0 {
		t.Fatalf("health: %q", stderr)
	}
	if code, _, stderr := run(t, "-c", cfg, "health", "--metrics"); code != 1 || !strings.Contains(stderr, "metrics are disabled") {
		t.Fatalf("health --metrics without metrics: %d %q", code, stderr)
	}
}
