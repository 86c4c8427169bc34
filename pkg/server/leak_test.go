package server_test

import (
	"os"
	"testing"

	"github.com/hsctl/headscale/internal/pgtest"
)

// pg is the test binary's private PostgreSQL, made by TestMain before any
// test runs and only read after; it starts when a test first needs it.
var pg *pgtest.Cluster

// TestMain runs the tests, stops the PostgreSQL cluster if they started
// one, and fails the package's tests if any goroutine they started is
// still running once they have all finished. With HS_FLOOD_URL set the
// test binary is instead a handshake flooder for
// BenchmarkMapLatencyUnderHandshakeFlood (see floodProcess).
func TestMain(m *testing.M) {
	if os.Getenv(floodURLEnv) != "" {
		os.Exit(runFloodProcess())
	}
	pg = pgtest.New()
	os.Exit(pg.Main(m))
}
