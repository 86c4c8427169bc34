package server_test

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestDatabasePasswordNotExposed: a PostgreSQL password in the
// configuration (here beside a SQLite database, so nothing connects to
// it) appears in no metric, no API answer and no log line (the harness
// checks the logs of the whole run for a noted secret).
func TestDatabasePasswordNotExposed(t *testing.T) {
	const secret = "pgpassw0rd5e81c0d7"
	ts := startServerWith(t, "", "database:\n  postgres:\n    host: db.example.com\n    name: hs\n    user: headscale\n    pass: "+secret+"\n", nil)
	ts.NoteSecret(secret)
	if ts.Config.Database.Postgres.Pass != secret {
		t.Fatalf("the password did not reach the configuration: %q", ts.Config.Database.Postgres.Pass)
	}
	register(t, newClient(t, ts.URL), ts.key(t, true, time.Now().Add(time.Hour)), "one")
	bodies := map[string]string{"/metrics": doAPI(t, ts.Metrics().Handler(), "GET", "/metrics", "")}
	for _, path := range []string{"/health", "/api/v1/node", "/api/v1/user"} {
		bodies[path] = string(ts.MustAPI(t, http.MethodGet, path, ""))
	}
	for path, body := range bodies {
		if body == "" {
			t.Errorf("%s answered nothing", path)
		}
		if strings.Contains(body, secret) {
			t.Errorf("%s carries the database password:\n%s", path, body)
		}
	}
}
