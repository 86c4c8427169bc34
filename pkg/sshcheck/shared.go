package sshcheck

// Checks shared by the servers of one tailnet (cluster.enabled, Share).
// Behind a load balancer the destination's follow-up request, the admin's
// `auth approve` and the owner's login may each reach a different server,
// so every check is also a row of the store's auth_requests: Begin writes
// it, Get and Wait on a server that does not hold the check read it (Wait
// then waits on a copy), Approve and Reject claim the row and store the
// verdict with a change-log record, and Decided, called by the cluster's
// follower for every verdict another server stored, answers the waiting
// destination here and remembers an approval for the pair on every
// server. An approval's row is kept for MaxPeriod, so that a server that
// starts later learns it too (Share). Without Share a single server keeps
// today's in-memory path.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hsctl/headscale/pkg/authrows"
	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/store"
)

// AuthKind is the store's auth_requests kind of SSH checks.
const AuthKind = "ssh_check"

// claimHold is how long a claim of a check's row keeps other servers out
// (a verdict is stored right after the claim).
const claimHold = 30 * time.Second

// sharedData is what a check's row and its verdict's outcome hold (At,
// when the verdict was reached by the deciding server's clock, in the
// outcome only).
type sharedData struct {
	Src       ids.NodeID `json:"src"`
	Dst       ids.NodeID `json:"dst"`
	LocalUser string     `json:"local_user,omitempty"`
	At        time.Time  `json:"at,omitzero"`
}

// Share makes r keep its checks in st as well, for the other servers of
// the tailnet (st must have the change log on), and remember the
// approvals they stored within MaxPeriod. Call it before r is used, after
// the cluster's snapshot was taken (later approvals come through the
// follower), and wire Decided to the cluster's follower.
func (r *Registry) Share(ctx context.Context, st *store.Store) error {
	rows, err := st.DecidedAuthRequests(ctx, AuthKind, Approved.String())
	if err != nil {
		return fmt.Errorf("reading the tailnet's SSH check approvals: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.shared = &authrows.Kind[sharedData]{Store: st, Name: AuthKind, What: "SSH check"}
	r.decided = map[string]decided{}
	for _, row := range rows {
		if out, err := authrows.Outcome[sharedData](row.Outcome); err == nil {
			r.rememberLocked(out, r.now()) // an outcome that cannot be read approves nothing
		}
	}
	return nil
}

// rememberLocked remembers the approval an outcome stores for its pair,
// as of its time (now when it has none, or one in the future: another
// server's clock), unless the pair holds a later one.
func (r *Registry) rememberLocked(out sharedData, now time.Time) {
	if out.Src == 0 || out.Dst == 0 {
		return
	}
	at := out.At
	if at.IsZero() || at.After(now) {
		at = now
	}
	if now.Sub(at) >= MaxPeriod {
		return
	}
	p := pair{out.Src, out.Dst}
	if old, ok := r.approved[p]; !ok || old.Before(at) {
		r.approved[p] = at
	}
}

// decided is a verdict learned from another server for a check this
// server held no copy of (yet).
type decided struct {
	v  Verdict
	at time.Time
}

// Decided tells r of a verdict another server stored (a
// store.KindAuthDecided record); records of other kinds are ignored. A
// destination waiting here on the check is answered, and an approval is
// remembered for the pair.
func (r *Registry) Decided(d store.AuthDecision) {
	if d.Kind != AuthKind {
		return
	}
	v := verdictOf(d.Status)
	if v != Approved && v != Rejected {
		return
	}
	out, _ := authrows.Outcome[sharedData](d.Outcome) // a bad outcome remembers no approval
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if e := r.checks[d.ID]; e != nil {
		if e.c.Verdict == Pending {
			r.finishLocked(e, v, now)
		}
	} else if r.decided != nil {
		for id, old := range r.decided {
			if now.Sub(old.at) >= decidedGrace {
				delete(r.decided, id)
			}
		}
		if len(r.decided) < MaxPending {
			r.decided[d.ID] = decided{v: v, at: now}
		}
	}
	if v == Approved {
		r.rememberLocked(out, now)
	}
}

// verdictOf parses a verdict's String.
func verdictOf(s string) Verdict {
	for _, v := range []Verdict{Pending, Approved, Rejected, Expired} {
		if v.String() == s {
			return v
		}
	}
	return Verdict(-1)
}

// put writes c's row.
func (r *Registry) put(c Check) error {
	ctx, cancel := authrows.Context()
	defer cancel()
	return r.shared.Put(ctx, c.ID, sharedData{Src: c.Src, Dst: c.Dst, LocalUser: c.LocalUser}, c.Created, c.Expires)
}

// fromRow turns a row into a check, its verdict as of now.
func fromRow(row authrows.Row[sharedData], now time.Time) (Check, error) {
	d := row.Value
	c := Check{ID: row.ID, Src: d.Src, Dst: d.Dst, LocalUser: d.LocalUser, Created: row.CreatedAt, Expires: row.ExpiresAt}
	switch v := verdictOf(row.Status); v {
	case Pending:
		if !now.Before(c.Expires) {
			c.Verdict, c.Decided = Expired, c.Expires
		}
	case Approved, Rejected:
		c.Verdict, c.Decided = v, now
	default:
		return Check{}, fmt.Errorf("SSH check %s: unknown status %q", LogID(row.ID), row.Status)
	}
	return c, nil
}

// getShared reads check id's row.
func (r *Registry) getShared(id string) (Check, error) {
	ctx, cancel := authrows.Context()
	defer cancel()
	row, err := r.shared.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return Check{}, ErrNotFound
	}
	if err != nil {
		return Check{}, err
	}
	return fromRow(row, r.now())
}

// adopt returns the entry of check id, reading it from the store when
// this server holds none: the destination waits here on a check another
// server opened. A verdict learned after the read (Decided) is taken from
// decided.
func (r *Registry) adopt(id string) (*entry, error) {
	c, err := r.getShared(id)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.lookupLocked(id, r.now()); e != nil {
		return e, nil
	}
	if d, ok := r.decided[id]; ok && c.Verdict == Pending {
		c.Verdict, c.Decided = d.v, d.at
	}
	e := &entry{c: c, done: make(chan struct{})}
	r.checks[id] = e
	if c.Verdict != Pending {
		close(e.done)
		return e, nil
	}
	r.perDst[c.Dst]++
	return e, nil
}

// decideShared claims check id's row and stores verdict v for every
// server, then finishes this server's copy, if any.
func (r *Registry) decideShared(id string, v Verdict) (Check, error) {
	ctx, cancel := authrows.Context()
	defer cancel()
	row, err := r.shared.Claim(ctx, id, r.now(), claimHold)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return Check{}, ErrNotFound
	case errors.Is(err, store.ErrAuthDecided), errors.Is(err, store.ErrAuthBusy):
		c, _ := fromRow(row, r.now())
		return c, ErrDecided
	case err != nil:
		return Check{}, err
	}
	c, err := fromRow(row, r.now())
	if err != nil {
		_ = r.shared.Release(ctx, id)
		return Check{}, err
	}
	now := r.now()
	var keep time.Time
	if v == Approved {
		keep = now.Add(MaxPeriod) // for servers that start within the longest check period
	}
	if err := r.shared.Decide(ctx, id, v.String(), sharedData{Src: c.Src, Dst: c.Dst, At: now}, keep); err != nil {
		_ = r.shared.Release(ctx, id)
		return Check{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.checks[id]; e != nil && e.c.Verdict == Pending {
		r.finishLocked(e, v, now)
	}
	if v == Approved {
		r.approved[pair{c.Src, c.Dst}] = now
	}
	c.Verdict, c.Decided = v, now
	return c, nil
}
