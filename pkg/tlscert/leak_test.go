package tlscert_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if a goroutine they started (a
// source's Run, a listener, an ACME request) is still running at the end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
