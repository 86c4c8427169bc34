package sshcheck

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestIDs(t *testing.T) {
	r := New(nil, 0)
	seen := map[string]bool{}
	for range 200 {
		c, err := r.Begin(1, ids.NodeID(len(seen)%50+2), "root")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(c.ID, IDPrefix) || len(c.ID) != len(IDPrefix)+32 {
			t.Fatalf("auth ID %q: want %s and 32 hex digits", c.ID, IDPrefix)
		}
		if seen[c.ID] {
			t.Fatalf("auth ID %q issued twice", c.ID)
		}
		seen[c.ID] = true
	}
	if r.Timeout() != DefaultTimeout {
		t.Fatalf("Timeout() = %v, want %v", r.Timeout(), DefaultTimeout)
	}
}

// TestDecide runs sequences of operations on one check against a fake
// clock and checks every step's outcome.
func TestDecide(t *testing.T) {
	type step struct {
		advance time.Duration
		op      string // approve, reject, get
		wantErr error
		want    Verdict // for get: the verdict; -1: not found
	}
	const notFound Verdict = -1
	tests := []struct {
		name  string
		steps []step
	}{
		{"approve", []step{
			{op: "get", want: Pending},
			{op: "approve"},
			{op: "get", want: Approved},
		}},
		{"reject", []step{
			{op: "reject"},
			{op: "get", want: Rejected},
		}},
		{"approve twice", []step{
			{op: "approve"},
			{op: "approve", wantErr: ErrDecided},
			{op: "reject", wantErr: ErrDecided},
			{op: "get", want: Approved},
		}},
		{"reject then approve", []step{
			{op: "reject"},
			{op: "approve", wantErr: ErrDecided},
			{op: "get", want: Rejected},
		}},
		{"approve just in time", []step{
			{advance: time.Minute - time.Nanosecond, op: "approve"},
		}},
		{"approve too late", []step{
			{advance: time.Minute, op: "get", want: Expired},
			{op: "approve", wantErr: ErrNotFound},
			{op: "reject", wantErr: ErrNotFound},
		}},
		{"verdict forgotten after grace", []step{
			{op: "approve"},
			{advance: decidedGrace - time.Second, op: "get", want: Approved},
			{advance: time.Second, op: "get", want: notFound},
			{op: "approve", wantErr: ErrNotFound},
		}},
		{"expired forgotten after grace", []step{
			{advance: time.Minute + decidedGrace, op: "get", want: notFound},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			r := New(clk.now, time.Minute)
			c, err := r.Begin(7, 9, "alice")
			if err != nil {
				t.Fatal(err)
			}
			if c.Src != 7 || c.Dst != 9 || c.LocalUser != "alice" || !c.Created.Equal(clk.now()) || c.Expires.Sub(c.Created) != time.Minute || c.Verdict != Pending {
				t.Fatalf("Begin = %+v", c)
			}
			for i, s := range tt.steps {
				clk.advance(s.advance)
				var err error
				switch s.op {
				case "approve":
					_, err = r.Approve(c.ID)
				case "reject":
					_, err = r.Reject(c.ID)
				case "get":
					got, ok := r.Get(c.ID)
					switch {
					case s.want == notFound && ok:
						t.Fatalf("step %d: Get found %+v, want not found", i, got)
					case s.want != notFound && (!ok || got.Verdict != s.want):
						t.Fatalf("step %d: Get = %v %v, want %v", i, got.Verdict, ok, s.want)
					}
				}
				if !errors.Is(err, s.wantErr) {
					t.Fatalf("step %d (%s): err = %v, want %v", i, s.op, err, s.wantErr)
				}
			}
		})
	}
	if _, err := New(nil, 0).Approve("sshcheck-nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown ID: %v", err)
	}
}

func TestApprovedWithin(t *testing.T) {
	tests := []struct {
		name   string
		decide string // what happens to the check for (1, 2): approve, reject, or nothing
		after  time.Duration
		src    ids.NodeID // asked pair
		dst    ids.NodeID
		period time.Duration
		want   bool
	}{
		{"never decided", "", 0, 1, 2, DefaultPeriod, false},
		{"rejected is not remembered", "reject", 0, 1, 2, DefaultPeriod, false},
		{"within period", "approve", time.Hour, 1, 2, DefaultPeriod, true},
		{"just before the end", "approve", DefaultPeriod - time.Second, 1, 2, DefaultPeriod, true},
		{"period over", "approve", DefaultPeriod, 1, 2, DefaultPeriod, false},
		{"short period", "approve", 2 * time.Minute, 1, 2, time.Minute, false},
		{"always check", "approve", 0, 1, 2, 0, false},
		{"other source", "approve", 0, 3, 2, DefaultPeriod, false},
		{"other destination", "approve", 0, 1, 3, DefaultPeriod, false},
		{"reversed pair", "approve", 0, 2, 1, DefaultPeriod, false},
		{"beyond the max period", "approve", MaxPeriod, 1, 2, 2 * MaxPeriod, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newClock()
			r := New(clk.now, 0)
			c, _ := r.Begin(1, 2, "root")
			var err error
			switch tt.decide {
			case "approve":
				_, err = r.Approve(c.ID)
			case "reject":
				_, err = r.Reject(c.ID)
			}
			if err != nil {
				t.Fatal(err)
			}
			clk.advance(tt.after)
			if got := r.ApprovedWithin(tt.src, tt.dst, tt.period); got != tt.want {
				t.Fatalf("ApprovedWithin(%d, %d, %v) after %v = %v, want %v", tt.src, tt.dst, tt.period, tt.after, got, tt.want)
			}
		})
	}
}

// TestWait covers the ways a blocked waiter returns.
func TestWait(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		act     func(r *Registry, id string, cancel func())
		want    Verdict
		wantErr error
	}{
		{"approved", time.Minute, func(r *Registry, id string, _ func()) { r.Approve(id) }, Approved, nil},
		{"rejected", time.Minute, func(r *Registry, id string, _ func()) { r.Reject(id) }, Rejected, nil},
		{"times out", 30 * time.Millisecond, func(*Registry, string, func()) {}, Expired, nil},
		{"context ends", time.Minute, func(_ *Registry, _ string, cancel func()) { cancel() }, Pending, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := New(nil, tt.timeout)
			c, _ := r.Begin(1, 2, "root")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type result struct {
				c   Check
				err error
			}
			const waiters = 3
			res := make(chan result, waiters)
			for range waiters {
				go func() {
					c, err := r.Wait(ctx, c.ID)
					res <- result{c, err}
				}()
			}
			time.Sleep(10 * time.Millisecond) // let them block
			tt.act(r, c.ID, cancel)
			for range waiters {
				select {
				case got := <-res:
					if !errors.Is(got.err, tt.wantErr) {
						t.Fatalf("Wait err = %v, want %v", got.err, tt.wantErr)
					}
					if tt.wantErr == nil && (got.c.Verdict != tt.want || got.c.ID != c.ID) {
						t.Fatalf("Wait = %+v, want verdict %v", got.c, tt.want)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("Wait did not return")
				}
			}
		})
	}

	// A verdict reached before anyone waits is still delivered.
	r := New(nil, time.Minute)
	c, _ := r.Begin(1, 2, "root")
	r.Approve(c.ID)
	if got, err := r.Wait(context.Background(), c.ID); err != nil || got.Verdict != Approved {
		t.Fatalf("Wait after approval = %v %v", got.Verdict, err)
	}
	if _, err := r.Wait(context.Background(), "sshcheck-unknown"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Wait on unknown ID: %v", err)
	}
	// The verdict stays readable for a retried follow-up.
	if _, ok := r.Get(c.ID); !ok {
		t.Fatal("decided check forgotten too early")
	}
}

func TestLimits(t *testing.T) {
	clk := newClock()
	r := New(clk.now, time.Minute)
	var first Check
	for i := range MaxPendingPerDst {
		c, err := r.Begin(ids.NodeID(i), 1, "root")
		if err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
		if i == 0 {
			first = c
		}
	}
	if _, err := r.Begin(1000, 1, "root"); !errors.Is(err, ErrTooMany) {
		t.Fatalf("one destination over its limit: %v", err)
	}
	if _, err := r.Begin(1000, 2, "root"); err != nil {
		t.Fatalf("another destination is not limited: %v", err)
	}
	// Deciding one frees a slot.
	r.Reject(first.ID)
	if _, err := r.Begin(1000, 1, "root"); err != nil {
		t.Fatalf("after a verdict: %v", err)
	}
	if _, err := r.Begin(1001, 1, "root"); !errors.Is(err, ErrTooMany) {
		t.Fatalf("full again: %v", err)
	}
	// Expiry frees them all.
	clk.advance(time.Minute)
	for i := range MaxPendingPerDst {
		if _, err := r.Begin(ids.NodeID(i), 1, "root"); err != nil {
			t.Fatalf("after expiry, check %d: %v", i, err)
		}
	}
	// The global cap.
	r2 := New(clk.now, time.Minute)
	for i := range MaxPending {
		if _, err := r2.Begin(1, ids.NodeID(i/MaxPendingPerDst+10), "root"); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if _, err := r2.Begin(1, 999999, "root"); !errors.Is(err, ErrTooMany) {
		t.Fatalf("over the global limit: %v", err)
	}
}

func TestVerdictString(t *testing.T) {
	for v, want := range map[Verdict]string{Pending: "pending", Approved: "approved", Rejected: "rejected", Expired: "expired", 42: "unknown"} {
		if v.String() != want {
			t.Errorf("%d.String() = %q, want %q", int(v), v.String(), want)
		}
	}
}

// TestRememberApproval: an approval learned from another server (the
// follower's Decided, or the store at Share) counts from its own time,
// never from the future, is ignored when older than MaxPeriod or naming
// no pair, and never replaces a later approval of the pair.
func TestRememberApproval(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name   string
		before time.Time // the pair's approval already held (zero: none)
		out    sharedData
		want   time.Time // the pair's approval after (zero: none)
	}{
		{"its own time", time.Time{}, sharedData{Src: 1, Dst: 2, At: now.Add(-time.Hour)}, now.Add(-time.Hour)},
		{"no time", time.Time{}, sharedData{Src: 1, Dst: 2}, now},
		{"a future time", time.Time{}, sharedData{Src: 1, Dst: 2, At: now.Add(time.Minute)}, now},
		{"older than MaxPeriod", time.Time{}, sharedData{Src: 1, Dst: 2, At: now.Add(-MaxPeriod)}, time.Time{}},
		{"no source", time.Time{}, sharedData{Dst: 2, At: now}, time.Time{}},
		{"a later one held", now.Add(-time.Minute), sharedData{Src: 1, Dst: 2, At: now.Add(-time.Hour)}, now.Add(-time.Minute)},
		{"an earlier one held", now.Add(-2 * time.Hour), sharedData{Src: 1, Dst: 2, At: now.Add(-time.Hour)}, now.Add(-time.Hour)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New(func() time.Time { return now }, 0)
			if !tc.before.IsZero() {
				r.approved[pair{1, 2}] = tc.before
			}
			r.mu.Lock()
			r.rememberLocked(tc.out, now)
			r.mu.Unlock()
			got, ok := r.approved[pair{1, 2}]
			if ok != !tc.want.IsZero() || !got.Equal(tc.want) {
				t.Errorf("approval of (1, 2) = %v (held %v), want %v", got, ok, tc.want)
			}
			if len(r.approved) > 1 {
				t.Errorf("approvals = %v, want the pair (1, 2) at most", r.approved)
			}
		})
	}
}
