package cluster

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) {
	os.Exit(pgtest.New().Main(m))
}

// waitSignal waits up to d for l to signal.
func waitSignal(t *testing.T, l *Listener, d time.Duration, what string) {
	t.Helper()
	select {
	case <-l.C:
	case <-time.After(d):
		t.Fatalf("no wake-up within %v %s", d, what)
	}
}

// noSignal checks that l has no wake-up pending.
func noSignal(t *testing.T, l *Listener, what string) {
	t.Helper()
	select {
	case <-l.C:
		t.Fatalf("a wake-up %s", what)
	default:
	}
}

// TestListener shows the listener waking its reader for a notification
// committed by another connection, once for a burst, not for another
// channel's, and again after its server restarted (once for the
// reconnection, since notifications may have been lost, then per
// notification).
func TestListener(t *testing.T) {
	pg := pgtest.New() // a cluster of its own: the test restarts it
	t.Cleanup(pg.Stop)
	db := pg.Database(t)
	dial := func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, db.DSN()) }
	l := NewListener(dial, "hs_test", nil)
	l.retryMax = 200 * time.Millisecond
	ctx, cancel := context.WithCancel(t.Context())
	go l.Run(ctx)
	t.Cleanup(func() { cancel(); <-l.Done() })

	waitSignal(t, l, 10*time.Second, "after connecting")
	notify := func(channel string, n int) {
		t.Helper()
		conn, err := dial(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(t.Context())
		tx, err := conn.Begin(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for range n {
			if _, err := tx.Exec(t.Context(), "SELECT pg_notify($1, '1')", channel); err != nil {
				t.Fatal(err)
			}
		}
		if err := tx.Commit(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	notify("hs_other", 1)
	notify("hs_test", 5)
	waitSignal(t, l, 10*time.Second, "after a commit that notified")
	// The burst's notifications arrive as one (identical ones in one
	// transaction are folded by PostgreSQL; others coalesce in C). The
	// other channel's notification, committed first, was never delivered:
	// PostgreSQL delivers in commit order, so it would be pending by now.
	noSignal(t, l, "pending after one notifying commit was consumed")

	if err := pg.StopServer(); err != nil {
		t.Fatal(err)
	}
	if err := pg.StartServer(); err != nil {
		t.Fatal(err)
	}
	waitSignal(t, l, 20*time.Second, "after the server restarted (the reconnection itself)")
	notify("hs_test", 1)
	waitSignal(t, l, 10*time.Second, "for a notification after the restart")
}
