package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/cluster"
	"github.com/hsctl/headscale/pkg/state"
	"github.com/hsctl/headscale/pkg/store"
	"github.com/prometheus/client_golang/prometheus"
	"tailscale.com/types/key"
)

// Several servers serving one tailnet (cluster.enabled): the wiring of
// pkg/cluster. Each server keeps its own state; the store appends a
// change-log record to every write, the member follows the others'
// records, stores this server's clients' reports and presence, and, while
// it holds the jobs lease, declares servers that stopped renewing gone
// and elects primary routers.

// clusterPart is a server's membership (nil fields without
// cluster.enabled).
type clusterPart struct {
	id     string // this process start's server ID
	member *cluster.Member
	live   *cluster.LiveWriter
	seq    int64 // the snapshot the state was loaded from
	// fatal is set when this server must stop serving: it was declared
	// gone by the others, or fell behind the change log.
	fatal atomic.Pointer[error]
	errc  chan error
}

// clusterStoreOptions turns the change log on (cluster.enabled), with a
// new server ID as the records' origin.
func (s *Server) clusterStoreOptions(o *store.Options) {
	if !s.cfg.Cluster.Enabled {
		return
	}
	s.cluster.id = cluster.NewServerID(s.cfg.Cluster.Name())
	o.ChangeLog = &store.ChangeLogOptions{Origin: s.cluster.id}
}

// joinCluster checks this server may join and joins (its row in the
// server list), and loads the snapshot the state starts from. It returns
// the state options the cluster needs (zero without cluster.enabled).
func (s *Server) joinCluster(ctx context.Context, st *store.Store, noise key.MachinePublic, opts *state.Options) error {
	if !s.cfg.Cluster.Enabled {
		return nil
	}
	c := s.cfg.Cluster
	log := s.log.With("component", "cluster")
	s.cluster.errc = make(chan error, 1)
	fatal := func(err error) {
		s.cluster.fatal.Store(&err)
		select {
		case s.cluster.errc <- err:
		default:
		}
	}
	s.cluster.live = cluster.NewLiveWriter(st, c.Debounce, log)
	m, err := cluster.NewMember(ctx, cluster.Config{
		Store: st, ServerID: s.cluster.id, Name: c.Name(), Version: s.version, NoisePub: noise.String(),
		PolicyHash: s.policyHash,
		Debounce:   c.Debounce, LeaseTTL: c.LeaseTTL, Heartbeat: c.Heartbeat(),
		Dial:   st.DialListener,
		Fenced: fatal, Behind: fatal,
		Logger: log,
		Observer: cluster.Observer{Applied: func(records int, _ int64, lag time.Duration) {
			s.clusterLag.Observe(lag.Seconds())
			s.clusterRecords.Add(float64(records))
		}, AuthDecided: s.authDecided},
	}, s.cluster.live)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	s.cluster.member = m
	snap, err := st.LoadSnapshot(ctx)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	s.cluster.seq = snap.Seq
	opts.Snapshot = &snap
	opts.Publish = s.cluster.live.Add
	opts.RunsJobs = m.Leader
	opts.PublishPrimary = m.PublishPrimary
	opts.CatchUp = m.CatchUp
	opts.LockRegistrations = st.LockRegistrations
	log.Info("joined the servers of this tailnet", "server_id", s.cluster.id, "name", c.Name(), "snapshot", snap.Seq,
		"debounce", c.Debounce, "lease_ttl", c.LeaseTTL)
	return nil
}

// shareAuth makes the pending web registrations and SSH checks live in
// the database as well (cluster.enabled), so that the client's follow-up,
// the browser and the admin's approval may each reach any server, and
// this server knows the SSH approvals given before it started.
func (s *Server) shareAuth(ctx context.Context, st *store.Store) error {
	if s.cluster.member == nil {
		return nil
	}
	s.pending.Share(st, s.cluster.member.CatchUp)
	if err := s.sshChecks.Share(ctx, st); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	return nil
}

// authDecided answers the client waiting here on a registration or SSH
// check another server decided (the follower's hook).
func (s *Server) authDecided(d store.AuthDecision) {
	if s.pending != nil {
		s.pending.Decided(d)
	}
	if s.sshChecks != nil {
		s.sshChecks.Decided(d)
	}
}

// policyHash identifies the policy in force, so that servers can tell
// when their policy files differ.
func (s *Server) policyHash() string {
	if s.state == nil {
		return ""
	}
	text, _ := s.state.PolicyText()
	if text == "" {
		return ""
	}
	sum := sha256.Sum256([]byte(text))
	return hex.EncodeToString(sum[:])
}

// startCluster starts following the others (Run).
func (s *Server) startCluster(ctx context.Context) {
	if s.cluster.member != nil {
		s.cluster.member.Start(ctx, s.state, s.cluster.seq)
	}
}

// stopCluster stores the clients' last reports and leaves the server list,
// after the map sessions ended and before the store closes.
func (s *Server) stopCluster() {
	if s.cluster.member == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s.cluster.member.Stop(ctx)
}

// clusterErr is a channel that receives the error that makes this server
// stop serving (nil channel without cluster.enabled: never).
func (s *Server) clusterErr() <-chan error { return s.cluster.errc }

// registerClusterMetrics exports the membership's figures.
func (s *Server) registerClusterMetrics() {
	m := s.cluster.member
	if m == nil {
		return
	}
	s.clusterLag = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "headscale_cluster_apply_lag_seconds",
		Help:    "How long after its commit on another server a batch of change-log records was applied here.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	})
	s.clusterRecords = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "headscale_cluster_records_applied_total", Help: "Change-log records read from the database (other servers' changes)."})
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	s.metrics.Registry.MustRegister(s.clusterLag, s.clusterRecords,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "headscale_cluster_applied_seq",
			Help: "The last change-log record this server applied."}, func() float64 {
			if f := m.Follower(); f != nil {
				return float64(f.Applied())
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "headscale_cluster_changelog_lag_seconds",
			Help: "Seconds since the commit of the last record this server applied (grows while others are idle; compare with the other servers' records)."}, func() float64 {
			if f := m.Follower(); f != nil && !f.LastAppliedAt().IsZero() {
				return time.Since(f.LastAppliedAt()).Seconds()
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "headscale_cluster_leader",
			Help: "1 while this server holds the jobs lease (ephemeral clean-up, declaring dead servers, primary routers)."}, func() float64 { return b2f(m.Leader()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "headscale_cluster_servers",
			Help: "Live servers of this tailnet, as of the last heartbeat."}, func() float64 { return float64(m.Servers()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "headscale_cluster_policy_mismatch",
			Help: "1 while another live server reports a different policy."}, func() float64 { return b2f(m.PolicyMismatch()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "headscale_cluster_live_pending",
			Help: "Nodes whose presence or reported fields are waiting to be stored for the other servers."}, func() float64 { return float64(s.cluster.live.Pending()) }),
	)
}

// clusterCheck is /health's "cluster:membership" check: fail when this
// server must stop serving, warn when the servers' policies differ.
func (s *Server) clusterCheck() (check map[string]any, fail bool) {
	m := s.cluster.member
	if m == nil {
		return nil, false
	}
	check = map[string]any{"componentType": "system", "status": "pass", "observedValue": m.Servers(), "observedUnit": "servers"}
	if f := m.Follower(); f != nil {
		check["appliedSeq"] = f.Applied()
	}
	switch {
	case s.cluster.fatal.Load() != nil:
		check["status"], check["output"] = "fail", (*s.cluster.fatal.Load()).Error()
		fail = true
	case m.PolicyMismatch():
		check["status"], check["output"] = "warn", "another server runs with a different policy file"
	}
	return check, fail
}

// logCluster is the attribute the start-up line carries.
func (s *Server) logCluster() []any {
	if s.cluster.member == nil {
		return nil
	}
	return []any{slog.String("cluster_server_id", s.cluster.id)}
}
