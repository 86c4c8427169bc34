package crashtest

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/testbin"
)

// buildHeadscale builds this repository's server binary into a test
// directory.
func buildHeadscale(t *testing.T) string {
	t.Helper()
	root, err := testbin.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "headscale")
	if _, err := testbin.Go(root, []string{"CGO_ENABLED=0"}, "build", "-o", bin, "./cmd/headscale"); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestCrashLoop kills the real server five times under registrations and
// admin writes; nothing acknowledged may be missing, the database must
// pass integrity_check after every kill and every node must reconverge.
func TestCrashLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("kills and restarts a server binary five times")
	}
	cfg := DefaultConfig()
	cfg.Headscale = buildHeadscale(t)
	cfg.Dir = t.TempDir()
	cfg.Iterations = 5
	cfg.Nodes = 30
	cfg.KillMin, cfg.KillMax = 200*time.Millisecond, time.Second
	cfg.Timeout = 5 * time.Minute
	cfg.Logf = t.Logf
	sum, err := Run(context.Background(), cfg)
	if sum != nil {
		var b bytes.Buffer
		sum.WriteText(&b)
		t.Logf("\n%s", b.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	if sum.Iterations != 5 || sum.Missing != 0 || sum.IntegrityFailures != 0 || sum.ConvergeFailures != 0 || !sum.OK {
		t.Errorf("iterations %d, missing %d, integrity failures %d, converge failures %d, ok %v: %q",
			sum.Iterations, sum.Missing, sum.IntegrityFailures, sum.ConvergeFailures, sum.OK, sum.Problems)
	}
	// The run must have exercised something: registrations and admin
	// writes acknowledged, and checked after restarts.
	if sum.RegAcked <= cfg.Nodes || sum.WritesAcked == 0 || sum.Checks < sum.RegAcked {
		t.Errorf("too little load: %d registrations, %d admin writes acked, %d checks", sum.RegAcked, sum.WritesAcked, sum.Checks)
	}
}
