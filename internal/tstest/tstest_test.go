package tstest

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestPoll(t *testing.T) {
	stop := errors.New("gone")
	tests := []struct {
		name    string
		fn      func(calls int) error
		timeout time.Duration
		wantErr string // "" for success
		minCall int
	}{
		{"at once", func(int) error { return nil }, time.Second, "", 1},
		{"after a few polls", func(n int) error {
			if n < 3 {
				return errors.New("not yet")
			}
			return nil
		}, 5 * time.Second, "", 3},
		{"times out with the last error", func(int) error { return errors.New("still missing") }, 30 * time.Millisecond, "not met within 30ms: still missing", 2},
		{"permanent stops at once", func(int) error { return Permanent(stop) }, time.Hour, "gone", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			err := Poll(tt.timeout, func() error { calls++; return tt.fn(calls) })
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("Poll = %v, want %q", err, tt.wantErr)
			}
			if calls < tt.minCall {
				t.Fatalf("fn called %d times, want at least %d", calls, tt.minCall)
			}
			if tt.name == "permanent stops at once" && calls != 1 {
				t.Fatalf("fn called %d times after a permanent error", calls)
			}
		})
	}
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) is not nil")
	}
}

func TestWithin(t *testing.T) {
	Within(t, time.Second, "quick", func() error { return nil })
	ft := &fakeTB{TB: t}
	release := make(chan struct{})
	defer close(release)
	func() {
		defer func() { recover() }() // fakeTB.Fatalf panics to stop like FailNow
		Within(ft, 10*time.Millisecond, "stuck", func() error { <-release; return nil })
	}()
	if !strings.Contains(ft.msg, "stuck: no result within 10ms") {
		t.Fatalf("Within on a stuck call: %q", ft.msg)
	}
}

// fakeTB records a Fatalf instead of ending the test.
type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic("fatal")
}
