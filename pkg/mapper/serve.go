package mapper

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
)

// FrameWriter is the stream a session writes to: the HTTP/2 response of a
// streaming map request.
type FrameWriter interface {
	Write([]byte) (int, error)
	Flush() error
	// SetWriteDeadline bounds how long one write may block on a client
	// that stopped reading.
	SetWriteDeadline(time.Time) error
}

// ServeOptions tunes a session's stream.
type ServeOptions struct {
	KeepAlive    time.Duration // default 50s, plus up to 9s of jitter
	WriteTimeout time.Duration // default 60s
	// Resync takes a fresh snapshot for a session that fell behind
	// (state.State.Resync).
	Resync func(id ids.NodeID, attach func(state.Snapshot)) error
}

// ErrEnded reports that the server ended the session (node deleted or
// server shutting down).
var ErrEnded = errors.New("session ended by server")

// errNoPeersResync ends a stream whose resync snapshot has no peers.
var errNoPeersResync = errors.New("resync with no peers: the client must start over")

var keepAliveJSON = []byte(`{"KeepAlive":true}`)

// Serve writes the full map and then every queued change until ctx ends,
// the server ends the session, or a write fails.
func (s *Session) Serve(ctx context.Context, w FrameWriter, opts ServeOptions) error {
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = 50 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 60 * time.Second
	}
	now := s.hub.opts.Now
	// fresh takes a new snapshot under the state lock (dropping frames
	// queued before it, which it holds).
	peers := len(s.initial.Peers)
	fresh := func() (state.Snapshot, error) {
		if err := opts.Resync(s.NodeID, s.resyncAttach); err != nil {
			return state.Snapshot{}, fmt.Errorf("snapshot: %w", err)
		}
		snap := s.initial
		s.initial = state.Snapshot{}
		peers = len(snap.Peers)
		return snap, nil
	}
	full := func() error {
		snap := s.initial
		s.initial = state.Snapshot{}
		if opts.Resync != nil && peers > s.hub.opts.LazySnapshotPeers {
			// A big tailnet's snapshot is a slice of every peer: don't hold
			// it while waiting for room to build (in a reconnect storm,
			// thousands of sessions wait); take a fresh one when there is
			// room.
			return s.writeFull(ctx, w, peers, fresh, opts.WriteTimeout)
		}
		return s.writeFull(ctx, w, peers, func() (state.Snapshot, error) { return snap, nil }, opts.WriteTimeout)
	}
	resync := func() error {
		if opts.Resync == nil {
			return errors.New("session fell behind and cannot resync")
		}
		// Consume the signal if it is still pending.
		select {
		case <-s.resyncCh:
		default:
		}
		s.hub.opts.Observer.SessionResynced()
		// Clients read an empty peer list as "no change to peers": a resync
		// to a node that sees no peers now could not take back the ones it
		// saw. Such a stream ends instead, and the client starts over.
		noPeers := func() (state.Snapshot, error) {
			snap, err := fresh()
			if err == nil && len(snap.Peers) == 0 {
				return snap, errNoPeersResync
			}
			return snap, err
		}
		if err := s.writeFull(ctx, w, peers, noPeers, opts.WriteTimeout); err != nil {
			return fmt.Errorf("writing resync map: %w", err)
		}
		return nil
	}
	if err := full(); err != nil {
		return fmt.Errorf("writing full map: %w", err)
	}
	kaFrame := &frame{kind: KindKeepAlive, json: keepAliveJSON}
	var batch []*frame
	ka := time.NewTimer(jitter(opts.KeepAlive))
	defer ka.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.done:
			return ErrEnded
		case <-s.resyncCh:
			if err := resync(); err != nil {
				return err
			}
		case f := <-s.queue:
			if s.resync.Load() {
				s.took(1)
				// A pending resync supersedes everything queued: the
				// fresh snapshot contains these changes.
				if err := resync(); err != nil {
					return err
				}
				continue
			}
			// Write whatever else is already queued with it: one deadline,
			// one write and one flush for the batch, which saves an
			// encrypted write per frame when changes arrive in bursts.
			batch = append(batch[:0], f)
		drain:
			for len(batch) < 64 {
				select {
				case f := <-s.queue:
					batch = append(batch, f)
				default:
					break drain
				}
			}
			s.took(len(batch))
			if err := s.writeBatch(w, batch, opts.WriteTimeout); err != nil {
				return err
			}
			clear(batch)
			if err := w.Flush(); err != nil {
				return fmt.Errorf("flushing: %w", err)
			}
		case <-ka.C:
			ka.Reset(jitter(opts.KeepAlive))
			if !s.keepAlive {
				continue
			}
			kaFrame.at = now()
			if err := s.write(w, kaFrame, opts.WriteTimeout); err != nil {
				return err
			}
			if err := w.Flush(); err != nil {
				return fmt.Errorf("flushing: %w", err)
			}
		}
	}
}

// lazySnapshotPeers is the default tailnet size above which a session
// takes its starting snapshot again when it can build its full map.
const lazySnapshotPeers = 256

// writeFull builds and writes a full map of the snapshot get returns,
// which has about peers peers.
func (s *Session) writeFull(ctx context.Context, w FrameWriter, peers int, get func() (state.Snapshot, error), timeout time.Duration) error {
	now := s.hub.opts.Now
	// Full maps in flight (built and not yet written) share a byte budget,
	// so a reconnect storm against clients that read slowly cannot hold
	// thousands of them at once; building (CPU) has its own, smaller
	// bound.
	cost := s.hub.fullMapCost(peers, s.compress)
	if err := s.hub.fullBytes.Acquire(ctx, cost); err != nil {
		return err
	}
	defer s.hub.fullBytes.Release(cost)
	select {
	case s.hub.builds <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	snap, err := get()
	if err != nil {
		<-s.hub.builds
		return err
	}
	f := &frame{kind: KindFull, at: now()}
	if s.compress {
		f.parts, f.size = s.hub.fullMapZstdParts(snap)
	} else {
		f.json = s.hub.FullMapJSON(snap)
	}
	<-s.hub.builds
	if err := s.write(w, f, timeout); err != nil {
		return err
	}
	return w.Flush()
}

// ServeOnce writes one full map of snap and returns: the answer to a
// non-streaming map request that wants peers. The session is never
// registered with the hub.
func (s *Session) ServeOnce(ctx context.Context, w FrameWriter, snap state.Snapshot) error {
	return s.writeFull(ctx, w, len(snap.Peers), func() (state.Snapshot, error) { return snap, nil }, 60*time.Second)
}

func (s *Session) write(w FrameWriter, f *frame, timeout time.Duration) error {
	parts := f.parts
	size := f.size
	if parts == nil || !s.compress {
		b := f.bytes(s.compress)
		parts, size = [][]byte{b}, len(b)
	}
	s.extendDeadline(w, timeout)
	var hdr [4]byte
	binary.LittleEndian.PutUint32(hdr[:], uint32(size))
	if _, err := w.Write(hdr[:]); err != nil {
		return fmt.Errorf("writing frame: %w", err)
	}
	for _, b := range parts {
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("writing frame: %w", err)
		}
	}
	var lat time.Duration
	if f.kind == KindDelta {
		lat = s.hub.opts.Now().Sub(f.at)
	}
	s.hub.opts.Observer.FrameSent(f.kind, size+4, lat)
	return nil
}

// batchBufs lends writeBatch its buffer, so ten thousand idle sessions
// do not each keep one.
var batchBufs = sync.Pool{New: func() any { return new([]byte) }}

// writeBatch writes frames as one buffer under one write deadline.
func (s *Session) writeBatch(w FrameWriter, frames []*frame, timeout time.Duration) error {
	bp := batchBufs.Get().(*[]byte)
	defer batchBufs.Put(bp)
	b := (*bp)[:0]
	for _, f := range frames {
		payload := f.bytes(s.compress)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
		b = append(b, payload...)
	}
	if cap(b) <= 256<<10 {
		*bp = b
	}
	s.extendDeadline(w, timeout)
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("writing frames: %w", err)
	}
	now := s.hub.opts.Now()
	for _, f := range frames {
		var lat time.Duration
		if f.kind == KindDelta {
			lat = now.Sub(f.at)
		}
		s.hub.opts.Observer.FrameSent(f.kind, len(f.bytes(s.compress))+4, lat)
	}
	return nil
}

// extendDeadline keeps the stream's write deadline at least timeout/2
// ahead, moving it (a call through HTTP/2 to the connection) only when it
// came closer than that.
func (s *Session) extendDeadline(w FrameWriter, timeout time.Duration) {
	now := time.Now()
	if s.deadline.Sub(now) > timeout/2 {
		return
	}
	s.deadline = now.Add(timeout)
	_ = w.SetWriteDeadline(s.deadline)
}

func jitter(d time.Duration) time.Duration {
	return d + time.Duration(rand.Int64N(int64(9*time.Second)))
}
