package store

import (
	"os"
	"testing"

	"github.com/hsctl/headscale/internal/pgtest"
)

// pg is the test binary's private PostgreSQL, made by TestMain before any
// test runs and only read after; it starts when a test first needs it.
var pg *pgtest.Cluster

// TestMain runs the tests, stops the PostgreSQL cluster if they started
// one, and then fails the run if any goroutine they started is still
// running.
func TestMain(m *testing.M) {
	pg = pgtest.New()
	os.Exit(pg.Main(m))
}
