package sdnotify

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// listener is a real unixgram socket standing in for systemd's.
type listener struct {
	t    *testing.T
	conn *net.UnixConn
	msgs chan string
}

func listen(t *testing.T, watchdog time.Duration) *listener {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	if watchdog > 0 {
		t.Setenv("WATCHDOG_USEC", strconv.FormatInt(watchdog.Microseconds(), 10))
	} else {
		t.Setenv("WATCHDOG_USEC", "")
	}
	t.Setenv("WATCHDOG_PID", "")
	l := &listener{t: t, conn: conn, msgs: make(chan string, 1000)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				close(l.msgs)
				return
			}
			l.msgs <- string(buf[:n])
		}
	}()
	return l
}

// next returns the next datagram or fails after the deadline.
func (l *listener) next(d time.Duration) string {
	l.t.Helper()
	select {
	case m := <-l.msgs:
		return m
	case <-time.After(d):
		l.t.Fatalf("no notification within %v", d)
		return ""
	}
}

// quiet asserts that no datagram arrives for d.
func (l *listener) quiet(d time.Duration) {
	l.t.Helper()
	select {
	case m := <-l.msgs:
		l.t.Fatalf("unexpected notification %q", m)
	case <-time.After(d):
	}
}

func TestStateMessages(t *testing.T) {
	l := listen(t, 0)
	n := New(nil)
	if !n.Enabled() || n.WatchdogInterval() != 0 {
		t.Fatalf("enabled=%v watchdog=%v", n.Enabled(), n.WatchdogInterval())
	}
	n.Ready("3 nodes, 1 online\nsecond line")
	if m := l.next(time.Second); m != "READY=1\nSTATUS=3 nodes, 1 online second line" {
		t.Fatalf("ready = %q", m)
	}
	n.Status("3 nodes, 1 online\nsecond line") // unchanged: not sent again
	n.Status("3 nodes, 2 online")
	if m := l.next(time.Second); m != "STATUS=3 nodes, 2 online" {
		t.Fatalf("status = %q", m)
	}
	n.Reloading()
	m := l.next(time.Second)
	lines := strings.Split(m, "\n")
	if lines[0] != "RELOADING=1" || !strings.HasPrefix(lines[1], "MONOTONIC_USEC=") {
		t.Fatalf("reloading = %q", m)
	}
	if us, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "MONOTONIC_USEC="), 10, 64); err != nil || us <= 0 {
		t.Fatalf("MONOTONIC_USEC = %q", lines[1])
	}
	n.Waiting("waiting for PostgreSQL\nat host", 45*time.Second)
	if m := l.next(time.Second); m != "STATUS=waiting for PostgreSQL at host\nEXTEND_TIMEOUT_USEC=45000000" {
		t.Fatalf("waiting = %q", m)
	}
	n.Stopping()
	if m := l.next(time.Second); !strings.HasPrefix(m, "STOPPING=1\n") {
		t.Fatalf("stopping = %q", m)
	}
}

func TestSilentWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	t.Setenv("WATCHDOG_USEC", "1000000")
	n := New(nil)
	if n.Enabled() {
		t.Fatal("enabled without NOTIFY_SOCKET")
	}
	n.Ready("x")
	n.Stopping()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	start := time.Now()
	n.RunWatchdog(ctx, 0, nil) // returns at once: nothing to ping
	if time.Since(start) > 500*time.Millisecond {
		t.Fatal("RunWatchdog blocked without a service manager")
	}
}

// TestWatchdogStopsWhileStalled runs the watchdog against a real socket with
// a check that stalls on purpose, then with one that errors, and shows the
// pings stop while it does and resume after.
func TestWatchdogStopsWhileStalled(t *testing.T) {
	l := listen(t, 400*time.Millisecond)
	n := New(nil)
	if n.WatchdogInterval() != 400*time.Millisecond {
		t.Fatalf("watchdog = %v", n.WatchdogInterval())
	}
	var stalled, failing atomic.Bool
	release := make(chan struct{})
	checks := []Check{
		{Name: "loop", Fn: func(ctx context.Context) error {
			if stalled.Load() {
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		}},
		{Name: "database", Fn: func(ctx context.Context) error {
			if failing.Load() {
				return errors.New("database is closed")
			}
			return nil
		}},
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { n.RunWatchdog(ctx, 100*time.Millisecond, checks); close(done) }()

	for range 3 {
		if m := l.next(time.Second); m != "WATCHDOG=1" {
			t.Fatalf("ping = %q", m)
		}
	}
	stalled.Store(true)
	drain(l, 300*time.Millisecond) // a ping already in flight may land
	l.quiet(time.Second)           // 10 intervals, 2.5 watchdog timeouts: no ping
	stalled.Store(false)
	close(release)
	if m := l.next(time.Second); m != "WATCHDOG=1" {
		t.Fatalf("after recovery = %q", m)
	}
	failing.Store(true)
	drain(l, 300*time.Millisecond)
	l.quiet(time.Second)
	failing.Store(false)
	if m := l.next(time.Second); m != "WATCHDOG=1" {
		t.Fatalf("after recovery = %q", m)
	}
	cancel()
	<-done
}

func drain(l *listener, d time.Duration) {
	deadline := time.After(d)
	for {
		select {
		case <-l.msgs:
		case <-deadline:
			return
		}
	}
}
