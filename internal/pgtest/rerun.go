package pgtest

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"
)

// EngineEnv names the environment variable that, set to "postgres", asks
// a test binary whose tests can run on either engine to run them on
// PostgreSQL (Requested); RerunOnPostgres sets it.
const EngineEnv = "HEADSCALE_TEST_DB"

// Requested reports whether EngineEnv asks for PostgreSQL.
func Requested() bool { return os.Getenv(EngineEnv) == "postgres" }

// RerunOnPostgres runs the test binary again with EngineEnv=postgres, every
// test but those matching skip (a -test.skip pattern, which must match the
// calling test), and fails tb with the end of its output if any test
// failed. The package's tests open their databases through a helper that
// picks a PostgreSQL database when Requested. It skips tb where c cannot
// give a database (no PostgreSQL, or -short).
func (c *Cluster) RerunOnPostgres(tb testing.TB, skip string) {
	tb.Helper()
	if Requested() {
		tb.Skip("this is the run on PostgreSQL")
	}
	c.Database(tb) // skips where PostgreSQL is missing, and in -short mode
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.count=1", "-test.timeout=15m", "-test.skip", skip)
	cmd.Env = append(os.Environ(), EngineEnv+"=postgres")
	out, err := cmd.CombinedOutput()
	if err != nil {
		const tail = 8000
		if len(out) > tail {
			out = out[len(out)-tail:]
		}
		tb.Fatalf("the tests on PostgreSQL failed (%v):\n%s", err, out)
	}
	tb.Logf("every test passed again on PostgreSQL")
}
