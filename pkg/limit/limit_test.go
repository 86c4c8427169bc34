package limit

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

type counter struct {
	mu   sync.Mutex
	hits map[string]int
}

func (c *counter) LimitHit(l string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.hits == nil {
		c.hits = map[string]int{}
	}
	c.hits[l]++
}

func TestReporterCountsAllLogsFew(t *testing.T) {
	var buf bytes.Buffer
	var c counter
	r := NewReporter(&c, slog.New(slog.NewTextHandler(&buf, nil)))
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	for range 100 {
		r.Hit("a", "a hit", "remote", "192.0.2.1")
	}
	r.Hit("b", "b hit")
	now = now.Add(LogEvery)
	r.Hit("a", "a hit")
	if c.hits["a"] != 101 || c.hits["b"] != 1 {
		t.Fatalf("counted %v, want a=101 b=1", c.hits)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d log lines, want 3:\n%s", len(lines), buf.String())
	}
	for i, want := range []string{"limit=a suppressed=0 remote=192.0.2.1", "limit=b suppressed=0", "limit=a suppressed=99"} {
		if !strings.Contains(lines[i], want) || !strings.Contains(lines[i], "level=WARN") {
			t.Errorf("line %d = %q, want %q at WARN", i, lines[i], want)
		}
	}
	var nilR *Reporter
	nilR.Hit("x", "nothing") // must not panic
}

func TestGate(t *testing.T) {
	tests := []struct {
		name       string
		n, waiting int
		wait       time.Duration
		release    bool // a holder releases while the caller waits
		want       bool
	}{
		{"full, no waiters allowed", 1, 0, time.Second, true, false},
		{"full, waits and times out", 1, 1, 10 * time.Millisecond, false, false},
		{"full, waits and gets the released slot", 1, 1, time.Minute, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := NewGate(tt.n, tt.waiting, tt.wait)
			for range tt.n {
				if !g.TryAcquire() {
					t.Fatal("free slot refused")
				}
			}
			done := make(chan bool)
			go func() { done <- g.Acquire(context.Background()) }()
			if tt.release {
				// Release once the caller waits (or was refused).
				deadline := time.Now().Add(10 * time.Second)
				for g.waiting.Load() == 0 && time.Now().Before(deadline) {
					select {
					case got := <-done:
						if got != tt.want {
							t.Fatalf("Acquire = %v, want %v", got, tt.want)
						}
						return
					case <-time.After(time.Millisecond):
					}
				}
				g.Release()
			}
			if got := <-done; got != tt.want {
				t.Fatalf("Acquire = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestFailures(t *testing.T) {
	now := time.Unix(1000, 0)
	f := newFailures(3, time.Second, 2, func() time.Time { return now })
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	steps := []struct {
		name      string
		advance   time.Duration
		fail      netip.Addr
		check     netip.Addr
		wantBlock bool
	}{
		{"first failure", 0, a, a, false},
		{"second failure", 0, a, a, false},
		{"third failure uses up the budget", 0, a, a, true},
		{"another client is not blocked", 0, netip.Addr{}, b, false},
		{"refilled by one", time.Second, netip.Addr{}, a, false},
		{"fails again at once", 0, a, a, true},
		{"b fails", 0, b, b, false},
		{"table full: c shares one budget", 0, c, c, false},
		{"c is still not blocked before failing", 0, netip.Addr{}, c, false},
	}
	for _, s := range steps {
		now = now.Add(s.advance)
		if s.fail.IsValid() {
			_, blocked := f.Fail(s.fail)
			if blocked != s.wantBlock {
				t.Fatalf("%s: Fail blocked = %v, want %v", s.name, blocked, s.wantBlock)
			}
			continue
		}
		if wait, blocked := f.Blocked(s.check); blocked != s.wantBlock || blocked && wait <= 0 {
			t.Fatalf("%s: Blocked = %v (wait %v), want %v", s.name, blocked, wait, s.wantBlock)
		}
	}
	if f.Len() != 2 {
		t.Fatalf("table holds %d clients, want 2", f.Len())
	}
	// The shared budget: two more failures of untracked clients use it up.
	f.Fail(c)
	if _, blocked := f.Fail(netip.MustParseAddr("192.0.2.4")); !blocked {
		t.Fatal("shared budget not used up after 3 failures")
	}
	// Once refilled, idle clients are dropped to make room.
	now = now.Add(10 * time.Second)
	f.Fail(c)
	if _, ok := f.clients[Client(c)]; !ok || f.Len() != 1 {
		t.Fatalf("after refill: %d clients, c tracked %v", f.Len(), ok)
	}
}

func TestClient(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7/32",
		"::ffff:192.0.2.7":     "192.0.2.7/32",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
	} {
		if got := Client(netip.MustParseAddr(in)).String(); got != want {
			t.Errorf("Client(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestSamplerLogsUnderItsKey(t *testing.T) {
	var buf bytes.Buffer
	r := NewSampler(slog.New(slog.NewTextHandler(&buf, nil)), "outcome")
	for range 5 {
		r.Hit("needs_auth_key", "registration refused")
	}
	if got := strings.Count(buf.String(), "\n"); got != 1 || !strings.Contains(buf.String(), "outcome=needs_auth_key") || strings.Contains(buf.String(), "limit=") {
		t.Fatalf("%d lines: %s", got, buf.String())
	}
}
