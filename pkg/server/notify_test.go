package server_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/server"
)

// notifySocket is a real unixgram socket set as NOTIFY_SOCKET, standing in
// for systemd.
type notifySocket struct {
	t    *testing.T
	msgs chan string
}

func listenNotify(t *testing.T, watchdog time.Duration) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", strconv.FormatInt(watchdog.Microseconds(), 10))
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ns := &notifySocket{t: t, msgs: make(chan string, 10000)}
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ns.msgs <- string(buf[:n])
		}
	}()
	return ns
}

// waitFor skips datagrams until one starts with prefix.
func (ns *notifySocket) waitFor(prefix string, d time.Duration) string {
	ns.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m := <-ns.msgs:
			if strings.HasPrefix(m, prefix) {
				return m
			}
		case <-deadline:
			ns.t.Fatalf("no %q notification within %v", prefix, d)
		}
	}
}

// drain discards datagrams for d.
func (ns *notifySocket) drain(d time.Duration) {
	deadline := time.After(d)
	for {
		select {
		case <-ns.msgs:
		case <-deadline:
			return
		}
	}
}

// noPing asserts no WATCHDOG=1 arrives for d (other datagrams may).
func (ns *notifySocket) noPing(d time.Duration) {
	ns.t.Helper()
	deadline := time.After(d)
	for {
		select {
		case m := <-ns.msgs:
			if m == "WATCHDOG=1" {
				ns.t.Fatalf("watchdog pinged although liveness fails")
			}
		case <-deadline:
			return
		}
	}
}

// TestNotifyLifecycle runs a real server against a real notify socket:
// READY=1 with a status once listeners are bound, watchdog pings while the
// database and change loop answer, RELOADING=1/READY=1 around a reload that
// changes the extra DNS records, a broken records file refused with its
// line while the old records stay, pings withheld once the database is
// dead (SQLite; on PostgreSQL they go on), and STOPPING=1 at shutdown.
func TestNotifyLifecycle(t *testing.T) {
	ns := listenNotify(t, time.Second)
	dir := t.TempDir()
	records := filepath.Join(dir, "records.json")
	os.WriteFile(records, []byte(`[{"name": "a.example.internal", "type": "A", "value": "100.64.0.9"}]`), 0o600)
	ts := startServerWith(t, dir, "dns:\n  extra_records_path: "+records+"\n", func(s *server.Server) {
		s.WatchdogInterval = 100 * time.Millisecond
	})

	if m := ns.waitFor("READY=1", 5*time.Second); !strings.Contains(m, "STATUS=serving 0 nodes, 0 online, 0 map sessions") {
		t.Fatalf("ready = %q", m)
	}
	// The listener answers by the time READY=1 was sent.
	if c, err := net.Dial("tcp", ts.Addr().String()); err != nil {
		t.Fatalf("READY=1 before the listener answers: %v", err)
	} else {
		c.Close()
	}
	for range 3 {
		ns.waitFor("WATCHDOG=1", 2*time.Second)
	}

	// A connected node gets the records in its full map and the new ones
	// pushed to it on reload.
	c := newClient(t, ts.URL)
	nk, _ := register(t, c, ts.key(t, false, time.Now().Add(time.Hour)), "alpha")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sess, full := openMap(t, ctx, c, nk, "alpha")
	if got := full.DNSConfig.ExtraRecords; len(got) != 1 || got[0].Value != "100.64.0.9" {
		t.Fatalf("records at start = %+v", got)
	}
	os.WriteFile(records, []byte(`[{"name": "a.example.internal", "type": "A", "value": "100.64.0.10"},
 {"name": "b.example.internal", "type": "AAAA", "value": "fd7a:115c:a1e0::7"}]`), 0o600)
	if err := ts.Reload(); err != nil {
		t.Fatal(err)
	}
	m := ns.waitFor("RELOADING=1", 2*time.Second)
	if !strings.Contains(m, "\nMONOTONIC_USEC=") {
		t.Fatalf("reloading without MONOTONIC_USEC: %q", m)
	}
	ns.waitFor("READY=1", 2*time.Second)
	for {
		r, err := sess.Next()
		if err != nil {
			t.Fatalf("waiting for the DNS update: %v", err)
		}
		if r.DNSConfig == nil {
			continue
		}
		if got := r.DNSConfig.ExtraRecords; len(got) != 2 || got[0].Value != "100.64.0.10" {
			t.Fatalf("records after reload = %+v", got)
		}
		break
	}

	os.WriteFile(records, []byte("[\n  {\"name\": \"c.example.internal\", \"type\": \"A\" \"value\": \"1.2.3.4\"}\n]"), 0o600)
	err := ts.Reload()
	if err == nil || !strings.Contains(err.Error(), records+":2:") {
		t.Fatalf("broken records file: %v", err)
	}
	ns.waitFor("RELOADING=1", 2*time.Second)
	ns.waitFor("READY=1", 2*time.Second)
	if got := ts.DNSConfig().ExtraRecords; len(got) != 2 {
		t.Fatalf("a refused reload changed the records: %+v", got)
	}
	ns.waitFor("WATCHDOG=1", 2*time.Second)

	// A dead database: on SQLite, a file in this process, pings stop
	// (systemd would restart the service). PostgreSQL is another service:
	// the watchdog reflects this server's own liveness, and pings go on
	// (TestPostgresOutage shows the server riding the outage out).
	ts.Store().Close()
	ns.drain(300 * time.Millisecond) // a check already passed may still ping
	if ts.Store().Engine() == "postgres" {
		for range 3 {
			ns.waitFor("WATCHDOG=1", 2*time.Second)
		}
	} else {
		ns.noPing(2 * time.Second) // two watchdog timeouts without a ping
	}

	ts.Stop()
	ns.waitFor("STOPPING=1", 5*time.Second)
}
