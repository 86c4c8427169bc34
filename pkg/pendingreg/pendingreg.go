// Package pendingreg keeps the interactive registrations the control
// server is waiting for: a client that ran `tailscale up` without a
// pre-auth key gets an AuthURL <server_url>/register/<auth-id>, and its
// follow-up request waits (Wait) until the registration is completed for a
// user (Complete: `headscale nodes register`, `headscale auth register`,
// the REST and gRPC calls, or an OIDC login), rejected (Reject), or
// expires.
//
// Auth IDs have Headscale's form (hskey-authreq- and 24 hex digits from
// crypto/rand), are single use and expire DefaultTTL (15 minutes, as in
// Headscale) after they are handed out. Everything is in memory, as in
// Headscale: a restart forgets pending registrations, and a waiting client
// is given a new URL when it asks again. With several servers serving one
// tailnet (Share) registrations are kept in the store as well, so that any
// server can show, decide or answer them (shared.go).
package pendingreg

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hsctl/headscale/pkg/authrows"
	"github.com/hsctl/headscale/pkg/ids"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// DefaultTTL is how long an auth ID waits for approval (Headscale's 15
// minutes).
const DefaultTTL = 15 * time.Minute

// IDPrefix starts every auth ID (as in Headscale 0.29); 24 hex digits
// (96 random bits) follow.
const IDPrefix = "hskey-authreq-"

// IDLength is the length of an auth ID.
const IDLength = len(IDPrefix) + 24

// MaxPending bounds the registrations waiting at once, and
// MaxPendingPerMachine those of one machine key (each `tailscale up`
// without a key opens one), so that clients asking in a loop cannot
// exhaust memory: a machine's oldest registration makes room for its
// newest.
const (
	MaxPending           = 4096
	MaxPendingPerMachine = 8
)

// doneGrace is how long a finished registration is kept, so that a client
// retrying its follow-up request, or the register page, still learns the
// outcome.
const doneGrace = time.Minute

// Status is where a registration stands.
type Status int

// A registration starts Pending and ends Completed (a node registered for
// a user), Rejected, or Expired.
const (
	Pending Status = iota
	Completed
	Rejected
	Expired
)

// String implements fmt.Stringer.
func (s Status) String() string {
	switch s {
	case Pending:
		return "pending"
	case Completed:
		return "completed"
	case Rejected:
		return "rejected"
	case Expired:
		return "expired"
	}
	return "unknown"
}

// Errors returned by Registry methods.
var (
	// ErrNotFound means no registration waits under this auth ID: it
	// never existed, expired, or was forgotten by a restart.
	ErrNotFound = errors.New("no pending registration with this auth ID (unknown, expired, or forgotten by a server restart)")
	// ErrDone means the registration was already completed or rejected:
	// auth IDs are single use.
	ErrDone = errors.New("registration already completed or rejected (auth IDs are single use)")
	// ErrBusy means another completion of the same registration is in
	// progress.
	ErrBusy = errors.New("registration is being completed by another request")
	// ErrTooMany means too many registrations are pending.
	ErrTooMany = errors.New("too many pending registrations")
)

// Registration is what a client without a pre-auth key sent, and where
// its registration stands.
type Registration struct {
	ID       string // auth ID: random, unguessable, single use
	Machine  key.MachinePublic
	NodeKey  key.NodePublic
	Hostinfo *tailcfg.Hostinfo // treat as read-only
	// Expiry the client asked for (zero: the server's node.expiry).
	Expiry time.Time
	// Tags the client advertises (Hostinfo.RequestTags, sorted).
	Tags    []string
	Cap     tailcfg.CapabilityVersion
	Created time.Time
	Expires time.Time // when it expires if nobody completes it

	Status Status
	Node   ids.NodeID // the node registered, once Completed
	Reason string     // why, once Rejected
}

// Hostname is the host name the client reported ("" if none).
func (r Registration) Hostname() string {
	if r.Hostinfo == nil {
		return ""
	}
	return r.Hostinfo.Hostname
}

type entry struct {
	r          Registration
	completing bool          // a Complete call is registering the node
	done       chan struct{} // closed when Status leaves Pending
	finished   time.Time
}

// Registry holds pending registrations. It is safe for concurrent use.
type Registry struct {
	now func() time.Time
	ttl time.Duration

	mu         sync.Mutex
	regs       map[string]*entry
	perMachine map[key.MachinePublic][]string // pending IDs, oldest first

	// shared, when set (Share), also keeps registrations in the store
	// for the other servers of the tailnet; decided holds decisions
	// other servers made on registrations not held here.
	shared  *authrows.Kind[sharedData]
	catchUp func(context.Context) error
	decided map[string]decision
}

// New returns an empty Registry. now is the clock (nil: time.Now); a
// registration expires ttl after it is handed out (0: DefaultTTL).
func New(now func() time.Time, ttl time.Duration) *Registry {
	if now == nil {
		now = time.Now
	}
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	return &Registry{now: now, ttl: ttl, regs: map[string]*entry{}, perMachine: map[key.MachinePublic][]string{}}
}

// TTL is how long a registration waits for approval.
func (g *Registry) TTL() time.Duration { return g.ttl }

// NewID returns a fresh auth ID: IDPrefix and 96 random bits in hex.
func NewID() string {
	var b [12]byte
	rand.Read(b[:]) // never fails (crypto/rand panics instead)
	return IDPrefix + hex.EncodeToString(b[:])
}

// ValidID reports whether id has the form of an auth ID.
func ValidID(id string) bool {
	rest, ok := strings.CutPrefix(id, IDPrefix)
	if !ok || len(id) != IDLength {
		return false
	}
	_, err := hex.DecodeString(rest)
	return err == nil
}

// Begin opens a pending registration for what the client sent (ID,
// Created, Expires, Status and Tags are filled in) and returns it.
func (g *Registry) Begin(r Registration) (Registration, error) {
	r, err := g.begin(r)
	if err != nil || g.shared == nil {
		return r, err
	}
	if err := g.put(r); err != nil {
		g.mu.Lock()
		if e := g.regs[r.ID]; e != nil {
			g.finishLocked(e, Expired, "", g.now())
			delete(g.regs, r.ID)
		}
		g.mu.Unlock()
		return Registration{}, err
	}
	return r, nil
}

// begin opens the registration in memory.
func (g *Registry) begin(r Registration) (Registration, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	g.sweepLocked(now)
	if open := g.perMachine[r.Machine]; len(open) >= MaxPendingPerMachine {
		// The machine asked again: its oldest registration makes room.
		g.finishLocked(g.regs[open[0]], Expired, "", now)
	}
	if len(g.perMachine[r.Machine]) == 0 && g.pendingLocked() >= MaxPending {
		return Registration{}, ErrTooMany
	}
	id := NewID()
	for g.regs[id] != nil {
		id = NewID()
	}
	r.ID, r.Created, r.Expires, r.Status, r.Node, r.Reason = id, now, now.Add(g.ttl), Pending, 0, ""
	r.Tags = nil
	if r.Hostinfo != nil && len(r.Hostinfo.RequestTags) > 0 {
		r.Tags = slices.Compact(slices.Sorted(slices.Values(r.Hostinfo.RequestTags)))
	}
	g.regs[id] = &entry{r: r, done: make(chan struct{})}
	g.perMachine[r.Machine] = append(g.perMachine[r.Machine], id)
	return r, nil
}

// Get returns the registration with auth ID id, pending or recently
// finished. Shared (Share), a registration this server does not hold is
// read from the store.
func (g *Registry) Get(id string) (Registration, bool) {
	g.mu.Lock()
	e := g.lookupLocked(id, g.now())
	var r Registration
	if e != nil {
		r = e.r
	}
	g.mu.Unlock()
	if e != nil {
		return r, true
	}
	if g.shared == nil {
		return Registration{}, false
	}
	r, err := g.getShared(id)
	return r, err == nil
}

// Complete completes the pending registration id: register (which writes
// the node, e.g. with state.State.RegisterInteractive) is called once with
// the registration, and when it succeeds the registration is Completed with
// the node it returned and its waiters wake up. When register fails the
// registration stays pending (an admin may retry, say with another user)
// and its error is returned. An unknown or expired id gives ErrNotFound, a
// completed or rejected one ErrDone, one being completed ErrBusy.
func (g *Registry) Complete(id string, register func(Registration) (ids.NodeID, error)) (Registration, error) {
	if g.shared != nil {
		return g.decideShared(id, Completed, func(r Registration) (sharedOutcome, error) {
			node, err := register(r)
			return sharedOutcome{Node: node}, err
		})
	}
	g.mu.Lock()
	e, err := g.claimLocked(id)
	if err != nil {
		g.mu.Unlock()
		return Registration{}, err
	}
	e.completing = true
	r := e.r
	g.mu.Unlock()

	node, regErr := register(r)

	g.mu.Lock()
	defer g.mu.Unlock()
	e.completing = false
	now := g.now()
	if regErr != nil {
		if !now.Before(e.r.Expires) {
			g.finishLocked(e, Expired, "", e.r.Expires)
		}
		return e.r, regErr
	}
	e.r.Node = node
	g.finishLocked(e, Completed, "", now)
	return e.r, nil
}

// Reject rejects the pending registration id with reason: its waiters
// return Rejected and the client is told reason.
func (g *Registry) Reject(id, reason string) (Registration, error) {
	if g.shared != nil {
		return g.decideShared(id, Rejected, func(Registration) (sharedOutcome, error) {
			return sharedOutcome{Reason: reason}, nil
		})
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	e, err := g.claimLocked(id)
	if err != nil {
		return Registration{}, err
	}
	g.finishLocked(e, Rejected, reason, g.now())
	return e.r, nil
}

// claimLocked returns the pending registration id that may be decided.
func (g *Registry) claimLocked(id string) (*entry, error) {
	e := g.lookupLocked(id, g.now())
	switch {
	case e == nil || e.r.Status == Expired:
		return nil, ErrNotFound
	case e.r.Status != Pending:
		return nil, ErrDone
	case e.completing:
		return nil, ErrBusy
	}
	return e, nil
}

// Wait blocks until registration id is completed, rejected or expires, or
// ctx ends, and returns it with its Status (Completed, Rejected or
// Expired). An unknown id gives ErrNotFound at once.
func (g *Registry) Wait(ctx context.Context, id string) (Registration, error) {
	g.mu.Lock()
	e := g.lookupLocked(id, g.now())
	g.mu.Unlock()
	if e == nil && g.shared != nil {
		// Begun on another server of the tailnet: wait on a copy.
		var err error
		if e, err = g.adopt(id); err != nil {
			return Registration{}, err
		}
	}
	if e == nil {
		return Registration{}, ErrNotFound
	}
	g.mu.Lock()
	left := e.r.Expires.Sub(g.now())
	g.mu.Unlock()

	t := time.NewTimer(left)
	defer t.Stop()
	for {
		select {
		case <-e.done:
		case <-ctx.Done():
			return Registration{}, fmt.Errorf("waiting for registration: %w", ctx.Err())
		case <-t.C:
			g.mu.Lock()
			if e.r.Status == Pending && !e.completing {
				g.finishLocked(e, Expired, "", e.r.Expires)
			}
			g.mu.Unlock()
			// Being completed: the outcome follows shortly on done.
		}
		g.mu.Lock()
		r, finished := e.r, e.r.Status != Pending
		g.mu.Unlock()
		if finished {
			return r, nil
		}
	}
}

// lookupLocked returns registration id, expiring it first when its time is
// up; nil when there is none (or it finished more than doneGrace ago).
func (g *Registry) lookupLocked(id string, now time.Time) *entry {
	e := g.regs[id]
	if e == nil {
		return nil
	}
	if e.r.Status == Pending && !e.completing && !now.Before(e.r.Expires) {
		g.finishLocked(e, Expired, "", e.r.Expires)
	}
	if e.r.Status != Pending && now.Sub(e.finished) >= doneGrace {
		delete(g.regs, id)
		return nil
	}
	return e
}

// finishLocked ends a pending registration and wakes its waiters.
func (g *Registry) finishLocked(e *entry, s Status, reason string, at time.Time) {
	if e.r.Status != Pending {
		return
	}
	e.r.Status, e.r.Reason, e.finished = s, reason, at
	close(e.done)
	m := e.r.Machine
	g.perMachine[m] = slices.DeleteFunc(g.perMachine[m], func(id string) bool { return id == e.r.ID })
	if len(g.perMachine[m]) == 0 {
		delete(g.perMachine, m)
	}
}

// pendingLocked counts pending registrations.
func (g *Registry) pendingLocked() int {
	n := 0
	for _, open := range g.perMachine {
		n += len(open)
	}
	return n
}

// sweepLocked expires overdue registrations and drops old outcomes.
func (g *Registry) sweepLocked(now time.Time) {
	for id := range g.regs {
		g.lookupLocked(id, now)
	}
}
