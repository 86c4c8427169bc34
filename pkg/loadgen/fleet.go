package loadgen

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"tailscale.com/tailcfg"
	"tailscale.com/types/key"
)

// Fleet is a set of simulated nodes that stay registered, each with its
// map stream open, until Close: a large tailnet for other clients (the
// official tailscaled, say) to join while it runs. The nodes reconnect
// when their streams break, as in a load run, and make no endpoint
// changes of their own.
type Fleet struct {
	r *runner
	// Register is the register phase that created the fleet: registration
	// and convergence times, bytes received and its checks.
	Register *PhaseResult

	closeOnce sync.Once
}

// FleetPeer is one peer of a simulated node as the server describes it.
type FleetPeer struct {
	// ID is the server's node ID.
	ID int64
	// Hostname is the peer's Hostinfo hostname (its Name when it has no
	// Hostinfo).
	Hostname string
	// Online is what the server says of the peer; false when it says
	// nothing.
	Online bool
	// Addresses are the peer's tailnet addresses.
	Addresses []netip.Prefix
}

// StartFleet registers cfg.N simulated nodes as the register phase of Run
// does (within cfg.RegisterTimeout, at cfg.Concurrency), keeps their map
// streams open and waits until every node holds all N-1 others (within
// cfg.ConvergeTimeout). cfg.Phases and the change settings are ignored,
// and so are cfg.ServerPIDs, MetricsURLs and PGDSN. When registration or convergence fails the
// nodes are disconnected and the error names the failed checks.
func StartFleet(ctx context.Context, cfg Config) (*Fleet, error) {
	cfg.Phases = []string{PhaseRegister}
	cfg.ServerPIDs, cfg.MetricsURLs, cfg.PGDSN = nil, nil, ""
	if err := cfg.check(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	r := newRunner(cfg)
	if err := r.discoverKey(ctx); err != nil {
		return nil, err
	}
	r.makeNodes(false)
	r.nctx, r.stopNodes = context.WithCancel(context.Background())
	r.logf("fleet %s: %d nodes against %s", r.runID, cfg.N, cfg.URL)
	f := &Fleet{r: r}
	f.Register = r.runPhase(ctx, PhaseRegister, 0, r.phaseRegister)
	if !f.Register.OK {
		f.Close()
		var why []string
		for _, c := range f.Register.Checks {
			if !c.OK {
				why = append(why, c.Name+": "+c.Detail)
			}
		}
		why = append(why, f.Register.Errors...)
		return nil, fmt.Errorf("fleet did not start: %s", strings.Join(why, "; "))
	}
	return f, nil
}

// N is the number of simulated nodes.
func (f *Fleet) N() int { return len(f.r.nodes) }

// Hostname is simulated node i's hostname.
func (f *Fleet) Hostname(i int) string { return f.r.nodes[i].name }

// ConvergedCount is how many simulated nodes hold every other simulated
// node in their current map session.
func (f *Fleet) ConvergedCount() int { return int(f.r.converged.Load()) }

// Converged reports whether every simulated node holds every other one.
func (f *Fleet) Converged() bool { return f.r.allConverged() }

// WaitConverged waits until Converged holds, or fails when timeout passes
// or ctx ends first.
func (f *Fleet) WaitConverged(ctx context.Context, timeout time.Duration) error {
	if f.r.waitUntil(ctx, timeout, f.r.allConverged) {
		return nil
	}
	return fmt.Errorf("%d of %d simulated nodes converged", f.ConvergedCount(), f.N())
}

// StreamEnds is how many map streams have ended since the fleet started
// (each is followed by a reconnect); a stable fleet keeps it at zero.
func (f *Fleet) StreamEnds() int64 { return f.r.streamEnds.Load() - f.Register.StreamEnds }

// BytesReceived is what the simulated nodes have read from their
// connections so far.
func (f *Fleet) BytesReceived() int64 { return f.r.rxWire.Load() }

// Peers returns the peers in simulated node i's netmap as the server
// sends it now: it opens a second map stream for the node (on the node's
// own connection), reads the first, full map and closes that stream. The
// node's own map stream is not touched. (The fleet's streams track only
// the simulated nodes; this is how to see who else is in the tailnet.)
func (f *Fleet) Peers(ctx context.Context, i int) ([]FleetPeer, error) {
	if i < 0 || i >= len(f.r.nodes) {
		return nil, fmt.Errorf("no simulated node %d", i)
	}
	n := f.r.nodes[i]
	nc, err := n.client()
	if err != nil {
		return nil, err
	}
	n.sendMu.Lock()
	req := n.mapRequest(false)
	n.sendMu.Unlock()
	req.Stream, req.OmitPeers, req.Compress = true, false, ""
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the extra stream
	res, err := n.post(ctx, nc, "/machine/map", req)
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<10))
		return nil, fmt.Errorf("map: http %d: %.200s", res.StatusCode, strings.TrimSpace(string(b)))
	}
	// The first frame with the node or peers is the full map; skip any
	// keep-alive before it.
	for {
		var hdr [4]byte
		if _, err := io.ReadFull(res.Body, hdr[:]); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("map stream ended before the netmap")
			}
			return nil, err
		}
		size := int(binary.LittleEndian.Uint32(hdr[:]))
		if size == 0 || size > f.r.cfg.MaxFrame {
			return nil, fmt.Errorf("map frame of %d bytes", size)
		}
		b := make([]byte, size)
		if _, err := io.ReadFull(res.Body, b); err != nil {
			return nil, err
		}
		var mr tailcfg.MapResponse
		if err := json.Unmarshal(b, &mr); err != nil {
			return nil, fmt.Errorf("decoding map response: %w", err)
		}
		if mr.Node == nil && mr.Peers == nil {
			continue
		}
		peers := make([]FleetPeer, 0, len(mr.Peers))
		for _, p := range mr.Peers {
			fp := FleetPeer{ID: int64(p.ID), Hostname: p.Name, Online: p.Online != nil && *p.Online, Addresses: p.Addresses}
			if p.Hostinfo.Valid() && p.Hostinfo.Hostname() != "" {
				fp.Hostname = p.Hostinfo.Hostname()
			}
			peers = append(peers, fp)
		}
		return peers, nil
	}
}

// Close disconnects every simulated node and waits for their map loops
// to end. The nodes stay registered on the server (offline) unless
// cfg.Ephemeral was set.
func (f *Fleet) Close() {
	f.closeOnce.Do(f.r.shutdown)
}

// MachineKey is simulated node i's machine public key.
func (f *Fleet) MachineKey(i int) key.MachinePublic { return f.r.nodes[i].machine.Public() }

// NodeKey is simulated node i's node public key.
func (f *Fleet) NodeKey(i int) key.NodePublic { return f.r.nodes[i].nodePub }
