package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/cli"
	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/server"
	"tailscale.com/control/tsp"
	"tailscale.com/tailcfg"
)

// skipRerun skips a test that runs on PostgreSQL anyway in the re-run of
// the suite on PostgreSQL (TestSuiteOnPostgres): it ran in the first run.
func skipRerun(t *testing.T) {
	t.Helper()
	if pgtest.Requested() {
		t.Skip("runs on PostgreSQL in the first run already")
	}
}

// ownDatabase is a database in a PostgreSQL cluster of the test's own,
// whose server the test may stop and start (the package's shared one must
// stay up). A server the test left stopped is started again at the end,
// for the database to be dropped.
func ownDatabase(t *testing.T) (*pgtest.Cluster, pgtest.Database) {
	t.Helper()
	c := pgtest.New()
	t.Cleanup(c.Stop)
	db := c.Database(t)
	t.Cleanup(func() { _ = c.StartServer() })
	return c, db
}

// starting is a server.New running in the background, as `headscale
// serve` runs it, against a database that may not be there yet.
type starting struct {
	cfgPath string
	cfg     *config.Config
	logs    *tstest.Buffer
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan *server.Server
	err     error // New's error, once done is closed
}

func startNew(t *testing.T, extraYAML string) *starting {
	t.Helper()
	opts := servertest.Options{ExtraYAML: extraYAML}
	p := &starting{cfgPath: servertest.WriteConfig(t, &opts), logs: &tstest.Buffer{}, done: make(chan *server.Server, 1)}
	cfg, _, err := config.Load(config.LoadOptions{Path: p.cfgPath})
	if err != nil {
		t.Fatal(err)
	}
	p.cfg = cfg
	p.ctx, p.cancel = context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(p.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	go func() {
		s, err := server.New(p.ctx, cfg, log, "test")
		p.err = err
		p.done <- s
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cancel()
		if s := <-p.done; s != nil {
			s.Close()
		}
	})
	return p
}

// health runs `headscale health` against the configuration and returns
// its error text ("" when it passed) and what it printed.
func health(t *testing.T, cfgPath string) (string, string) {
	t.Helper()
	var out bytes.Buffer
	root := cli.NewRoot(cli.Env{Version: "test", Stdout: &out, Stderr: &out})
	root.SetArgs([]string{"-c", cfgPath, "health"})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := root.ExecuteContext(ctx); err != nil {
		return err.Error(), out.String()
	}
	return "", out.String()
}

// TestWaitForPostgresAtStart: a server started while PostgreSQL is down
// waits for it, tells systemd what it waits for (STATUS=, with its start
// timeout extended) without READY=1, answers `headscale health` with the
// reason, and once PostgreSQL is up becomes READY and serves.
func TestWaitForPostgresAtStart(t *testing.T) {
	skipRerun(t)
	c, db := ownDatabase(t)
	if err := c.StopServer(); err != nil {
		t.Fatal(err)
	}
	ns := listenNotify(t, 2*time.Second)
	p := startNew(t, postgresYAML(db))

	deadline := time.After(20 * time.Second)
	var status string
	for status == "" {
		select {
		case m := <-ns.msgs:
			if strings.Contains(m, "READY=1") {
				t.Fatalf("READY=1 while PostgreSQL is down: %q", m)
			}
			if strings.HasPrefix(m, "STATUS=waiting for PostgreSQL") {
				status = m
			}
		case <-deadline:
			t.Fatal("no STATUS=waiting for PostgreSQL within 20s")
		}
	}
	for _, want := range []string{db.Name, db.Host, "5432", db.User, "is PostgreSQL running", "\nEXTEND_TIMEOUT_USEC="} {
		if !strings.Contains(status, want) {
			t.Errorf("waiting status lacks %q: %q", want, status)
		}
	}
	if usec := regexp.MustCompile(`EXTEND_TIMEOUT_USEC=(\d+)`).FindStringSubmatch(status); usec == nil || len(usec[1]) < 8 {
		t.Errorf("start timeout extended by less than 10 s: %q", status)
	}
	errText, _ := health(t, p.cfgPath)
	if !strings.Contains(errText, "headscale is starting: waiting for PostgreSQL") || !strings.Contains(errText, db.Name) {
		t.Errorf("headscale health while waiting: %q", errText)
	}
	select {
	case <-p.done:
		t.Fatalf("New returned while PostgreSQL is down: %v", p.err)
	default:
	}

	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	var s *server.Server
	select {
	case s = <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatal("New did not return within 60 s of PostgreSQL starting")
	}
	if p.err != nil {
		t.Fatalf("New after PostgreSQL started: %v", p.err)
	}
	if err := s.Listen(p.ctx); err != nil {
		t.Fatal(err)
	}
	run := make(chan error, 1)
	go func() { run <- s.Run(p.ctx) }()
	ns.waitFor("READY=1", 10*time.Second)
	if errText, out := health(t, p.cfgPath); errText != "" || !strings.Contains(out, "status: pass") {
		t.Errorf("headscale health once connected: %q %q", errText, out)
	}
	resp, err := http.Get("http://" + s.Addr().String() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/health once connected: %s", resp.Status)
	}
	if !strings.Contains(p.logs.String(), "connected to PostgreSQL; starting") {
		t.Error("no log line saying the wait ended")
	}
	p.cancel()
	if err := <-run; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestPostgresRefusalsReportedOnce: a wrong password, an unknown database,
// an unknown role and TLS the server refuses each make the server wait, with one error line
// naming host, port, database and user (never the password) however
// often it tries again, and `headscale health` says the same.
func TestPostgresRefusalsReportedOnce(t *testing.T) {
	skipRerun(t)
	// Over TCP, where TLS applies (PostgreSQL's own TLS is off).
	tcp := pgtest.NewTCP()
	t.Cleanup(tcp.Stop)
	db := tcp.Database(t)
	const wrongPass = "wrong-pass-c0ffee"
	cases := []struct {
		name, user, dbname, pass, ssl, want string
	}{
		{"wrong password", pgtest.PasswordUser, db.Name, wrongPass, "disable", "password authentication failed"},
		{"unknown database", db.User, "no_such_database", "", "disable", "the database does not exist"},
		{"unknown role", "no_such_role", db.Name, "", "disable", "the role does not exist"},
		{"TLS refused", db.User, db.Name, "", "require", "the server does not accept TLS but database.postgres.ssl requires it"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			yaml := fmt.Sprintf("database:\n  type: postgres\n  postgres:\n    host: %s\n    port: %d\n    name: %s\n    user: %s\n    pass: %q\n    ssl: %s\n",
				db.TCPHost, db.Port, tc.dbname, tc.user, tc.pass, tc.ssl)
			p := startNew(t, yaml)
			// A second attempt was made: the first line is not repeated.
			tstest.WaitFor(t, 30*time.Second, "a second connection attempt", func() error {
				if !strings.Contains(p.logs.String(), "still waiting for PostgreSQL") {
					return fmt.Errorf("logs so far:\n%s", p.logs.String())
				}
				return nil
			})
			errText, _ := health(t, p.cfgPath)
			p.cancel()
			<-p.done
			if p.err == nil {
				t.Fatal("New succeeded")
			}
			logs := p.logs.String()
			var lines []string
			for _, l := range strings.Split(logs, "\n") {
				if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") {
					lines = append(lines, l)
				}
			}
			if len(lines) != 1 {
				t.Fatalf("%d warning or error lines, want 1:\n%s", len(lines), strings.Join(lines, "\n"))
			}
			line := lines[0]
			for _, want := range []string{"level=ERROR", `msg="waiting for PostgreSQL database`, "on " + db.TCPHost, fmt.Sprintf("port %d", db.Port), tc.dbname, tc.user, tc.want} {
				if !strings.Contains(line, want) {
					t.Errorf("the line lacks %q: %s", want, line)
				}
			}
			if !strings.Contains(errText, tc.want) || !strings.Contains(errText, tc.dbname) || !strings.Contains(errText, tc.user) {
				t.Errorf("headscale health says %q, want the reason %q naming database and user", errText, tc.want)
			}
			for what, text := range map[string]string{"logs": logs, "health": errText, "New's error": p.err.Error()} {
				if strings.Contains(text, wrongPass) {
					t.Errorf("the password appears in %s", what)
				}
			}
		})
	}
}

// TestPostgresOutage: PostgreSQL stops under a running server with
// connected clients. The server keeps running and its watchdog pinged;
// map sessions stay and still carry changes between the peers; /health,
// `headscale health`, an API write and a new registration fail with 503
// and the reason; the changes clients make meanwhile are kept. Once
// PostgreSQL is back everything works again by itself and those changes
// reach the database.
func TestPostgresOutage(t *testing.T) {
	skipRerun(t)
	c, db := ownDatabase(t)
	ns := listenNotify(t, 2*time.Second)
	ts := startServerWith(t, "", postgresYAML(db), func(s *server.Server) { s.WatchdogInterval = 100 * time.Millisecond })
	ns.waitFor("READY=1", 10*time.Second)
	k := ts.key(t, true, time.Now().Add(time.Hour))
	ca, cb := newClient(t, ts.URL), newClient(t, ts.URL)
	nka, _ := register(t, ca, k, "alpha")
	nkb, _ := register(t, cb, k, "bravo")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	sessA, fullA := openMap(t, ctx, ca, nka, "alpha")
	if len(fullA.Peers) != 1 {
		t.Fatalf("alpha sees %d peers, want 1", len(fullA.Peers))
	}
	bravo := fullA.Peers[0].ID
	sessB, _ := openMap(t, ctx, cb, nkb, "bravo")
	// nextFor reads alpha's session until ok holds for a message.
	nextFor := func(what string, ok func(*tailcfg.MapResponse) bool) {
		t.Helper()
		for {
			r, err := sessA.Next()
			if err != nil {
				t.Fatalf("alpha's map session, waiting for %s: %v", what, err)
			}
			if ok(r) {
				return
			}
		}
	}
	get := func(path string) (int, string) {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	if err := c.StopServer(); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 20*time.Second, "/health to fail with the reason", func() error {
		code, body := get("/health")
		var h struct{ Status, Reason string }
		json.Unmarshal([]byte(body), &h)
		if code != http.StatusServiceUnavailable || h.Status != "fail" || !strings.Contains(h.Reason, "the database is unavailable") {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if errText, _ := health(t, ts.ConfigPath); !strings.Contains(errText, "database does not answer: the database is unavailable") {
		t.Errorf("headscale health during the outage: %q", errText)
	}
	start := time.Now()
	resp, body, err := ts.API(http.MethodPost, "/api/v1/user", []byte(`{"name":"carol"}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "the database is unavailable") {
		t.Errorf("creating a user during the outage: %s %s", resp.Status, body)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the refused write took %v", d)
	}
	_, regErr := register(t, newClient(t, ts.URL), k, "charlie")
	if !strings.Contains(regErr, "503") || !strings.Contains(regErr, "the database is unavailable") {
		t.Errorf("registering during the outage: %q", regErr)
	}

	// Clients still reach each other through the server: bravo's new host
	// info reaches alpha, and so does bravo going offline.
	if err := cb.SendMapUpdate(ctx, tsp.SendMapUpdateOpts{NodeKey: nkb, Hostinfo: &tailcfg.Hostinfo{Hostname: "bravo", OSVersion: "outage-1"}}); err != nil {
		t.Fatalf("bravo's map update during the outage: %v", err)
	}
	nextFor("bravo's new host info", func(r *tailcfg.MapResponse) bool {
		for _, p := range append(r.Peers, r.PeersChanged...) {
			if p.ID == bravo && p.Hostinfo.Valid() && p.Hostinfo.OSVersion() == "outage-1" {
				return true
			}
		}
		return false
	})
	wentOffline := time.Now()
	sessB.Close()
	nextFor("bravo going offline", func(r *tailcfg.MapResponse) bool {
		for _, p := range r.PeersChangedPatch {
			if p.NodeID == bravo && p.Online != nil && !*p.Online {
				return true
			}
		}
		for _, p := range append(r.Peers, r.PeersChanged...) {
			if p.ID == bravo && p.Online != nil && !*p.Online {
				return true
			}
		}
		return false
	})
	// The flush of those changes fails and is retried; the watchdog still
	// pings.
	tstest.WaitFor(t, 30*time.Second, "a failed flush and the outage logged", func() error {
		logs := ts.Logs()
		for _, want := range []string{"flushing node state failed", "lost the connection to the database"} {
			if !strings.Contains(logs, want) {
				return fmt.Errorf("no %q yet", want)
			}
		}
		return nil
	})
	ns.drain(50 * time.Millisecond)
	for range 3 {
		ns.waitFor("WATCHDOG=1", 2*time.Second)
	}
	if n := ts.State().Pending(); n == 0 {
		t.Error("no node changes pending during the outage")
	}

	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 30*time.Second, "/health to pass", func() error {
		if code, body := get("/health"); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if errText, _ := health(t, ts.ConfigPath); errText != "" {
		t.Errorf("headscale health after the outage: %q", errText)
	}
	ts.CreateUser(t, "carol")
	if _, regErr := register(t, newClient(t, ts.URL), k, "charlie"); regErr != "" {
		t.Errorf("registering after the outage: %q", regErr)
	}
	nextFor("charlie joining", func(r *tailcfg.MapResponse) bool {
		for _, p := range append(r.Peers, r.PeersChanged...) {
			if strings.HasPrefix(p.Name, "charlie.") {
				return true
			}
		}
		return false
	})
	tstest.WaitFor(t, 30*time.Second, "bravo's changes from the outage in the database", func() error {
		nodes, err := ts.Store().ListNodes(context.Background())
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if n.ID != 0 && n.Hostname == "bravo" {
				var hi tailcfg.Hostinfo
				json.Unmarshal(n.Hostinfo, &hi)
				if hi.OSVersion != "outage-1" || n.LastSeen.Before(wentOffline.Add(-time.Second)) {
					return fmt.Errorf("bravo in the database: os version %q, last seen %v (went offline at %v)", hi.OSVersion, n.LastSeen, wentOffline)
				}
				return nil
			}
		}
		return fmt.Errorf("bravo is not in the database")
	})
	// The watch that logs it runs every dbWatchInterval, so it may come
	// after the flush.
	tstest.WaitFor(t, 30*time.Second, "the end of the outage logged", func() error {
		if !strings.Contains(ts.Logs(), "the database answers again") {
			return fmt.Errorf("no \"the database answers again\" line yet")
		}
		return nil
	})
}
