// Package tstest holds the one way tests in this repository wait for a
// condition: poll a function until it returns nil or a deadline passes.
// It imports nothing of this repository, so every package's tests can use
// it, down to the lowest (pkg/mapper), as can the in-process harness
// (internal/servertest) and the process-level end-to-end tests (e2e).
//
// Tests never sleep for a fixed time to let something happen; they wait
// for the thing itself:
//
//	tstest.WaitFor(t, 10*time.Second, "bravo online", func() error {
//		if !online("bravo") {
//			return errors.New("still offline")
//		}
//		return nil
//	})
//
// The failure message carries what was awaited and the function's last
// error, so a timeout says what was still missing.
package tstest

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// Pauses between two polls. Polling starts fast (most conditions hold
// within milliseconds in-process) and backs off to maxInterval so a
// condition that takes seconds (a client's own timers) is not polled in a
// busy loop. A check that is itself slow (running a child process) pauses
// as long as it took, up to maxSlowInterval, so it never takes more than
// about half the time it waits.
const (
	firstInterval   = 5 * time.Millisecond
	maxInterval     = 100 * time.Millisecond
	maxSlowInterval = 250 * time.Millisecond
)

// permanentError marks an error that polling cannot fix.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent wraps err so Poll and WaitFor stop at once with it instead of
// polling on (for example, the process being waited on has exited).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// Poll calls fn until it returns nil, returns a Permanent error, or
// timeout passes; it returns nil, the permanent error, or fn's last error
// wrapped with the timeout. fn is always called at least once.
func Poll(timeout time.Duration, fn func() error) error {
	deadline := time.Now().Add(timeout)
	interval := firstInterval
	for {
		start := time.Now()
		err := fn()
		took := time.Since(start)
		if err == nil {
			return nil
		}
		var pe permanentError
		if errors.As(err, &pe) {
			return pe.err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not met within %v: %w", timeout, err)
		}
		pause := min(max(interval, took), maxSlowInterval)
		time.Sleep(min(pause, time.Until(deadline)+time.Millisecond))
		interval = min(2*interval, maxInterval)
	}
}

// WaitFor polls fn as Poll does and fails tb, naming what was awaited and
// fn's last error, if it does not return nil in time.
func WaitFor(tb testing.TB, timeout time.Duration, what string, fn func() error) {
	tb.Helper()
	if err := Poll(timeout, fn); err != nil {
		tb.Fatalf("waiting for %s: %v", what, err)
	}
}

// Within runs f, which blocks on something that has no deadline of its
// own (a stream read, a handshake), and fails tb if f returns an error or
// has not returned after d. f keeps running in the background after a
// timeout, so it should be something the test's cleanup ends.
func Within(tb testing.TB, d time.Duration, what string, f func() error) {
	tb.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			tb.Fatalf("%s: %v", what, err)
		}
	case <-timer.C:
		tb.Fatalf("%s: no result within %v", what, d)
	}
}
