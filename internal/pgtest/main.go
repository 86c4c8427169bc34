package pgtest

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Main is the body of TestMain for a test binary whose tests use c: it
// runs the tests, stops c if they started it, and turns a passing run that
// left goroutines running into a failing one. It returns the exit code.
func (c *Cluster) Main(m *testing.M) int {
	code := m.Run()
	c.Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: errors on successful test run: %v\n", err)
			code = 1
		}
	}
	return code
}
