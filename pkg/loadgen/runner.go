package loadgen

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"tailscale.com/control/tsp"
	"tailscale.com/types/key"
)

// runner holds one load run: the simulated nodes and what is measured.
type runner struct {
	urls      []string // cfg.URLs(): node i talks to urls[i%len]
	cfg       Config
	codec     *epCodec
	memo      *memo
	serverKey key.MachinePublic
	runID     string
	rng       *mrand.Rand // used only by the goroutine running the phases

	nodes   []*node
	slots   []*slot // the watched nodes
	slotOf  []int16 // node index -> slot, -1 if not watched
	slowIdx int32   // the slow-reader node, -1 if none

	nctx      context.Context // the nodes' lifetime
	stopNodes context.CancelFunc
	wg        sync.WaitGroup // the nodes' map loops

	regMu    sync.RWMutex
	registry map[int64]int32 // node ID -> index, from each node's own map
	// idOf is each node's ID as the registry has it (0: not yet), so
	// peer entries teach the registry an ID once, without its lock.
	idOf []atomic.Int64

	converged  atomic.Int64 // nodes holding every peer in their current session
	rxWire     atomic.Int64 // bytes read from the nodes' TCP connections
	rxMap      atomic.Int64 // map frame bytes as sent (length prefix included)
	rxJSON     atomic.Int64 // map frame bytes after decompression
	frames     atomic.Int64
	streamEnds atomic.Int64
	cur        atomic.Pointer[phase]
	bufs       sync.Pool // *[]byte frame buffers
	frameMem   *memBudget

	srvs    []*procWatch // cfg.ServerPIDs
	self    *procWatch
	scrape  *scraper // cfg.MetricsURLs and cfg.PGDSN; nil without either
	memBase runtime.MemStats
}

// slot is one watched node: the endpoint changes it made, by sequence
// number, and the newest one the server acknowledged.
type slot struct {
	idx     int32
	mu      sync.Mutex
	changes []*change // index: seq; [0] is the initial endpoint, not a change
	acked   atomic.Int32
}

func (s *slot) add(c *change) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.changes) <= int(c.seq) {
		s.changes = append(s.changes, nil)
	}
	s.changes[c.seq] = c
}

func (s *slot) ack(seq int32) {
	for {
		cur := s.acked.Load()
		if seq <= cur || s.acked.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// deliver tells every change in seq range [from, to] that receiver rcv
// now has it (a newer value supersedes the older ones).
func (s *slot) deliver(from, to, rcv int32, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for q := from; q <= to && int(q) < len(s.changes); q++ {
		if c := s.changes[q]; c != nil {
			c.deliver(rcv, now)
		}
	}
}

// change is one endpoint change, followed until every receiver has it.
type change struct {
	slot      int16
	seq       int32
	sent      time.Time
	ph        *phase
	exclude   int32 // a receiver that does not count (the slow node); -1: none
	from      int32 // the sending node
	servers   int32 // how many servers the nodes are spread over (node i on i mod servers)
	expect    int32
	keep      bool // keep every latency sample
	failed    atomic.Bool
	delivered int32           // guarded by the slot's mu
	samples   []time.Duration // guarded by the slot's mu
	done      chan struct{}   // closed when delivered reaches expect
}

func (c *change) deliver(rcv int32, now time.Time) {
	if rcv == c.exclude || c.failed.Load() || c.delivered >= c.expect {
		return
	}
	d := now.Sub(c.sent)
	c.ph.record(d, c.servers > 1 && rcv%c.servers != c.from%c.servers)
	if c.keep {
		c.samples = append(c.samples, d)
	}
	c.delivered++
	if c.delivered == c.expect {
		close(c.done)
	}
}

// snapshot returns how many receivers have the change and their latencies.
func (r *runner) snapshot(c *change) (int32, []time.Duration) {
	s := r.slots[c.slot]
	s.mu.Lock()
	defer s.mu.Unlock()
	return c.delivered, slices.Clone(c.samples)
}

// phase collects what happens during one phase.
type phase struct {
	name   string
	closed atomic.Bool
	mu     sync.Mutex
	hist   histogram
	// same and cross split hist by receiver: on the sender's server or
	// on another (only with several servers).
	same, cross histogram
	split       bool
	regressed   atomic.Int64
	regSamples  []string
	afterClose  atomic.Int64
}

func (p *phase) record(d time.Duration, cross bool) {
	if p.closed.Load() {
		p.afterClose.Add(1)
		return
	}
	p.mu.Lock()
	p.hist.add(d)
	if p.split {
		if cross {
			p.cross.add(d)
		} else {
			p.same.add(d)
		}
	}
	p.mu.Unlock()
}

// reset forgets the latencies recorded so far.
func (p *phase) reset() {
	p.mu.Lock()
	p.hist, p.same, p.cross = histogram{}, histogram{}, histogram{}
	p.mu.Unlock()
}

func (r *runner) noteRegression(rcv, peer, had, got int32) {
	p := r.cur.Load()
	if p == nil {
		return
	}
	p.regressed.Add(1)
	p.mu.Lock()
	if len(p.regSamples) < 5 {
		p.regSamples = append(p.regSamples, fmt.Sprintf("node %d saw node %d's endpoint go back from #%d to #%d", rcv, peer, had, got))
	}
	p.mu.Unlock()
}

func (r *runner) learnID(id int64, idx int32) {
	r.regMu.Lock()
	r.registry[id] = idx
	r.regMu.Unlock()
	r.idOf[idx].Store(id)
}

// learnPeerID records a peer entry's node ID for its index: an online
// change names its peer only by ID, and may arrive before the peer's own
// first map taught the registry.
func (r *runner) learnPeerID(id int64, idx int32) {
	if id != 0 && r.idOf[idx].Load() != id {
		r.learnID(id, idx)
	}
}

func (r *runner) lookupID(id int64) (int32, bool) {
	r.regMu.RLock()
	defer r.regMu.RUnlock()
	idx, ok := r.registry[id]
	return idx, ok
}

func (r *runner) logf(format string, args ...any) {
	if r.cfg.Logf != nil {
		r.cfg.Logf(format, args...)
	}
}

// Run simulates cfg.N nodes against the server and runs the phases. The
// report is returned even when a phase fails; err is for a run that could
// not start (bad config, server unreachable).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	slow := cfg.setDefaults()
	r := newRunner(cfg)
	rep := &Report{
		URL: cfg.URL, N: cfg.N, Concurrency: cfg.Concurrency, Watch: cfg.Watch, Compress: cfg.Compress,
		Seed: cfg.Seed, RunID: r.runID, Started: time.Now().UTC(), GoMaxProcs: runtime.GOMAXPROCS(0),
	}

	if err := r.discoverKey(ctx); err != nil {
		return rep, err
	}
	var err error
	for _, pid := range cfg.ServerPIDs {
		w, err := newProcWatch(pid, cfg.SampleEvery)
		if err != nil {
			return rep, fmt.Errorf("--server-pid %d: %w", pid, err)
		}
		r.srvs = append(r.srvs, w)
		defer w.close()
	}
	if len(cfg.MetricsURLs) > 0 || cfg.PGDSN != "" {
		if r.scrape, err = newScraper(ctx, cfg.MetricsURLs, cfg.PGDSN); err != nil {
			return rep, err
		}
		defer r.scrape.close()
	}
	if r.self, err = newProcWatch(os.Getpid(), cfg.SampleEvery); err != nil {
		r.self = nil // not Linux: no tool figures
	} else {
		defer r.self.close()
	}

	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&r.memBase)
	r.makeNodes(slow)
	r.nctx, r.stopNodes = context.WithCancel(context.Background())
	defer r.shutdown()
	r.logf("run %s: %d nodes against %s (watch %d, compress %v, seed %d)", r.runID, cfg.N, cfg.URL, cfg.Watch, cfg.Compress, cfg.Seed)

	steps := []struct {
		name string
		fn   func(context.Context, *phase, *PhaseResult)
		tmo  time.Duration
	}{
		{PhaseRegister, r.phaseRegister, 0}, // bounded inside
		{PhasePropagate, r.phasePropagate, cfg.PropagateTimeout},
		{PhaseChurn, r.phaseChurn, cmp0(cfg.ChurnTimeout, cfg.ChurnDuration+cfg.ChurnGrace+time.Minute)},
		{PhaseReconnect, r.phaseReconnect, cfg.ReconnectTimeout},
		{PhaseSlow, r.phaseSlow, cfg.SlowTimeout},
	}
	ready := true
	for _, st := range steps {
		if !cfg.wants(st.name) {
			continue
		}
		if ctx.Err() != nil {
			rep.Phases = append(rep.Phases, &PhaseResult{Name: st.name, Skipped: "interrupted"})
			continue
		}
		if !ready {
			why := "the nodes did not converge"
			if r.registeredCount() < cfg.N {
				why = "not every node registered"
			}
			rep.Phases = append(rep.Phases, &PhaseResult{Name: st.name, Skipped: why})
			continue
		}
		if st.name == PhaseSlow && !slow {
			rep.Phases = append(rep.Phases, &PhaseResult{Name: st.name, Skipped: "needs at least 3 nodes"})
			continue
		}
		res := r.runPhase(ctx, st.name, st.tmo, st.fn)
		rep.Phases = append(rep.Phases, res)
		if st.name == PhaseRegister {
			rep.Memory = r.memory()
		}
		// Later phases need every node holding every peer.
		if r.registeredCount() < cfg.N {
			ready = false
		} else if !r.allConverged() {
			r.logf("not every node holds every peer after %s; waiting up to %v", st.name, cfg.ConvergeTimeout)
			if !r.waitUntil(ctx, cfg.ConvergeTimeout, r.allConverged) {
				ready = false
			}
		}
	}
	rep.OK = true
	for _, p := range rep.Phases {
		if p.Skipped != "" || !p.OK {
			rep.OK = false
		}
	}
	return rep, nil
}

// setDefaults fills in the seed, the watched node count and the API URL,
// and reports whether the slow phase will run.
func (cfg *Config) setDefaults() (slow bool) {
	if cfg.Seed == 0 {
		cfg.Seed = time.Now().UnixNano()
	}
	slow = cfg.wants(PhaseSlow) && cfg.N >= 3
	if cfg.Watch == 0 {
		cfg.Watch = min(cfg.N, 256)
	}
	cfg.Watch = min(cfg.Watch, cfg.N, 1<<15-1)
	if slow {
		cfg.Watch = min(cfg.Watch, cfg.N-1)
	}
	if cfg.APIURL == "" {
		cfg.APIURL = cfg.URLs()[0]
	}
	return slow
}

// newRunner returns a runner for cfg (defaults set) with a fresh run ID
// and no nodes yet.
func newRunner(cfg Config) *runner {
	var idb [4]byte
	rand.Read(idb[:])
	return &runner{
		cfg:      cfg,
		codec:    newEPCodec(),
		memo:     newMemo(),
		runID:    hex.EncodeToString(idb[:]),
		rng:      mrand.New(mrand.NewPCG(uint64(cfg.Seed), 0x10ad)),
		registry: make(map[int64]int32, cfg.N),
		idOf:     make([]atomic.Int64, cfg.N),
		urls:     cfg.URLs(),
		slowIdx:  -1,
		frameMem: newMemBudget(cfg.FrameMemory),
	}
}

// discoverKey fetches the server's Noise public key.
func (r *runner) discoverKey(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for i, u := range r.cfg.URLs() {
		k, err := tsp.DiscoverServerKey(dctx, u)
		if err != nil {
			return fmt.Errorf("fetching the server's Noise key from %s: %w", u, err)
		}
		if i > 0 && k != r.serverKey {
			// Clients pin one key: servers of one tailnet share it.
			return fmt.Errorf("%s has another Noise key than %s: servers of one tailnet need the same noise private key", u, r.cfg.URLs()[0])
		}
		r.serverKey = k
	}
	return nil
}

func cmp0(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

func (r *runner) makeNodes(slow bool) {
	n := r.cfg.N
	perm := r.rng.Perm(n)
	r.slotOf = make([]int16, n)
	for i := range r.slotOf {
		r.slotOf[i] = -1
	}
	for s, idx := range perm[:r.cfg.Watch] {
		r.slotOf[idx] = int16(s)
		sl := &slot{idx: int32(idx), changes: make([]*change, 1)}
		r.slots = append(r.slots, sl)
	}
	if slow {
		r.slowIdx = int32(perm[r.cfg.Watch])
	}
	r.nodes = make([]*node, n)
	for i := range r.nodes {
		seqs := make([]int32, len(r.slots))
		for s := range seqs {
			seqs[s] = -1
		}
		nk := key.NewNode()
		r.nodes[i] = &node{
			r:       r,
			idx:     int32(i),
			slot:    r.slotOf[i],
			slow:    int32(i) == r.slowIdx,
			name:    fmt.Sprintf("%s-%s-%d", r.cfg.Hostname, r.runID, i),
			machine: key.NewMachine(),
			nodeKey: nk,
			nodePub: nk.Public(),
			disco:   key.NewDisco().Public(),
			known:   make([]uint64, (n+63)/64),
			offline: make([]uint64, (n+63)/64),
			seqs:    seqs,
		}
	}
}

func (r *runner) shutdown() {
	r.stopNodes()
	for _, n := range r.nodes {
		n.resume()
		n.mu.Lock()
		if n.nc != nil {
			n.nc.Close()
			n.nc = nil
		}
		n.mu.Unlock()
	}
	r.wg.Wait()
}

func (r *runner) registeredCount() int {
	c := 0
	for _, n := range r.nodes {
		if n.registered.Load() {
			c++
		}
	}
	return c
}

func (r *runner) allConverged() bool { return r.converged.Load() == int64(len(r.nodes)) }

// waitUntil polls cond until it holds, the timeout passes or ctx ends.
func (r *runner) waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return cond()
		case <-t.C:
		}
	}
}

// runPhase runs one phase with the figures every phase reports.
func (r *runner) runPhase(ctx context.Context, name string, timeout time.Duration, fn func(context.Context, *phase, *PhaseResult)) *PhaseResult {
	p := &phase{name: name, split: len(r.urls) > 1}
	r.cur.Store(p)
	res := &PhaseResult{Name: name, Metrics: map[string]float64{}}
	wire0, map0, json0, frames0, ends0 := r.rxWire.Load(), r.rxMap.Load(), r.rxJSON.Load(), r.frames.Load(), r.streamEnds.Load()
	full0 := r.fullMapCount()
	for _, w := range r.srvs {
		w.begin()
	}
	var before scrapeSample
	if r.scrape != nil {
		before = r.scrape.sample(ctx)
	}
	if r.self != nil {
		r.self.begin()
	}
	r.logf("phase %s: start", name)
	pctx := ctx
	if timeout > 0 {
		var cancel context.CancelFunc
		pctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	t0 := time.Now()
	fn(pctx, p, res)
	res.WallSeconds = time.Since(t0).Seconds()
	if pctx.Err() != nil && ctx.Err() == nil {
		res.errorf("phase time limit (%v) reached", timeout)
	} else if ctx.Err() != nil {
		res.errorf("interrupted")
	}
	p.closed.Store(true)
	res.Regressed = p.regressed.Load()
	p.mu.Lock()
	res.RegressionSamples = p.regSamples
	if res.Latency == nil && p.hist.n > 0 {
		l := p.hist.summary()
		res.Latency = &l
	}
	if p.split && p.hist.n > 0 {
		same, cross := p.same.summary(), p.cross.summary()
		res.SameServer, res.CrossServer = &same, &cross
	}
	p.mu.Unlock()
	res.check("no regressed endpoint", res.Regressed == 0, fmt.Sprintf("%d regressions", res.Regressed))
	res.BytesReceived = r.rxWire.Load() - wire0
	res.MapBytes = r.rxMap.Load() - map0
	res.DecodedBytes = r.rxJSON.Load() - json0
	res.Frames = r.frames.Load() - frames0
	res.StreamEnds = r.streamEnds.Load() - ends0
	res.FullMaps = r.fullMapCount() - full0
	if len(r.srvs) > 0 {
		sum := ProcUsage{}
		for _, w := range r.srvs {
			u, err := w.end()
			if err != nil {
				res.errorf("server process %d: %v", w.pid, err)
			}
			sum.CPUSeconds += u.CPUSeconds
			sum.PeakRSSBytes += u.PeakRSSBytes
			sum.HWMBytes += u.HWMBytes
			if len(r.srvs) > 1 {
				res.Servers = append(res.Servers, u)
			} else {
				sum.PID = u.PID
			}
		}
		res.Server = &sum
	}
	if r.scrape != nil {
		// An interrupted phase still gets its figures.
		r.scrape.report(before, r.scrape.sample(context.WithoutCancel(ctx)), res)
	}
	if r.self != nil {
		u, _ := r.self.end()
		res.Tool = &u
	}
	res.OK = len(res.Errors) == 0
	for _, c := range res.Checks {
		res.OK = res.OK && c.OK
	}
	r.logf("phase %s: done in %.2fs ok=%v", name, res.WallSeconds, res.OK)
	return res
}

// staleCheck checks that every node holds the newest acknowledged
// endpoint of every watched node.
func (r *runner) staleCheck(res *PhaseResult) {
	var stale int64
	detail := ""
	for _, n := range r.nodes {
		if !n.registered.Load() {
			continue
		}
		n.rmu.Lock()
		for s, sl := range r.slots {
			if int16(s) == n.slot {
				continue
			}
			if a := sl.acked.Load(); n.seqs[s] < a {
				stale++
				if detail == "" {
					detail = fmt.Sprintf("; e.g. node %d has node %d's endpoint #%d, newest is #%d", n.idx, sl.idx, n.seqs[s], a)
				}
			}
		}
		n.rmu.Unlock()
	}
	res.Stale = stale
	res.check("every node has every watched node's newest endpoint", stale == 0, fmt.Sprintf("%d stale (node, peer) pairs%s", stale, detail))
}

// pickSlot picks a random watched node other than not.
func (r *runner) pickSlot(not int16) int16 {
	for {
		s := int16(r.rng.IntN(len(r.slots)))
		if s != not || len(r.slots) == 1 {
			return s
		}
	}
}

// change makes watched node s move to its next endpoint.
func (r *runner) change(ctx context.Context, s int16, p *phase, exclude int32, keep bool) (*change, error) {
	sl := r.slots[s]
	n := r.nodes[sl.idx]
	expect := int32(len(r.nodes) - 1)
	if exclude >= 0 && exclude != sl.idx {
		expect--
	}
	c, err := n.sendEndpoints(ctx, func(seq int32) *change {
		c := &change{slot: s, seq: seq, sent: time.Now(), ph: p, exclude: exclude, from: sl.idx, servers: int32(len(r.urls)),
			expect: expect, keep: keep, done: make(chan struct{})}
		if expect <= 0 {
			close(c.done)
		}
		sl.add(c)
		return c
	})
	if err != nil {
		if c != nil {
			c.failed.Store(true)
		}
		return nil, err
	}
	sl.ack(c.seq)
	return c, nil
}

// waitChanges waits until every change reached every receiver, or ctx or
// the timeout ends; it returns how many deliveries are missing.
func (r *runner) waitChanges(ctx context.Context, timeout time.Duration, cs []*change) int64 {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for _, c := range cs {
		select {
		case <-c.done:
			continue
		case <-t.C:
		case <-ctx.Done():
		}
		break
	}
	var missing int64
	for _, c := range cs {
		d, _ := r.snapshot(c)
		missing += int64(c.expect - d)
	}
	return missing
}

// measureChanges makes k changes one at a time, each waited for until
// every node has it, and returns every latency sample.
func (r *runner) measureChanges(ctx context.Context, p *phase, res *PhaseResult, k int, exclude int32) []time.Duration {
	var all []time.Duration
	prev := int16(-1)
	for i := 0; i < k && ctx.Err() == nil; i++ {
		s := r.pickSlot(prev)
		prev = s
		res.Sent++
		c, err := r.change(ctx, s, p, exclude, true)
		if err != nil {
			res.SendErrors++
			res.errorf("endpoint update from node %d: %v", r.slots[s].idx, err)
			continue
		}
		missing := r.waitChanges(ctx, r.cfg.ChangeTimeout, []*change{c})
		d, samples := r.snapshot(c)
		all = append(all, samples...)
		res.Lost += missing
		res.Changes = append(res.Changes, ChangeResult{Node: r.slots[s].idx, Seq: c.seq, Delivered: d, Expected: c.expect, Latency: summarize(samples)})
	}
	l := summarize(slices.Clone(all))
	res.Latency = &l
	return all
}

func (r *runner) phaseRegister(ctx context.Context, p *phase, res *PhaseResult) {
	cfg := r.cfg
	t0 := time.Now()
	rctx, cancel := context.WithTimeout(ctx, cfg.RegisterTimeout)
	defer cancel()
	var (
		wg      sync.WaitGroup
		failed  atomic.Int64
		errOnce sync.Once
		done    atomic.Int64
	)
	stopProgress := r.progress(func() string {
		return fmt.Sprintf("registered %d/%d, converged %d/%d", done.Load(), cfg.N, r.converged.Load(), cfg.N)
	})
	sem := make(chan struct{}, cfg.Concurrency)
launch:
	for _, n := range r.nodes {
		select {
		case sem <- struct{}{}:
		case <-rctx.Done():
			break launch
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			var err error
			for attempt := 0; attempt < 3; attempt++ {
				if attempt > 0 {
					select {
					case <-rctx.Done():
					case <-time.After(time.Duration(attempt) * 250 * time.Millisecond):
					}
				}
				if err = n.register(rctx); err == nil || rctx.Err() != nil {
					break
				}
			}
			if err != nil {
				failed.Add(1)
				errOnce.Do(func() { res.errorf("registering node %d: %v", n.idx, err) })
				return
			}
			done.Add(1)
			r.wg.Add(1)
			go n.run(r.nctx)
		}()
	}
	wg.Wait()
	regDur := time.Since(t0)
	registered := r.registeredCount()
	res.Metrics["register_s"] = regDur.Seconds()
	res.Metrics["registered"] = float64(registered)
	res.check("every node registered", registered == cfg.N, fmt.Sprintf("%d of %d (%d failed)", registered, cfg.N, failed.Load()))
	r.logf("registered %d/%d in %.2fs", registered, cfg.N, regDur.Seconds())

	// Without every node, "every node holds all N-1 peers" cannot happen.
	conv := registered == cfg.N && r.waitUntil(ctx, cfg.ConvergeTimeout, r.allConverged)
	stopProgress()
	total := time.Since(t0)
	res.Metrics["converge_s"] = total.Seconds()
	res.Metrics["converge_after_register_s"] = (total - regDur).Seconds()
	res.Metrics["converged"] = float64(r.converged.Load())
	res.check("every node holds all N-1 peers", conv, fmt.Sprintf("%d of %d converged", r.converged.Load(), cfg.N))
	r.onlineCheck(ctx, res)
	r.staleCheck(res)
	r.apiCheck(ctx, res)
}

// onlineCheck: every node runs a session now, so no node's stream may
// leave a peer offline. The last online changes may still be on their way;
// give them ten seconds.
func (r *runner) onlineCheck(ctx context.Context, res *PhaseResult) {
	count := func() (nodes, peers, most int) {
		for _, n := range r.nodes {
			if c := n.offlinePeers(); c > 0 {
				nodes++
				peers += c
				most = max(most, c)
			}
		}
		return nodes, peers, most
	}
	r.waitUntil(ctx, 10*time.Second, func() bool { n, _, _ := count(); return n == 0 })
	nodes, peers, most := count()
	res.Metrics["nodes_seeing_online_peers_offline"] = float64(nodes)
	res.check("every node sees its peers online", nodes == 0,
		fmt.Sprintf("%d nodes hold %d online peers as offline (at most %d each)", nodes, peers, most))
}

// progress logs a status line every few seconds until stopped.
func (r *runner) progress(line func() string) (stop func()) {
	if r.cfg.Logf == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				r.logf("  %s", line())
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func (r *runner) phasePropagate(ctx context.Context, p *phase, res *PhaseResult) {
	r.measureChanges(ctx, p, res, r.cfg.Changes, -1)
	res.check("no change lost", res.Lost == 0, fmt.Sprintf("%d deliveries missing after %v", res.Lost, r.cfg.ChangeTimeout))
	res.check("no update failed", res.SendErrors == 0, fmt.Sprintf("%d endpoint updates failed", res.SendErrors))
	r.staleCheck(res)
}

// sendPaced makes endpoint changes from random watched nodes at rate per
// second, for dur or until count were sent (count > 0), each in its own
// goroutine (a node's own changes go out one at a time). It returns the
// changes the server acknowledged.
func (r *runner) sendPaced(ctx context.Context, p *phase, res *PhaseResult, rate float64, count int, dur time.Duration, exclude int32) []*change {
	interval := time.Duration(float64(time.Second) / rate)
	t0 := time.Now()
	end := t0.Add(dur)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		changes []*change
		errs    int64
		behind  int64
		sent    int
	)
	sem := make(chan struct{}, 512)
	next := t0
	for ctx.Err() == nil && (count > 0 && sent < count || count <= 0 && next.Before(end)) {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		s := r.pickSlot(-1)
		select {
		case sem <- struct{}{}:
		default:
			behind++
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				continue
			}
		}
		sent++
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c, err := r.change(ctx, s, p, exclude, false)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				if errs == 1 {
					res.errorf("endpoint update from node %d: %v", r.slots[s].idx, err)
				}
				return
			}
			changes = append(changes, c)
		}()
	}
	wg.Wait()
	d := time.Since(t0)
	res.Sent += int64(sent)
	res.SendErrors += errs
	res.Metrics["sent_per_s"] = float64(sent) / d.Seconds()
	res.Metrics["send_s"] = d.Seconds()
	res.Metrics["sender_backlogged"] = float64(behind)
	return changes
}

func (r *runner) phaseChurn(ctx context.Context, p *phase, res *PhaseResult) {
	cfg := r.cfg
	changes := r.sendPaced(ctx, p, res, cfg.ChurnRate, 0, cfg.ChurnDuration, -1)
	t1 := time.Now()
	res.Lost = r.waitChanges(ctx, cfg.ChurnGrace, changes)
	res.Metrics["settle_s"] = time.Since(t1).Seconds()
	res.check("no change lost", res.Lost == 0, fmt.Sprintf("%d deliveries missing %v after the last change", res.Lost, cfg.ChurnGrace))
	res.check("no update failed", res.SendErrors == 0, fmt.Sprintf("%d endpoint updates failed", res.SendErrors))
	r.staleCheck(res)
}

func (r *runner) phaseReconnect(ctx context.Context, p *phase, res *PhaseResult) {
	sessions0 := r.sessionCount()
	t0 := time.Now()
	for _, n := range r.nodes {
		if n.registered.Load() {
			n.drop()
		}
	}
	res.Metrics["drop_s"] = time.Since(t0).Seconds()
	stop := r.progress(func() string { return fmt.Sprintf("reconverged %d/%d", r.converged.Load(), len(r.nodes)) })
	ok := r.waitUntil(ctx, r.cfg.ReconnectTimeout, r.allConverged)
	stop()
	res.Metrics["converge_s"] = time.Since(t0).Seconds()
	var last int64
	for _, n := range r.nodes {
		last = max(last, n.lastFull.Load())
	}
	if last > 0 {
		res.Metrics["last_full_map_s"] = time.Unix(0, last).Sub(t0).Seconds()
	}
	res.Metrics["new_sessions"] = float64(r.sessionCount() - sessions0)
	res.check("every node reconnected and holds all N-1 peers", ok, fmt.Sprintf("%d of %d converged", r.converged.Load(), len(r.nodes)))
	r.staleCheck(res)
	r.apiCheck(ctx, res)
}

func (r *runner) fullMapCount() int64 {
	var s int64
	for _, n := range r.nodes {
		s += n.fullMaps.Load()
	}
	return s
}

func (r *runner) sessionCount() int64 {
	var s int64
	for _, n := range r.nodes {
		s += n.sessions.Load()
	}
	return s
}

func (r *runner) phaseSlow(ctx context.Context, p *phase, res *PhaseResult) {
	cfg := r.cfg
	sn := r.nodes[r.slowIdx]
	full0, sess0 := sn.fullMaps.Load(), sn.sessions.Load()
	res.Metrics["slow_node"] = float64(sn.idx)
	sn.pause()
	paused := true
	defer func() {
		if paused {
			sn.resume()
		}
	}()

	// Fill whatever the server buffers for the stopped node.
	t0 := time.Now()
	var fill []*change
	if cfg.SlowFill > 0 {
		fill = r.sendPaced(ctx, p, res, cfg.SlowFillRate, cfg.SlowFill, 0, sn.idx)
	}
	fillLost := r.waitChanges(ctx, cfg.ChangeTimeout, fill)
	res.Metrics["fill_changes"] = float64(len(fill))
	res.Metrics["fill_s"] = time.Since(t0).Seconds()
	p.mu.Lock()
	fh := p.hist.summary()
	p.mu.Unlock()
	p.reset()
	res.Metrics["fill_p50_ms"], res.Metrics["fill_p99_ms"], res.Metrics["fill_max_ms"] = fh.P50, fh.P99, fh.Max

	// Measure propagation to everyone else while the node still reads nothing.
	r.measureChanges(ctx, p, res, cfg.Changes, sn.idx)
	res.Lost += fillLost

	// Let it read again: it must catch up (queued frames, a resync or a
	// reconnect, whichever the server chose).
	sn.resume()
	paused = false
	t1 := time.Now()
	caught := r.waitUntil(ctx, cfg.ChangeTimeout, sn.caughtUp)
	res.Metrics["catchup_s"] = time.Since(t1).Seconds()
	res.Metrics["slow_full_maps"] = float64(sn.fullMaps.Load() - full0)
	res.Metrics["slow_new_sessions"] = float64(sn.sessions.Load() - sess0)
	res.check("no change lost for the reading nodes", res.Lost == 0, fmt.Sprintf("%d deliveries missing", res.Lost))
	res.check("no update failed", res.SendErrors == 0, fmt.Sprintf("%d endpoint updates failed", res.SendErrors))
	res.check("the slow node caught up after reading again", caught, fmt.Sprintf("not caught up %v after resuming", cfg.ChangeTimeout))
	r.staleCheck(res)
}

// memory measures what the simulated nodes cost this process.
func (r *runner) memory() *ClientMemory {
	// Two cycles: the first moves pooled buffers to the victim cache, the
	// second frees them.
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	n := float64(len(r.nodes))
	cm := &ClientMemory{
		Nodes:             len(r.nodes),
		HeapInuseBytes:    int64(m.HeapInuse),
		HeapBytesPerNode:  (float64(m.HeapInuse) - float64(r.memBase.HeapInuse)) / n,
		StackBytesPerNode: (float64(m.StackInuse) - float64(r.memBase.StackInuse)) / n,
		Goroutines:        runtime.NumGoroutine(),
	}
	cm.GoroutinesPerNode = float64(cm.Goroutines) / n
	if rss, _, err := procMem(os.Getpid()); err == nil {
		cm.RSSBytes = rss
	}
	if r.cfg.MemProfile != "" {
		if f, err := os.Create(r.cfg.MemProfile); err == nil {
			pprof.WriteHeapProfile(f)
			f.Close()
		} else {
			r.logf("memprofile: %v", err)
		}
	}
	r.logf("client memory: %.1f KiB heap + %.1f KiB stack per node, %d goroutines", cm.HeapBytesPerNode/1024, cm.StackBytesPerNode/1024, cm.Goroutines)
	return cm
}
