package crashtest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hsctl/headscale/pkg/loadgen"
	"github.com/hsctl/headscale/pkg/store"
)

// Config describes one crash run.
type Config struct {
	// Headscale is the server binary.
	Headscale string
	// Dir holds the server's state and log; "" makes a temporary
	// directory that is removed afterwards unless the run failed.
	Dir string
	// Iterations is how many times the server is killed.
	Iterations int
	// Nodes is the number of simulated nodes that stay connected and must
	// reconverge after every restart.
	Nodes int
	// Registrations bounds how many extra nodes register (each on its own
	// Noise connection) per iteration, RegConcurrency at a time, while the
	// admin writers edit, until the kill; KeepProbes bounds how many of these stay (the
	// rest are deleted through the API after each check).
	Registrations  int
	RegConcurrency int
	KeepProbes     int
	// Writers is the number of concurrent admin writers (REST API).
	Writers int
	// KillMin and KillMax bound the random moment of the kill, counted
	// from the start of the iteration's load.
	KillMin, KillMax time.Duration
	// ConvergeTimeout bounds the wait for every simulated node to
	// reconnect and hold all its peers after a restart.
	ConvergeTimeout time.Duration
	// Timeout bounds the whole run.
	Timeout time.Duration
	// Seed for the random choices (0: from the clock).
	Seed uint64
	// Logf, if set, receives progress lines.
	Logf func(format string, args ...any)
}

// DefaultConfig returns the defaults: 100 iterations, 100 nodes.
func DefaultConfig() Config {
	return Config{
		Iterations:      100,
		Nodes:           100,
		Registrations:   100,
		RegConcurrency:  4,
		KeepProbes:      50,
		Writers:         3,
		KillMin:         20 * time.Millisecond,
		KillMax:         1500 * time.Millisecond,
		ConvergeTimeout: 2 * time.Minute,
		Timeout:         30 * time.Minute,
	}
}

// Summary is what a run found.
type Summary struct {
	Iterations int `json:"iterations"`
	Nodes      int `json:"nodes"`
	// Registrations answered 200 (the fleet's included) and those whose
	// answer never arrived.
	RegAcked   int `json:"registrations_acked"`
	RegUnknown int `json:"registrations_unanswered"`
	// Admin writes answered 200, refused (any other answer) and
	// unanswered; Refusals samples the reasons given.
	WritesAcked   int      `json:"admin_writes_acked"`
	WritesRefused int      `json:"admin_writes_refused"`
	WritesUnknown int      `json:"admin_writes_unanswered"`
	Refusals      []string `json:"refusals,omitempty"`
	// Checks is how many acknowledged facts were verified after restarts,
	// summed over the restarts: an edit is checked at the first restart
	// after it, a node, user or key that must exist at every restart.
	Checks int `json:"checks"`
	// UnackedLanded and UnackedDropped count unanswered creations found
	// present or absent after the restart (either is allowed).
	UnackedLanded  int `json:"unacked_landed"`
	UnackedDropped int `json:"unacked_dropped"`
	// Missing is the number of acknowledged writes the restarted server did
	// not show (must be 0); Problems lists the first ones.
	Missing  int      `json:"missing"`
	Problems []string `json:"problems,omitempty"`
	// IntegrityFailures counts kills after which PRAGMA integrity_check on
	// the database file did not say ok.
	IntegrityFailures int `json:"integrity_failures"`
	// ConvergeFailures counts restarts after which not every simulated
	// node reconnected and held all its peers within ConvergeTimeout.
	ConvergeFailures int `json:"converge_failures"`
	// Ready is restart to /health answering; Converge is restart to every
	// simulated node holding all its peers. Seconds.
	ReadyP50    float64 `json:"ready_p50_s"`
	ReadyMax    float64 `json:"ready_max_s"`
	ConvergeP50 float64 `json:"converge_p50_s"`
	ConvergeMax float64 `json:"converge_max_s"`
	// KillAfter is the spread of the kill moments, seconds into the load.
	KillAfterMin float64 `json:"kill_after_min_s"`
	KillAfterMax float64 `json:"kill_after_max_s"`
	DBBytes      int64   `json:"db_bytes"`
	Seconds      float64 `json:"seconds"`
	// OK: every iteration ran, nothing missing, every check passed.
	OK bool `json:"ok"`
}

// WriteText prints the summary as a few lines.
func (s *Summary) WriteText(w io.Writer) {
	verdict := "PASS"
	if !s.OK {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "crash test %s: %d iterations (kill -9 at %.2f-%.2f s into the load), %d simulated nodes, %.0f s\n",
		verdict, s.Iterations, s.KillAfterMin, s.KillAfterMax, s.Nodes, s.Seconds)
	fmt.Fprintf(w, "  registrations acked %d (unanswered %d), admin writes acked %d (refused %d, unanswered %d)\n",
		s.RegAcked, s.RegUnknown, s.WritesAcked, s.WritesRefused, s.WritesUnknown)
	fmt.Fprintf(w, "  acked writes verified %d, missing %d; unanswered creations found %d / absent %d\n",
		s.Checks, s.Missing, s.UnackedLanded, s.UnackedDropped)
	fmt.Fprintf(w, "  integrity_check failures %d, reconvergence failures %d\n", s.IntegrityFailures, s.ConvergeFailures)
	fmt.Fprintf(w, "  restart to ready p50 %.2f s max %.2f s; restart to all nodes converged p50 %.2f s max %.2f s; database %d KiB\n",
		s.ReadyP50, s.ReadyMax, s.ConvergeP50, s.ConvergeMax, s.DBBytes>>10)
	for _, r := range s.Refusals {
		fmt.Fprintf(w, "  refused, e.g.: %s\n", r)
	}
	for _, p := range s.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
}

func (c *Config) check() error {
	var errs []error
	if c.Headscale == "" {
		errs = append(errs, errors.New("the headscale binary is required"))
	}
	if c.Iterations < 1 || c.Nodes < 2 || c.Writers < 1 || c.RegConcurrency < 1 || c.Registrations < 0 {
		errs = append(errs, errors.New("iterations >= 1, nodes >= 2, writers >= 1, reg concurrency >= 1"))
	}
	if c.KillMin < 0 || c.KillMax < c.KillMin {
		errs = append(errs, errors.New("kill window: 0 <= min <= max"))
	}
	return errors.Join(errs...)
}

func (c *Config) logf(format string, args ...any) {
	if c.Logf != nil {
		c.Logf(format, args...)
	}
}

// Run starts the server, registers cfg.Nodes simulated nodes and then,
// cfg.Iterations times: lets extra nodes register and the admin writers
// edit, kills the server with SIGKILL at a random moment, runs PRAGMA
// integrity_check on the database file, restarts the server, checks that
// every acknowledged write is there and waits until every simulated node
// has reconnected and holds all its peers. The error is for a run that
// could not be carried out; what it found is in the summary.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	if cfg.Seed == 0 {
		cfg.Seed = uint64(time.Now().UnixNano())
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0xc7a5))
	t0 := time.Now()
	dir := cfg.Dir
	sum := &Summary{Nodes: cfg.Nodes, KillAfterMin: -1}
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "headscale-crashtest-"); err != nil {
			return nil, err
		}
		defer func() {
			if sum.OK {
				os.RemoveAll(dir)
			} else {
				cfg.logf("state and server log kept in %s", dir)
			}
		}()
	}
	srv, err := NewServer(cfg.Headscale, dir, "", "")
	if err != nil {
		return nil, err
	}
	defer srv.Kill()
	if err := srv.Start(); err != nil {
		return nil, err
	}
	if err := srv.WaitReady(ctx, time.Minute); err != nil {
		return nil, err
	}
	authKey, apiKeyText, err := bootstrap(ctx, srv)
	if err != nil {
		return nil, err
	}
	api := newAPIClient(srv.URL, apiKeyText)
	serverKey, err := loadgen.ServerKey(ctx, srv.URL)
	if err != nil {
		return nil, err
	}

	lc := loadgen.DefaultConfig()
	lc.URL, lc.AuthKey, lc.N, lc.Concurrency, lc.Hostname = srv.URL, authKey, cfg.Nodes, 16, "crash"
	lc.RegisterTimeout, lc.ConvergeTimeout = cfg.ConvergeTimeout, cfg.ConvergeTimeout
	lc.ProbeReconnect = true
	fleet, err := loadgen.StartFleet(ctx, lc)
	if err != nil {
		return nil, err
	}
	defer fleet.Close()
	l := newLedger()
	for i := range fleet.N() {
		l.registered(fleet.MachineKey(i).String(), fleet.Hostname(i), i%cfg.Writers, true, Acked)
	}
	obs, err := api.observe(ctx)
	if err != nil {
		return nil, err
	}
	if probs, _, _, _ := l.verify(obs); len(probs) > 0 {
		return nil, fmt.Errorf("before any kill: %s", probs[0])
	}
	cfg.logf("%d simulated nodes registered and converged; %d iterations", cfg.Nodes, cfg.Iterations)

	var (
		seq              atomic.Int64
		ready, converge  []float64
		admins           []*admin
		killMin, killMax time.Duration = -1, 0
	)
	for w := range cfg.Writers {
		admins = append(admins, &admin{id: w, api: api, l: l, seq: &seq, rng: rand.New(rand.NewPCG(cfg.Seed, uint64(w)+1))})
	}
	for it := 1; it <= cfg.Iterations; it++ {
		if ctx.Err() != nil {
			break
		}
		// Load: extra registrations and admin edits, killed mid-way.
		lctx, stopLoad := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for _, a := range admins {
			wg.Go(func() { a.run(lctx) })
		}
		var started atomic.Int64
		for range cfg.RegConcurrency {
			wg.Go(func() {
				for lctx.Err() == nil && started.Add(1) <= int64(cfg.Registrations) {
					i := seq.Add(1)
					host := fmt.Sprintf("probe-%d", i)
					rctx, cancel := context.WithTimeout(lctx, 20*time.Second)
					reg, err := loadgen.RegisterOne(rctx, srv.URL, serverKey, authKey, host)
					cancel()
					o := Acked
					if err != nil {
						o = Unknown
					}
					l.registered(reg.Machine.String(), host, int(i)%cfg.Writers, false, o)
					if o == Unknown {
						return // the server is gone
					}
				}
			})
		}
		after := cfg.KillMin + time.Duration(rng.Int64N(int64(cfg.KillMax-cfg.KillMin)+1))
		select {
		case <-time.After(after):
		case <-ctx.Done():
		}
		srv.Kill()
		stopLoad()
		wg.Wait()
		killMin, killMax = minDur(killMin, after), max(killMax, after)
		sum.Iterations = it

		// The database as the kill left it.
		if _, err := store.CheckIntegrity(ctx, srv.DB); err != nil {
			sum.IntegrityFailures++
			sum.Problems = appendCapped(sum.Problems, fmt.Sprintf("iteration %d: %v", it, err))
		}
		if fi, err := os.Stat(srv.DB); err == nil {
			sum.DBBytes = fi.Size()
		}
		// Every session ended with the server; wait until the nodes
		// noticed, so convergence is measured afresh.
		deadline := time.Now().Add(30 * time.Second)
		for fleet.ConvergedCount() > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}

		restart := time.Now()
		if err := srv.Start(); err != nil {
			return sum, err
		}
		if err := srv.WaitReady(ctx, time.Minute); err != nil {
			return sum, fmt.Errorf("iteration %d: %w", it, err)
		}
		ready = append(ready, time.Since(restart).Seconds())
		api.hc.CloseIdleConnections()
		obs, err := api.observe(ctx)
		if err != nil {
			return sum, fmt.Errorf("iteration %d: %w", it, err)
		}
		probs, checked, landed, dropped := l.verify(obs)
		sum.Checks += checked
		sum.UnackedLanded += landed
		sum.UnackedDropped += dropped
		sum.Missing += len(probs)
		for _, p := range probs {
			sum.Problems = appendCapped(sum.Problems, fmt.Sprintf("iteration %d: %s", it, p))
		}
		if err := fleet.WaitConverged(ctx, cfg.ConvergeTimeout); err != nil {
			sum.ConvergeFailures++
			sum.Problems = appendCapped(sum.Problems, fmt.Sprintf("iteration %d: %v", it, err))
		} else {
			converge = append(converge, time.Since(restart).Seconds())
		}
		pruneProbes(ctx, l, admins, cfg.KeepProbes)
		cfg.logf("iteration %d: killed %.2fs into the load; acked so far: %d registrations, %d admin writes; missing %d; integrity failures %d; ready %.2fs, converged %.2fs",
			it, after.Seconds(), l.regAcked, l.writesAcked, sum.Missing, sum.IntegrityFailures, ready[len(ready)-1], time.Since(restart).Seconds())
	}
	l.mu.Lock()
	sum.RegAcked, sum.RegUnknown, sum.WritesAcked, sum.WritesRefused, sum.WritesUnknown = l.regAcked, l.regUnknown, l.writesAcked, l.writesRefused, l.writesUnknown
	sum.Refusals = l.refusals
	l.mu.Unlock()
	sum.ReadyP50, sum.ReadyMax = pct(ready, 50), pct(ready, 100)
	sum.ConvergeP50, sum.ConvergeMax = pct(converge, 50), pct(converge, 100)
	sum.KillAfterMin, sum.KillAfterMax = killMin.Seconds(), killMax.Seconds()
	sum.Seconds = time.Since(t0).Seconds()
	sum.OK = sum.Iterations == cfg.Iterations && sum.Missing == 0 && sum.IntegrityFailures == 0 && sum.ConvergeFailures == 0
	return sum, ctx.Err()
}

// bootstrap creates the run's user, a reusable pre-auth key and an API key
// with the CLI (over the server's unix socket).
func bootstrap(ctx context.Context, srv *Server) (authKey, apiKey string, err error) {
	if _, err := srv.CLI(ctx, "users", "create", "crash"); err != nil {
		return "", "", err
	}
	out, err := srv.CLI(ctx, "preauthkeys", "create", "--user", "crash", "--reusable", "-e", "240h", "-o", "json")
	if err != nil {
		return "", "", err
	}
	var pak struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal([]byte(out), &pak); err != nil || pak.Key == "" {
		return "", "", fmt.Errorf("pre-auth key from the CLI: %v %q", err, out)
	}
	out, err = srv.CLI(ctx, "apikeys", "create", "-o", "json")
	if err != nil {
		return "", "", err
	}
	var ak string // a JSON string, as Headscale's CLI prints it
	if err := json.Unmarshal([]byte(out), &ak); err != nil || ak == "" {
		return "", "", fmt.Errorf("API key from the CLI: %v", err)
	}
	return pak.Key, ak, nil
}

// pruneProbes deletes, through the admin writers (so the deletes are
// recorded and checked after the next kill), the extra nodes beyond keep.
func pruneProbes(ctx context.Context, l *ledger, admins []*admin, keep int) {
	l.mu.Lock()
	var probes []*nodeRec
	for _, r := range l.nodes {
		if !r.fleet && r.id != 0 && !r.exist.delTry {
			probes = append(probes, r)
		}
	}
	l.mu.Unlock()
	slices.SortFunc(probes, func(a, b *nodeRec) int { return cmp.Compare(a.id, b.id) })
	for len(probes) > keep && ctx.Err() == nil {
		r := probes[0]
		probes = probes[1:]
		o, err := admins[r.writer].api.do(ctx, "DELETE", fmt.Sprintf("/api/v1/node/%d", r.id), nil, nil)
		l.mu.Lock()
		l.count(o, err)
		if o != Refused {
			r.exist.delTry, r.exist.deleted = true, o
		}
		l.mu.Unlock()
	}
}

func appendCapped(s []string, v string) []string {
	if len(s) < 20 {
		s = append(s, v)
	}
	return s
}

func minDur(a, b time.Duration) time.Duration {
	if a < 0 || b < a {
		return b
	}
	return a
}

// pct is the p-th percentile (nearest rank) of xs; 0 when empty.
func pct(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}
