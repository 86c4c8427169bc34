package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/ids"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
)

// JobsLease is the lease under which once-per-tailnet jobs run.
const JobsLease = "jobs"

// pruneEvery is how often the jobs holder prunes the change log.
const pruneEvery = time.Minute

// Config configures a Member.
type Config struct {
	// Store is the tailnet's database, opened with the change log on and
	// ChangeLogOptions.Origin set to ServerID.
	Store *store.Store
	// ServerID names this process start (NewServerID); Name is the
	// configured server name.
	ServerID, Name string
	// Version is this server's release, NoisePub its Noise public key:
	// every server of a tailnet must have the same key, since clients
	// pin it and the load balancer moves them between servers.
	Version, NoisePub string
	// PolicyHash returns the hash of the policy file in force ("" in
	// database mode), compared between servers at each heartbeat.
	PolicyHash func() string
	// Debounce is how long the follower and the live writer wait after a
	// first change, so that a burst is one read and one write.
	Debounce time.Duration
	// LeaseTTL is how long a server counts as alive after its last
	// heartbeat; Heartbeat is how often it renews (LeaseTTL/3 when 0).
	LeaseTTL, Heartbeat time.Duration
	// Poll is the follower's safety poll (1s when 0).
	Poll time.Duration
	// Retention is how long change-log records every live server applied
	// are kept before the jobs holder prunes them (1h when 0).
	Retention time.Duration
	// Dial opens the listener's own database connection.
	Dial DialFunc
	// Fenced is called when this server finds it was declared gone by the
	// others (it could not renew in time): its view may have diverged and
	// it must stop serving (the service manager restarts it with a fresh
	// snapshot). Behind is called when the log no longer holds what it
	// has not applied. Both may be nil (then they are only logged).
	Fenced, Behind func(error)
	Logger         *slog.Logger
	// Observer receives the follower's measurements.
	Observer Observer
}

// NewServerID returns a new process incarnation ID for server name.
func NewServerID(name string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return name + "/" + hex.EncodeToString(b[:])
}

// Member is this server's part in a tailnet served by several: it joins
// the server list, renews its lease, follows the change log, stores its
// clients' reports, and, while it holds the jobs lease, declares servers
// that stopped renewing gone.
type Member struct {
	cfg  Config
	st   *store.Store
	log  *slog.Logger
	live *LiveWriter

	follower *Follower
	listener *Listener

	leader     atomic.Bool
	primMu     sync.Mutex
	prims      []store.RoutePrimary // decisions waiting to be stored
	primWake   chan struct{}
	servers    atomic.Int64
	mismatch   atomic.Bool
	connSince  time.Time // start of the current run of successful heartbeats
	leaseMu    sync.Mutex
	lease      store.Lease
	state      *state.State
	warnedHash string
	lastPrune  time.Time

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewMember checks that this server may join (no live server of the
// same name, the same Noise key as every live server) and writes its
// row. live is the writer the state publishes to. The caller then loads
// the state from a snapshot and calls Start with it.
func NewMember(ctx context.Context, cfg Config, live *LiveWriter) (*Member, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = cfg.LeaseTTL / 3
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Retention <= 0 {
		cfg.Retention = time.Hour
	}
	if cfg.PolicyHash == nil {
		cfg.PolicyHash = func() string { return "" }
	}
	m := &Member{cfg: cfg, st: cfg.Store, log: cfg.Logger, live: live, primWake: make(chan struct{}, 1)}
	if err := m.checkPeers(ctx); err != nil {
		return nil, err
	}
	err := m.st.JoinCluster(ctx, store.ClusterServer{ID: cfg.ServerID, Name: cfg.Name, Version: cfg.Version,
		NoisePub: cfg.NoisePub, PolicyHash: cfg.PolicyHash()}, cfg.LeaseTTL)
	if err != nil {
		return nil, err
	}
	m.connSince = time.Now()
	return m, nil
}

// checkPeers refuses a second live server of this name and a live server
// with another Noise key. A row of this name that stops being renewed
// within one heartbeat is this server's previous run (a crash or kill
// less than a lease ago): it is declared gone at once, so that its
// clients' sessions do not linger for a lease.
func (m *Member) checkPeers(ctx context.Context) error {
	srvs, err := m.st.ClusterServers(ctx)
	if err != nil {
		return err
	}
	var prev []store.ClusterServer
	for _, s := range srvs {
		if !s.Live {
			continue
		}
		if s.NoisePub != m.cfg.NoisePub {
			return fmt.Errorf("server %s (%s) on this database has another Noise key; every server of a tailnet needs the same noise.private_key_path file (copy it from one server to the others)", s.Name, s.ID)
		}
		if s.Name == m.cfg.Name {
			prev = append(prev, s)
		}
	}
	if len(prev) == 0 {
		return nil
	}
	t := time.NewTimer(m.cfg.Heartbeat + m.cfg.Heartbeat/2)
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C:
	}
	again, err := m.st.ClusterServers(ctx)
	if err != nil {
		return err
	}
	for _, p := range prev {
		for _, s := range again {
			if s.ID == p.ID && s.Live && s.ExpiresAt.After(p.ExpiresAt) {
				return fmt.Errorf("another live server is named %q (%s); give each server its own cluster.server_name", s.Name, s.ID)
			}
		}
		if err := m.st.LeaveCluster(ctx, p.ID); err != nil {
			return fmt.Errorf("removing this server's previous run %s: %w", p.ID, err)
		}
		m.log.Info("removed this server's previous run from the server list; its sessions are gone", "server_id", p.ID)
	}
	return nil
}

// Start follows the log from applied (the snapshot the state was loaded
// from) and starts renewing. It returns at once.
func (m *Member) Start(ctx context.Context, s *state.State, applied int64) {
	ctx, m.cancel = context.WithCancel(ctx)
	m.state = s
	m.follower = NewFollower(m.st, s, m.cfg.ServerID, applied, m.log, m.cfg.Observer)
	m.listener = NewListener(m.cfg.Dial, m.st.ChangeChannel(), m.log)
	behind := func(err error) {
		m.log.Error("this server fell behind the change log; restart it to load a fresh snapshot", "err", err)
		if m.cfg.Behind != nil {
			m.cfg.Behind(err)
		}
	}
	m.wg.Add(5)
	go func() { defer m.wg.Done(); m.storePrimaries(ctx) }()
	go func() { defer m.wg.Done(); m.listener.Run(ctx) }()
	go func() {
		defer m.wg.Done()
		m.follower.Run(ctx, m.listener.C, m.cfg.Debounce, m.cfg.Poll, behind)
	}()
	go func() { defer m.wg.Done(); m.live.Run(ctx) }()
	go func() { defer m.wg.Done(); m.heartbeats(ctx) }()
}

// CatchUp applies every record committed before it was called (nothing
// before Start).
func (m *Member) CatchUp(ctx context.Context) error {
	if m.follower == nil {
		return nil
	}
	return m.follower.CatchUp(ctx)
}

// Follower is the member's follower (nil before Start).
func (m *Member) Follower() *Follower { return m.follower }

// PublishPrimary queues this server's decision of p's primary router
// (state.Options.PublishPrimary); it never blocks.
func (m *Member) PublishPrimary(p netip.Prefix, node ids.NodeID) {
	m.primMu.Lock()
	m.prims = append(m.prims, store.RoutePrimary{Prefix: p, NodeID: node})
	m.primMu.Unlock()
	select {
	case m.primWake <- struct{}{}:
	default:
	}
}

// storePrimaries stores queued primary decisions under the jobs lease. A
// decision made while the lease was being lost is dropped: the next
// holder decides again (state.ElectAll).
func (m *Member) storePrimaries(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.primWake:
		}
		m.primMu.Lock()
		batch := m.prims
		m.prims = nil
		m.primMu.Unlock()
		if len(batch) == 0 {
			continue
		}
		m.leaseMu.Lock()
		l := m.lease
		m.leaseMu.Unlock()
		ok, err := m.st.SetPrimaries(ctx, l, batch)
		switch {
		case err != nil && ctx.Err() == nil:
			m.log.Error("storing primary subnet routers failed; the next jobs holder elects them again", "routes", len(batch), "err", err)
		case err == nil && !ok:
			m.log.Warn("primary subnet routers decided without the jobs lease were not stored", "routes", len(batch))
		}
	}
}

// Leader says whether this server holds the jobs lease.
func (m *Member) Leader() bool { return m.leader.Load() }

// Servers is how many live servers the last heartbeat saw.
func (m *Member) Servers() int { return int(m.servers.Load()) }

// PolicyMismatch says a live server reported another policy file.
func (m *Member) PolicyMismatch() bool { return m.mismatch.Load() }

// Stop stores the clients' last reports, leaves the server list (its
// sessions end for the others at once, not after a lease) and gives up
// the jobs lease.
func (m *Member) Stop(ctx context.Context) {
	if m.cancel != nil {
		m.cancel()
		m.wg.Wait()
	}
	if m.leader.Load() {
		if err := m.st.ReleaseLease(ctx, m.lease); err != nil {
			m.log.Warn("releasing the jobs lease failed; another server takes it when it expires", "err", err)
		}
	}
	if err := m.st.LeaveCluster(ctx, m.cfg.ServerID); err != nil && !errors.Is(err, store.ErrNotFound) {
		m.log.Warn("leaving the server list failed; the others drop this server when its lease expires", "err", err)
	}
}

// heartbeats renews this server's row every Heartbeat and runs the
// leader's work while it holds the jobs lease.
func (m *Member) heartbeats(ctx context.Context) {
	t := time.NewTicker(m.cfg.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.beat(ctx)
	}
}

// beat is one heartbeat.
func (m *Member) beat(ctx context.Context) {
	applied := int64(0)
	if m.follower != nil {
		applied = m.follower.Applied()
	}
	err := m.st.RenewServer(ctx, m.cfg.ServerID, m.cfg.LeaseTTL, applied, m.cfg.PolicyHash())
	switch {
	case errors.Is(err, store.ErrNotFound):
		err = fmt.Errorf("this server (%s) was declared gone by the others: it could not renew its lease within %v", m.cfg.ServerID, m.cfg.LeaseTTL)
		m.log.Error("fenced: stopping, since the other servers took this server's nodes offline", "err", err)
		if m.cfg.Fenced != nil {
			m.cfg.Fenced(err)
		}
		return
	case err != nil:
		m.connSince = time.Time{}
		m.log.Warn("renewing this server's lease failed", "err", err)
		return
	}
	if m.connSince.IsZero() {
		m.connSince = time.Now()
	}
	l, held, err := m.st.AcquireLease(ctx, JobsLease, m.cfg.ServerID, m.cfg.LeaseTTL)
	if err != nil {
		m.log.Warn("taking the jobs lease failed", "err", err)
		held = false
	}
	m.leaseMu.Lock()
	m.lease = l
	m.leaseMu.Unlock()
	if held && !m.leader.Load() {
		m.log.Info("this server now runs the tailnet's once-only jobs", "epoch", l.Epoch)
		m.leader.Store(true)
		// The previous holder may have died before deciding.
		if m.state != nil {
			m.state.ElectAll()
		}
	}
	m.leader.Store(held)
	srvs, err := m.st.ClusterServers(ctx)
	if err != nil {
		m.log.Warn("listing servers failed", "err", err)
		return
	}
	m.checkPolicies(srvs)
	if held && time.Since(m.lastPrune) >= pruneEvery {
		m.lastPrune = time.Now()
		if n, err := m.st.PruneChanges(ctx, l, m.cfg.Retention); err != nil {
			m.log.Warn("pruning the change log failed", "err", err)
		} else if n > 0 {
			m.log.Debug("pruned the change log", "records", n)
		}
	}
	live := 0
	for _, s := range srvs {
		if s.Live {
			live++
			continue
		}
		// Declare a server gone only after this one has itself been
		// renewing for a whole lease: after an outage of the database
		// every lease has run out, and each server gets one lease to
		// renew before anyone is taken offline.
		if held && time.Since(m.connSince) >= m.cfg.LeaseTTL {
			ok, err := m.st.DeclareServerGone(ctx, s.ID, l)
			switch {
			case err != nil:
				m.log.Warn("declaring a server gone failed", "server_id", s.ID, "err", err)
			case ok:
				m.log.Warn("a server stopped renewing its lease: its nodes' sessions are gone", "server_id", s.ID, "name", s.Name, "expired", s.ExpiresAt)
				// The record is this server's own, which its follower
				// skips: apply it here.
				if err := m.state.ApplyRemote(ctx, []state.RemoteChange{{ServerGone: s.ID, GoneAt: time.Now()}}); err != nil {
					m.log.Error("applying a server's departure", "server_id", s.ID, "err", err)
				}
			}
		}
	}
	m.servers.Store(int64(live))
}

// checkPolicies warns, once per difference, when a live server reports
// another policy file hash than this one.
func (m *Member) checkPolicies(srvs []store.ClusterServer) {
	mine := m.cfg.PolicyHash()
	mismatch := ""
	for _, s := range srvs {
		if s.Live && s.ID != m.cfg.ServerID && s.PolicyHash != mine {
			mismatch = s.Name + ":" + s.PolicyHash
			if mismatch != m.warnedHash {
				m.log.Error("the policy file differs between servers; clients of different servers get different filters until every server has the same file",
					"server", s.Name, "their_hash", short(s.PolicyHash), "our_hash", short(mine))
			}
			break
		}
	}
	m.warnedHash = mismatch
	m.mismatch.Store(mismatch != "")
}

func short(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}
