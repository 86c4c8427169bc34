package server_test

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine they started is
// still running once they have all finished. With HS_FLOOD_URL set the
// test binary is instead a handshake flooder for
// BenchmarkMapLatencyUnderHandshakeFlood (see floodProcess).
func TestMain(m *testing.M) {
	if os.Getenv(floodURLEnv) != "" {
		os.Exit(runFloodProcess())
	}
	goleak.VerifyTestMain(m)
}
