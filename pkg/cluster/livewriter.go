package cluster

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
)

// LiveWriter stores what this server's clients report and when their
// sessions here begin and end (state.Options.Publish), batched: the facts
// of one debounce window go to the database in one transaction, with
// their change-log records. Per node only the newest report and the last
// presence change are kept, so a window costs at most one record per
// node, and a database outage holds at most one entry per node.
type LiveWriter struct {
	st       *store.Store
	log      *slog.Logger
	debounce time.Duration

	mu      sync.Mutex
	pending map[ids.NodeID]state.LiveFact
	wake    chan struct{}
	flushed chan struct{} // closed and replaced after each flush attempt
	done    chan struct{}
}

// NewLiveWriter returns a writer to st that waits debounce after the
// first fact of a batch. Start it with Run.
func NewLiveWriter(st *store.Store, debounce time.Duration, log *slog.Logger) *LiveWriter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &LiveWriter{st: st, log: log, debounce: debounce, pending: make(map[ids.NodeID]state.LiveFact),
		wake: make(chan struct{}, 1), flushed: make(chan struct{}), done: make(chan struct{})}
}

// Add queues f. It never blocks (the state calls it under its lock).
func (w *LiveWriter) Add(f state.LiveFact) {
	w.mu.Lock()
	w.pending[f.Node] = merge(w.pending[f.Node], f)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// merge combines an older queued fact with a newer one of the same node:
// the newer report, and the newer presence change if it has one.
func merge(old, f state.LiveFact) state.LiveFact {
	if f.Online == nil && old.Online != nil {
		f.Online = old.Online
	}
	return f
}

// Pending is how many nodes have facts not yet stored.
func (w *LiveWriter) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending)
}

// Run stores queued facts until ctx ends, then stores what is left once
// more (bounded by a short timeout). Failed batches are kept, merged with
// newer facts, and retried with back-off.
func (w *LiveWriter) Run(ctx context.Context) {
	defer close(w.done)
	retry := 100 * time.Millisecond
	failing := false
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			if err := w.flush(fctx); err != nil {
				w.log.Warn("storing the last client reports at stop failed; other servers learn them when the clients reconnect", "nodes", w.Pending(), "err", err)
			}
			cancel()
			return
		case <-w.wake:
		}
		if w.debounce > 0 {
			t := time.NewTimer(w.debounce)
			select {
			case <-ctx.Done():
				t.Stop()
				continue // the stop path stores them
			case <-t.C:
			}
		}
		err := w.flush(ctx)
		switch {
		case err == nil:
			if failing {
				failing = false
				w.log.Info("storing client reports for the other servers works again")
			}
			retry = 100 * time.Millisecond
		case ctx.Err() != nil:
		default:
			if !failing {
				failing = true
				w.log.Error("storing client reports for the other servers failed; kept and retried", "nodes", w.Pending(), "err", err)
			}
			t := time.NewTimer(retry)
			select {
			case <-ctx.Done():
				t.Stop()
			case <-t.C:
			}
			retry = min(2*retry, 5*time.Second)
			select { // try again even without a new fact
			case w.wake <- struct{}{}:
			default:
			}
		}
	}
}

// Done is closed when Run has returned.
func (w *LiveWriter) Done() <-chan struct{} { return w.done }

// Flushed returns a channel closed after the next flush attempt ends
// (tests wait on it).
func (w *LiveWriter) Flushed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.flushed
}

// flush stores the queued facts in one transaction. On failure they are
// queued again under newer facts of the same nodes.
func (w *LiveWriter) flush(ctx context.Context) error {
	w.mu.Lock()
	batch := w.pending
	w.pending = make(map[ids.NodeID]state.LiveFact, len(batch))
	w.mu.Unlock()
	var err error
	if len(batch) > 0 {
		recs := make([]store.LiveRecord, 0, len(batch))
		for _, f := range batch {
			recs = append(recs, state.LiveFactToStore(f))
		}
		err = w.st.AppendLive(ctx, recs)
		if err != nil {
			w.mu.Lock()
			for id, f := range batch {
				if newer, ok := w.pending[id]; ok {
					w.pending[id] = merge(f, newer)
				} else {
					w.pending[id] = f
				}
			}
			w.mu.Unlock()
		}
	}
	w.mu.Lock()
	close(w.flushed)
	w.flushed = make(chan struct{})
	w.mu.Unlock()
	return err
}
