package server_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/servertest"
)

// postgresYAML is the database section that points a test server at db.
func postgresYAML(db pgtest.Database) string {
	return fmt.Sprintf("database:\n  type: postgres\n  postgres:\n    host: %s\n    port: %d\n    name: %s\n    user: %s\n",
		db.Host, db.Port, db.Name, db.User)
}

// TestServeOnPostgres: with database.type postgres the server starts on
// the configured database, registers a node and answers the API from it.
func TestServeOnPostgres(t *testing.T) {
	db := pg.Database(t)
	ts := startServerWith(t, "", postgresYAML(db), nil)
	if got := ts.Store().Engine(); got != "postgres" {
		t.Fatalf("store engine %q, want postgres", got)
	}
	register(t, newClient(t, ts.URL), ts.key(t, true, time.Now().Add(time.Hour)), "one")
	body := string(ts.MustAPI(t, http.MethodGet, "/api/v1/node", ""))
	if !strings.Contains(body, `"one"`) {
		t.Fatalf("the node list lacks the registered node:\n%s", body)
	}
}

// engine returns o for the engine the run asks for (servertest.Engine).
func engine(t testing.TB, o servertest.Options) servertest.Options {
	return servertest.Engine(t, pg, o)
}

// TestSuiteOnPostgres runs this package's tests again with every server
// on PostgreSQL (HEADSCALE_TEST_DB=postgres, a re-run of the test binary):
// what works on SQLite must work on PostgreSQL, proved by the same tests.
// Tests of SQLite's files, or that give their server a database of their
// own, run on SQLite either way.
func TestSuiteOnPostgres(t *testing.T) {
	pg.RerunOnPostgres(t, "TestSuiteOnPostgres")
}
