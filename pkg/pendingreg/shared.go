package pendingreg

// Registrations shared by the servers of one tailnet (cluster.enabled,
// Share). Behind a load balancer the client's first request, its
// follow-up, the browser's register page and the admin's approval may
// each reach a different server, so every registration is also a row of
// the store's auth_requests:
//
//   - Begin writes the row beside the in-memory entry.
//   - Get (the register page, the API) and Wait (the client's follow-up)
//     on a server that does not hold the registration read the row; Wait
//     then holds a copy in memory and waits on it as on its own.
//   - Complete and Reject claim the row first (one decision for the whole
//     tailnet: ErrBusy and ErrDone as on one server), register the node
//     on the deciding server (registrations across servers are serialised
//     by the state's registration lock), and store the decision with a
//     change-log record.
//   - Decided is called by the cluster's follower for every decision
//     another server stored: a waiting client here is answered with the
//     node, which the follower applied before (its record precedes the
//     decision's).
//
// Without Share nothing of this runs: a single server keeps today's
// in-memory path.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hsctl/headscale/pkg/authrows"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// AuthKind is the store's auth_requests kind of registrations.
const AuthKind = "registration"

// claimHold is how long a server may take to register a node it claimed
// before another server may claim the registration again (should it
// have died meanwhile).
const claimHold = time.Minute

// sharedData is what a registration's row holds.
type sharedData struct {
	Machine  key.MachinePublic         `json:"machine"`
	NodeKey  key.NodePublic            `json:"node_key"`
	Hostinfo *tailcfg.Hostinfo         `json:"hostinfo,omitempty"`
	Expiry   time.Time                 `json:"expiry,omitzero"`
	Tags     []string                  `json:"tags,omitempty"`
	Cap      tailcfg.CapabilityVersion `json:"cap,omitempty"`
}

// sharedOutcome is a decision's outcome.
type sharedOutcome struct {
	Node   ids.NodeID `json:"node,omitempty"`
	Reason string     `json:"reason,omitempty"`
}

// decision is one learned from another server for a registration this
// server held no copy of (yet).
type decision struct {
	status Status
	out    sharedOutcome
	at     time.Time
}

// Share makes g keep its registrations in st as well, for the other
// servers of the tailnet (st must have the change log on). Call it before
// g is used, and wire Decided to the cluster's follower.
//
// catchUp applies every change another server committed before it was
// called (the cluster's catch-up): a client waiting here on a registration
// another server completed is answered only once its node is here.
func (g *Registry) Share(st *store.Store, catchUp func(context.Context) error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shared = &authrows.Kind[sharedData]{Store: st, Name: AuthKind, What: "registration"}
	g.catchUp = catchUp
	g.decided = map[string]decision{}
}

// Decided tells g of a decision another server stored (a
// store.KindAuthDecided record); records of other kinds are ignored. A
// client waiting here on the registration is answered.
func (g *Registry) Decided(d store.AuthDecision) {
	if d.Kind != AuthKind {
		return
	}
	var s Status
	switch d.Status {
	case Completed.String():
		s = Completed
	case Rejected.String():
		s = Rejected
	default:
		return
	}
	out, _ := authrows.Outcome[sharedOutcome](d.Outcome) // a bad outcome leaves it zero: the waiter starts over
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.decided == nil {
		return
	}
	now := g.now()
	if e := g.regs[d.ID]; e != nil {
		if e.r.Status == Pending {
			e.r.Node = out.Node
			g.finishLocked(e, s, out.Reason, now)
		}
		return
	}
	for id, old := range g.decided {
		if now.Sub(old.at) >= doneGrace {
			delete(g.decided, id)
		}
	}
	if len(g.decided) < MaxPending {
		g.decided[d.ID] = decision{status: s, out: out, at: now}
	}
}

// put writes r's row.
func (g *Registry) put(r Registration) error {
	ctx, cancel := authrows.Context()
	defer cancel()
	return g.shared.Put(ctx, r.ID, sharedData{Machine: r.Machine, NodeKey: r.NodeKey, Hostinfo: r.Hostinfo,
		Expiry: r.Expiry, Tags: r.Tags, Cap: r.Cap}, r.Created, r.Expires)
}

// fromRow turns a row into a registration, its status as of now.
func fromRow(row authrows.Row[sharedData], now time.Time) (Registration, error) {
	d := row.Value
	r := Registration{ID: row.ID, Machine: d.Machine, NodeKey: d.NodeKey, Hostinfo: d.Hostinfo, Expiry: d.Expiry,
		Tags: d.Tags, Cap: d.Cap, Created: row.CreatedAt, Expires: row.ExpiresAt}
	out, err := authrows.Outcome[sharedOutcome](row.Outcome)
	if err != nil {
		return Registration{}, fmt.Errorf("registration %s: %w", row.ID, err)
	}
	switch row.Status {
	case store.AuthPending:
		if !now.Before(r.Expires) {
			r.Status = Expired
		}
	case Completed.String():
		r.Status, r.Node = Completed, out.Node
	case Rejected.String():
		r.Status, r.Reason = Rejected, out.Reason
	default:
		return Registration{}, fmt.Errorf("registration %s: unknown status %q", row.ID, row.Status)
	}
	return r, nil
}

// getShared reads registration id's row.
func (g *Registry) getShared(id string) (Registration, error) {
	ctx, cancel := authrows.Context()
	defer cancel()
	row, err := g.shared.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Registration{}, ErrNotFound
	}
	if err != nil {
		return Registration{}, err
	}
	return fromRow(row, g.now())
}

// adopt returns the entry of registration id, reading it from the store
// when this server holds none: a client waits here on a registration
// another server began.
func (g *Registry) adopt(id string) (*entry, error) {
	r, err := g.getShared(id)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	now := g.now()
	if e := g.lookupLocked(id, now); e != nil {
		return e, nil
	}
	e := &entry{r: r, done: make(chan struct{})}
	if d, ok := g.decided[id]; ok && r.Status == Pending {
		// Decided after the read, and learned before this lock.
		r.Status, r.Node, r.Reason = d.status, d.out.Node, d.out.Reason
		e.r = r
	}
	if r.Status == Completed && g.catchUp != nil {
		// Completed by another server before this read: its node's
		// record precedes the decision's, apply it first.
		g.mu.Unlock()
		ctx, cancel := authrows.Context()
		err := g.catchUp(ctx)
		cancel()
		g.mu.Lock()
		if err != nil {
			return nil, fmt.Errorf("catching up with the server that completed the registration: %w", err)
		}
		if e := g.lookupLocked(id, g.now()); e != nil {
			return e, nil
		}
	}
	g.regs[id] = e
	if r.Status != Pending {
		e.finished = now
		close(e.done)
		return e, nil
	}
	g.perMachine[r.Machine] = append(g.perMachine[r.Machine], id)
	return e, nil
}

// decideShared claims registration id in the store, runs decide with it
// (which returns the outcome to store, or an error to release the claim
// with), stores the decision and finishes this server's copy, if any.
func (g *Registry) decideShared(id string, status Status, decide func(Registration) (sharedOutcome, error)) (Registration, error) {
	g.mu.Lock()
	e := g.lookupLocked(id, g.now())
	if e != nil {
		// This server's copy answers what it can without the database.
		if _, err := g.claimLocked(id); err != nil {
			g.mu.Unlock()
			return Registration{}, err
		}
		e.completing = true
	}
	g.mu.Unlock()
	unmark := func() {
		if e == nil {
			return
		}
		g.mu.Lock()
		e.completing = false
		if e.r.Status == Pending && !g.now().Before(e.r.Expires) {
			g.finishLocked(e, Expired, "", e.r.Expires)
		}
		g.mu.Unlock()
	}

	ctx, cancel := authrows.Context()
	defer cancel()
	row, err := g.shared.Claim(ctx, id, g.now(), claimHold)
	switch {
	case errors.Is(err, store.ErrNotFound):
		err = ErrNotFound
	case errors.Is(err, store.ErrAuthDecided):
		err = ErrDone
	case errors.Is(err, store.ErrAuthBusy):
		err = ErrBusy
	}
	var r Registration
	if err == nil {
		r, err = fromRow(row, g.now())
	}
	if err != nil {
		unmark()
		return Registration{}, err
	}

	out, err := decide(r)
	if err != nil {
		if rerr := g.shared.Release(ctx, id); rerr != nil {
			err = errors.Join(err, rerr)
		}
		unmark()
		return r, err
	}
	err = g.shared.Decide(ctx, id, status.String(), out, time.Time{})
	r.Status, r.Node, r.Reason = status, out.Node, out.Reason
	if e != nil {
		g.mu.Lock()
		e.completing = false
		e.r.Node = out.Node
		g.finishLocked(e, status, out.Reason, g.now())
		g.mu.Unlock()
	}
	if err != nil {
		// The node is registered, but a client waiting on another
		// server is not told: it asks again after its wait times out.
		return r, fmt.Errorf("telling the other servers: %w", err)
	}
	return r, nil
}
