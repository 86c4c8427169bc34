package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
)

// readPage is how many records one read of the change log returns at
// most.
const readPage = 2000

// ErrBehind reports that records the follower has not applied were pruned
// from the log: it must start over from a new snapshot.
var ErrBehind = errors.New("the change log no longer holds records this server has not applied")

// Follower applies other servers' change-log records to this server's
// state, in order, once each.
type Follower struct {
	st   *store.Store
	s    *state.State
	self string
	log  *slog.Logger
	obs  Observer

	mu      sync.Mutex // one reader at a time: Run's loop and CatchUp
	applied atomic.Int64
	lastAt  atomic.Int64 // unix ms of the last applied record's commit
}

// Observer receives the follower's measurements (metrics); every method
// may be nil.
type Observer struct {
	// Applied is called after each batch: how many records it held, the
	// last one's number, and how long after its commit it was applied.
	Applied func(records int, seq int64, lag time.Duration)
	// AuthDecided is called, after the batch holding it was applied to
	// the state, with each decision another server stored on a pending
	// authentication (a web registration, an SSH check), so that the
	// client waiting here is answered.
	AuthDecided func(store.AuthDecision)
}

// NewFollower returns a follower of st's change log that applies records
// to s, from the record after applied (the snapshot s was loaded from).
// Records whose origin is self were written by this server process, which
// applied them before their write returned, and are skipped.
func NewFollower(st *store.Store, s *state.State, self string, applied int64, log *slog.Logger, obs Observer) *Follower {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Follower{st: st, s: s, self: self, log: log, obs: obs}
	f.applied.Store(applied)
	return f
}

// Applied is the number of the last record applied.
func (f *Follower) Applied() int64 { return f.applied.Load() }

// LastAppliedAt is when the last applied record was committed (zero
// before the first).
func (f *Follower) LastAppliedAt() time.Time {
	ms := f.lastAt.Load()
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// CatchUp reads and applies every record committed before it was called.
func (f *Follower) CatchUp(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		after := f.applied.Load()
		recs, err := f.st.ReadChanges(ctx, after, readPage)
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			return nil
		}
		if recs[0].Seq != after+1 {
			return fmt.Errorf("%w: applied up to %d, the oldest left is %d", ErrBehind, after, recs[0].Seq)
		}
		changes, decisions, err := f.decode(recs)
		if err != nil {
			return err
		}
		if len(changes) > 0 {
			if err := f.s.ApplyRemote(ctx, changes); err != nil {
				// The records are applied except what failed (a policy
				// that does not load here): logged, not retried.
				f.log.Error("applying another server's change failed", "seq", recs[len(recs)-1].Seq, "err", err)
			}
		}
		if f.obs.AuthDecided != nil {
			for _, d := range decisions {
				f.obs.AuthDecided(d)
			}
		}
		last := recs[len(recs)-1]
		f.applied.Store(last.Seq)
		f.lastAt.Store(last.At.UnixMilli())
		if f.obs.Applied != nil {
			f.obs.Applied(len(recs), last.Seq, time.Since(last.At))
		}
		if len(recs) < readPage {
			return nil
		}
	}
}

// decode turns records into state changes and decisions on pending
// authentications, skipping this process's own. A record this server
// cannot read (a newer release wrote it) stops the follower: applying
// later records without it would diverge.
func (f *Follower) decode(recs []store.Record) ([]state.RemoteChange, []store.AuthDecision, error) {
	out := make([]state.RemoteChange, 0, len(recs))
	var decisions []store.AuthDecision
	for _, r := range recs {
		if r.Origin == f.self {
			continue
		}
		if r.Kind == store.KindAuthDecided {
			d, err := r.AuthDecided()
			if err != nil {
				return nil, nil, err
			}
			decisions = append(decisions, d)
			continue
		}
		c, err := remoteChange(r)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, c)
	}
	return out, decisions, nil
}

// remoteChange decodes one record.
func remoteChange(r store.Record) (state.RemoteChange, error) {
	switch r.Kind {
	case store.KindNode:
		n, registered, err := r.Node()
		if err != nil {
			return state.RemoteChange{}, err
		}
		return state.RemoteChange{Node: &n, Registered: registered}, nil
	case store.KindNodeDeleted:
		id, err := r.DeletedID()
		return state.RemoteChange{NodeDeleted: ids.NodeID(id)}, err
	case store.KindUser:
		u, err := r.User()
		if err != nil {
			return state.RemoteChange{}, err
		}
		return state.RemoteChange{User: &u}, nil
	case store.KindUserDeleted:
		id, err := r.DeletedID()
		return state.RemoteChange{UserDeleted: ids.UserID(id)}, err
	case store.KindPolicy:
		return state.RemoteChange{Policy: true}, nil
	case store.KindLive:
		l, err := r.Live()
		if err != nil {
			return state.RemoteChange{}, err
		}
		f, err := state.LiveFactFromStore(l)
		return state.RemoteChange{Origin: r.Origin, Live: &f}, err
	case store.KindPrimary:
		p, err := r.Primary()
		if err != nil {
			return state.RemoteChange{}, err
		}
		return state.RemoteChange{Origin: r.Origin, Primary: &state.Primary{Prefix: p.Prefix, Node: p.NodeID}}, nil
	case store.KindServerGone:
		id, err := r.ServerGone()
		return state.RemoteChange{ServerGone: id, GoneAt: r.At}, err
	}
	return state.RemoteChange{}, fmt.Errorf("change %d is of kind %q, which this server does not know (a newer release wrote it: upgrade this server)", r.Seq, r.Kind)
}

// Run applies new records whenever wake signals (after waiting debounce
// more, so that a burst becomes one read), and every poll in case a
// wake-up was lost, until ctx ends. A failed read is retried at the next
// wake-up or poll. ErrBehind ends it, reported to behind.
func (f *Follower) Run(ctx context.Context, wake <-chan struct{}, debounce, poll time.Duration, behind func(error)) {
	t := time.NewTicker(poll)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
			if debounce > 0 {
				d := time.NewTimer(debounce)
				select {
				case <-ctx.Done():
					d.Stop()
					return
				case <-d.C:
				}
			}
			select { // a wake-up that came meanwhile is this read's
			case <-wake:
			default:
			}
		case <-t.C:
		}
		err := f.CatchUp(ctx)
		switch {
		case errors.Is(err, ErrBehind):
			behind(err)
			return
		case err != nil && ctx.Err() != nil:
			return
		case err != nil && !failing:
			failing = true
			f.log.Warn("reading other servers' changes failed; retrying", "applied", f.Applied(), "err", err)
		case err == nil && failing:
			failing = false
			f.log.Info("reading other servers' changes works again", "applied", f.Applied())
		}
	}
}
