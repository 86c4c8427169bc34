//go:build linux

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/jackc/pgx/v5"
)

// TestPostgresOutage runs the server on a real PostgreSQL with two
// official clients, stops PostgreSQL under it and starts it again. During
// the outage the server keeps running, the clients keep their maps and
// still ping and send data to each other, /health and `headscale health`
// fail with the reason, an API write (users create) fails with it, and a
// new client cannot register. Once PostgreSQL is back, all of that works
// again by itself, without restarting anything, and the last-seen time of
// the node that went offline during the outage reaches the database.
func TestPostgresOutage(t *testing.T) {
	requireEnv(t)
	c := pgtest.New()
	t.Cleanup(c.Stop)
	db := c.Database(t)
	t.Cleanup(func() { _ = c.StartServer() }) // for the database to be dropped
	srv := StartServer(t, ServerOptions{Postgres: &db})
	srv.CreateUser(t, "alice")
	key := srv.CreatePreAuthKey(t, "alice", PreAuthKeyOptions{Reusable: true})
	a, b := startPair(t, srv, key.Key, NodeOptions{})
	mustPing(t, a, b)
	proc := srv.proc

	if err := c.StopServer(); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 30*time.Second, "/health to fail with the reason", func() error {
		err := srv.healthy()
		if err == nil || !strings.Contains(err.Error(), "503") || !strings.Contains(err.Error(), "the database is unavailable") {
			return fmt.Errorf("/health: %v", err)
		}
		return nil
	})
	if _, err := srv.CLI(t, "health"); err == nil || !strings.Contains(err.Error(), "database does not answer: the database is unavailable") {
		t.Errorf("headscale health during the outage: %v", err)
	}
	if _, err := srv.CLI(t, "users", "create", "bob"); err == nil || !strings.Contains(err.Error(), "the database is unavailable") {
		t.Errorf("users create during the outage: %v", err)
	}
	cNode := StartNode(t, srv, "node-c", NodeOptions{})
	if out, err := cNode.Up(key.Key, "--timeout", "15s"); err == nil {
		t.Errorf("tailscale up succeeded during the outage:\n%s", out)
	}

	// The tailnet carries on.
	mustPing(t, a, b)
	mustPing(t, b, a)
	SendBytes(t, a, b, b.ListenPort, randomBytes(t, 256<<10))
	wentOffline := time.Now()
	b.Stop()
	if err := proc.exited(); err != nil {
		t.Fatalf("the server exited during the outage: %v", err)
	}

	if err := c.StartServer(); err != nil {
		t.Fatal(err)
	}
	tstest.WaitFor(t, 30*time.Second, "/health to pass", srv.healthy)
	if _, err := srv.CLI(t, "health"); err != nil {
		t.Errorf("headscale health after the outage: %v", err)
	}
	srv.CreateUser(t, "bob")
	cNode.MustUp(key.Key)
	a.WaitForPeer(cNode, peerTimeout)
	mustPing(t, a, cNode)
	if srv.proc != proc || proc.exited() != nil {
		t.Fatal("the server was restarted")
	}
	tstest.WaitFor(t, 30*time.Second, "node-b's last-seen time from the outage in the database", func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, db.DSN())
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		var ms *int64
		if err := conn.QueryRow(ctx, `SELECT last_seen FROM nodes WHERE hostname = 'node-b'`).Scan(&ms); err != nil {
			return err
		}
		if ms == nil || time.UnixMilli(*ms).Before(wentOffline.Add(-time.Second)) {
			return fmt.Errorf("last_seen %v, want at least %v", ms, wentOffline)
		}
		return nil
	})
}
