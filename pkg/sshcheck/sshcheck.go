// Package sshcheck keeps the SSH "check" approvals the control server is
// waiting for. When a connection matches a policy SSH rule with
// "action": "check", the destination node asks the control server for a
// verdict; the server opens a pending check under a random auth ID, an
// admin approves or rejects it (headscale auth approve|reject --auth-id),
// and the destination's follow-up request, blocked in Wait, gets the
// answer. An approval is remembered per (source node, destination node) so
// that later connections within the rule's check period are accepted at
// once.
//
// Everything is in memory: a restart forgets pending checks and earlier
// approvals, so the next connection is checked again. With several servers
// serving one tailnet (Share) checks and approvals are kept in the store
// as well, so that any server, including one started later, can show,
// decide or answer them (shared.go).
package sshcheck

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"github.com/hsctl/headscale/pkg/authrows"
	"github.com/hsctl/headscale/pkg/ids"
)

// DefaultTimeout is how long a pending check waits for an admin before it
// expires and the connection is rejected.
const DefaultTimeout = 5 * time.Minute

// DefaultPeriod is how long an approval is remembered when the policy rule
// sets no checkPeriod (Tailscale's and Headscale's default).
const DefaultPeriod = 12 * time.Hour

// MaxPeriod is the longest checkPeriod a policy may set; approvals older
// than this are forgotten.
const MaxPeriod = 7 * 24 * time.Hour

// MaxPending bounds the pending checks kept at once, and MaxPendingPerDst
// those one destination node may have open, so that a node asking in a
// loop cannot exhaust memory or crowd out the others.
const (
	MaxPending       = 4096
	MaxPendingPerDst = 64
)

// decidedGrace is how long a decided or expired check is kept, so that a
// destination retrying its follow-up request still learns the verdict.
const decidedGrace = time.Minute

// IDPrefix starts every auth ID, so admins can tell SSH checks apart from
// other identifiers in logs and shell history.
const IDPrefix = "sshcheck-"

// Verdict is the state of a check.
type Verdict int

// The verdicts: a check starts Pending and ends Approved, Rejected or, when
// nobody decided in time, Expired.
const (
	Pending Verdict = iota
	Approved
	Rejected
	Expired
)

// String implements fmt.Stringer.
func (v Verdict) String() string {
	switch v {
	case Pending:
		return "pending"
	case Approved:
		return "approved"
	case Rejected:
		return "rejected"
	case Expired:
		return "expired"
	}
	return "unknown"
}

// Errors returned by Registry methods.
var (
	// ErrNotFound means no check has this auth ID: it never existed,
	// expired, or was forgotten (a restart, or its verdict is old).
	ErrNotFound = errors.New("no pending SSH check with this auth ID (unknown, expired or already finished)")
	// ErrDecided means the check was already approved or rejected.
	ErrDecided = errors.New("SSH check already decided")
	// ErrTooMany means too many checks are pending.
	ErrTooMany = errors.New("too many pending SSH checks")
)

// Check is one pending or decided SSH check.
type Check struct {
	ID        string     // auth ID: random, unguessable
	Src       ids.NodeID // source node ID (where the SSH client runs)
	Dst       ids.NodeID // destination node ID (the SSH server, who asked)
	LocalUser string     // the local account on Dst
	Created   time.Time  // when the check was opened
	Expires   time.Time  // when it expires if nobody decides
	Verdict   Verdict
	Decided   time.Time // when the verdict was reached; zero while pending
}

type entry struct {
	c    Check
	done chan struct{} // closed when the verdict is reached
}

type pair struct{ src, dst ids.NodeID }

// Registry holds pending checks and remembered approvals. It is safe for
// concurrent use.
type Registry struct {
	now     func() time.Time
	timeout time.Duration

	mu       sync.Mutex
	checks   map[string]*entry
	perDst   map[ids.NodeID]int // pending checks by destination
	approved map[pair]time.Time // last approval by (src, dst)

	// shared, when set (Share), also keeps checks in the store for the
	// other servers of the tailnet; decided holds verdicts other servers
	// reached on checks not held here.
	shared  *authrows.Kind[sharedData]
	decided map[string]decided
}

// New returns an empty Registry. now is the clock (nil: time.Now); a
// pending check expires timeout after it opens (0: DefaultTimeout).
func New(now func() time.Time, timeout time.Duration) *Registry {
	if now == nil {
		now = time.Now
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Registry{
		now:      now,
		timeout:  timeout,
		checks:   map[string]*entry{},
		perDst:   map[ids.NodeID]int{},
		approved: map[pair]time.Time{},
	}
}

// Timeout is how long a pending check waits for a verdict.
func (r *Registry) Timeout() time.Duration { return r.timeout }

// newID returns a fresh auth ID with 128 random bits.
func newID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return IDPrefix + hex.EncodeToString(b[:])
}

// Begin opens a pending check for a connection from node src to node dst
// as localUser.
func (r *Registry) Begin(src, dst ids.NodeID, localUser string) (Check, error) {
	c, err := r.begin(src, dst, localUser)
	if err != nil || r.shared == nil {
		return c, err
	}
	if err := r.put(c); err != nil {
		r.mu.Lock()
		if e := r.checks[c.ID]; e != nil {
			r.finishLocked(e, Expired, r.now())
			delete(r.checks, c.ID)
		}
		r.mu.Unlock()
		return Check{}, err
	}
	return c, nil
}

// begin opens the check in memory.
func (r *Registry) begin(src, dst ids.NodeID, localUser string) (Check, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	r.sweepLocked(now)
	if len(r.checks) >= MaxPending || r.perDst[dst] >= MaxPendingPerDst {
		return Check{}, ErrTooMany
	}
	id := newID()
	for r.checks[id] != nil {
		id = newID()
	}
	e := &entry{
		c:    Check{ID: id, Src: src, Dst: dst, LocalUser: localUser, Created: now, Expires: now.Add(r.timeout)},
		done: make(chan struct{}),
	}
	r.checks[id] = e
	r.perDst[dst]++
	return e.c, nil
}

// Get returns the check with auth ID id, pending or recently decided.
// Shared (Share), a check this server does not hold is read from the
// store.
func (r *Registry) Get(id string) (Check, bool) {
	r.mu.Lock()
	e := r.lookupLocked(id, r.now())
	var c Check
	if e != nil {
		c = e.c
	}
	r.mu.Unlock()
	if e != nil {
		return c, true
	}
	if r.shared == nil {
		return Check{}, false
	}
	c, err := r.getShared(id)
	return c, err == nil
}

// Approve approves the pending check id: its waiters return Approved and
// the (source, destination) pair is remembered as approved now.
func (r *Registry) Approve(id string) (Check, error) { return r.decide(id, Approved) }

// Reject rejects the pending check id: its waiters return Rejected.
func (r *Registry) Reject(id string) (Check, error) { return r.decide(id, Rejected) }

func (r *Registry) decide(id string, v Verdict) (Check, error) {
	if r.shared != nil {
		return r.decideShared(id, v)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	e := r.lookupLocked(id, now)
	switch {
	case e == nil || e.c.Verdict == Expired:
		return Check{}, ErrNotFound
	case e.c.Verdict != Pending:
		return e.c, ErrDecided
	}
	r.finishLocked(e, v, now)
	if v == Approved {
		r.approved[pair{e.c.Src, e.c.Dst}] = now
	}
	return e.c, nil
}

// Wait blocks until check id is decided or expires, or ctx ends, and
// returns the check with its verdict (Approved, Rejected or Expired).
func (r *Registry) Wait(ctx context.Context, id string) (Check, error) {
	r.mu.Lock()
	e := r.lookupLocked(id, r.now())
	r.mu.Unlock()
	if e == nil && r.shared != nil {
		// Opened on another server of the tailnet: wait on a copy.
		var err error
		if e, err = r.adopt(id); err != nil {
			return Check{}, err
		}
	}
	if e == nil {
		return Check{}, ErrNotFound
	}
	r.mu.Lock()
	left := e.c.Expires.Sub(r.now())
	r.mu.Unlock()

	t := time.NewTimer(left)
	defer t.Stop()
	select {
	case <-e.done:
	case <-t.C:
		r.mu.Lock()
		if e.c.Verdict == Pending {
			r.finishLocked(e, Expired, e.c.Expires)
		}
		r.mu.Unlock()
	case <-ctx.Done():
		return Check{}, ctx.Err()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return e.c, nil
}

// ApprovedWithin reports whether a check from src to dst was approved less
// than period ago. A period of 0 (checkPeriod "always") never matches.
func (r *Registry) ApprovedWithin(src, dst ids.NodeID, period time.Duration) bool {
	if period <= 0 {
		return false
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.approved[pair{src, dst}]
	if !ok {
		return false
	}
	now := r.now()
	if now.Sub(at) >= MaxPeriod {
		delete(r.approved, pair{src, dst})
		return false
	}
	return now.Sub(at) < period
}

// lookupLocked returns check id, expiring it first when its time is up;
// nil when there is no such check (or it is past its grace period).
func (r *Registry) lookupLocked(id string, now time.Time) *entry {
	e := r.checks[id]
	if e == nil {
		return nil
	}
	if e.c.Verdict == Pending && !now.Before(e.c.Expires) {
		r.finishLocked(e, Expired, e.c.Expires)
	}
	if e.c.Verdict != Pending && now.Sub(e.c.Decided) >= decidedGrace {
		delete(r.checks, id)
		return nil
	}
	return e
}

// finishLocked sets a pending check's verdict and wakes its waiters.
func (r *Registry) finishLocked(e *entry, v Verdict, now time.Time) {
	e.c.Verdict, e.c.Decided = v, now
	close(e.done)
	if r.perDst[e.c.Dst]--; r.perDst[e.c.Dst] <= 0 {
		delete(r.perDst, e.c.Dst)
	}
}

// sweepLocked expires overdue checks, drops old verdicts and forgets
// approvals older than MaxPeriod.
func (r *Registry) sweepLocked(now time.Time) {
	for id := range r.checks {
		r.lookupLocked(id, now)
	}
	for p, at := range r.approved {
		if now.Sub(at) >= MaxPeriod {
			delete(r.approved, p)
		}
	}
}

// LogID is what logs name check id by: a fingerprint of it (its first
// eight hex digits of SHA-256), so that the log shows which lines belong
// together without handing out the auth ID, which opens the approval
// page.
func LogID(id string) string {
	h := sha256.Sum256([]byte(id))
	return hex.EncodeToString(h[:4])
}
