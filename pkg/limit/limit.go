// Package limit holds the building blocks of the server's protective
// limits: a Gate that bounds work in progress with a short, bounded wait, a
// Failures table that slows clients who fail repeatedly in bounded memory,
// and a Reporter that counts every hit of a limit and logs it, at most once
// per interval per limit, so a flood cannot flood the journal.
package limit

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Observer counts limit hits; pkg/metrics implements it
// (headscale_limit_hits_total{limit}).
type Observer interface {
	LimitHit(limit string)
}

// LogEvery is how often at most a Reporter logs the hits of one limit.
const LogEvery = 10 * time.Second

// Reporter counts hits of protective limits through an Observer and logs
// them at warning level with the key "limit": the first hit at once, then at
// most one line per LogEvery per limit, which says how many hits the quiet
// interval had ("suppressed"). Limit names are fixed strings, so its memory
// is bounded. A nil *Reporter does nothing.
type Reporter struct {
	obs Observer
	log *slog.Logger
	key string // the log key naming what was hit: "limit"
	now func() time.Time

	mu   sync.Mutex
	last map[string]*logged
}

type logged struct {
	at         time.Time
	suppressed int
}

// NewReporter returns a Reporter; a nil obs or log is allowed.
func NewReporter(obs Observer, log *slog.Logger) *Reporter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reporter{obs: obs, log: log, key: "limit", now: time.Now, last: make(map[string]*logged)}
}

// NewSampler returns a Reporter that only logs, under key instead of
// "limit": for warnings anyone can trigger at will (a refused
// registration), so that a flood of them writes one line per LogEvery
// per value.
func NewSampler(log *slog.Logger, key string) *Reporter {
	r := NewReporter(nil, log)
	r.key = key
	return r
}

// Hit counts one hit of limit and logs msg with attrs (slog key/value
// pairs) unless a line for limit was written less than LogEvery ago.
func (r *Reporter) Hit(limit, msg string, attrs ...any) {
	if r == nil {
		return
	}
	if r.obs != nil {
		r.obs.LimitHit(limit)
	}
	now := r.now()
	r.mu.Lock()
	l := r.last[limit]
	if l == nil {
		l = &logged{}
		r.last[limit] = l
	} else if now.Sub(l.at) < LogEvery {
		l.suppressed++
		r.mu.Unlock()
		return
	}
	suppressed := l.suppressed
	l.at, l.suppressed = now, 0
	r.mu.Unlock()
	r.log.Warn(msg, append([]any{r.key, limit, "suppressed", suppressed}, attrs...)...)
}

// Gate bounds work in progress: at most n callers hold it at once; up to
// maxWaiting more wait at most wait for a slot, and the rest are refused at
// once, so a flood can neither run more than n at a time nor pile up
// waiting goroutines.
type Gate struct {
	slots      chan struct{}
	waiting    atomic.Int64
	maxWaiting int64
	wait       time.Duration
}

// NewGate returns a Gate of n slots (at least 1).
func NewGate(n, maxWaiting int, wait time.Duration) *Gate {
	return &Gate{slots: make(chan struct{}, max(n, 1)), maxWaiting: int64(maxWaiting), wait: wait}
}

// TryAcquire takes a slot if one is free at once.
func (g *Gate) TryAcquire() bool {
	select {
	case g.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// Acquire takes a slot, waiting for one at most the gate's wait (or until
// ctx ends) if there is room among the waiters. It reports whether it got
// one; a caller that did must Release it.
func (g *Gate) Acquire(ctx context.Context) bool {
	if g.TryAcquire() {
		return true
	}
	if g.waiting.Add(1) > g.maxWaiting {
		g.waiting.Add(-1)
		return false
	}
	defer g.waiting.Add(-1)
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// Release returns a slot taken by Acquire or TryAcquire.
func (g *Gate) Release() { <-g.slots }

// InUse is the number of slots held.
func (g *Gate) InUse() int { return len(g.slots) }

// Cap is the number of slots.
func (g *Gate) Cap() int { return cap(g.slots) }
