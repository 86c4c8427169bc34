package crashtest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/loadgen"
	"tailscale.com/types/key"
)

// harness is a running server binary with simulated nodes connected, an
// API key and the ledger of writes made against it.
type harness struct {
	t       *testing.T
	srv     *Server
	api     *apiClient
	authKey string
	srvKey  key.MachinePublic
	fleet   *loadgen.Fleet
	l       *ledger
	seq     atomic.Int64
	admins  []*admin

	stop context.CancelFunc
	wg   sync.WaitGroup
	// regErrs samples registration errors seen by the load.
	mu      sync.Mutex
	regErrs []string
}

// newHarness starts the server (database at db, "" for the default),
// creates the keys and connects nodes simulated nodes.
func newHarness(t *testing.T, bin, db string, nodes int) *harness {
	t.Helper()
	ctx := context.Background()
	srv, err := NewServer(bin, t.TempDir(), db, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Kill)
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, srv: srv, l: newLedger()}
	var apiKey string
	if h.authKey, apiKey, err = bootstrap(ctx, srv); err != nil {
		t.Fatal(err)
	}
	h.api = newAPIClient(srv.URL, apiKey)
	if h.srvKey, err = loadgen.ServerKey(ctx, srv.URL); err != nil {
		t.Fatal(err)
	}
	lc := loadgen.DefaultConfig()
	lc.URL, lc.AuthKey, lc.N, lc.Concurrency, lc.Hostname = srv.URL, h.authKey, nodes, 8, "crash"
	lc.RegisterTimeout, lc.ConvergeTimeout, lc.ProbeReconnect = time.Minute, time.Minute, true
	if h.fleet, err = loadgen.StartFleet(ctx, lc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.fleet.Close)
	for i := range h.fleet.N() {
		h.l.registered(h.fleet.MachineKey(i).String(), h.fleet.Hostname(i), i%2, true, Acked)
	}
	h.check("start")
	for w := range 2 {
		h.admins = append(h.admins, &admin{id: w, api: h.api, l: h.l, seq: &h.seq, rng: rand.New(rand.NewPCG(uint64(w), 1))})
	}
	return h
}

// check compares the server's state (through its API) with the ledger.
func (h *harness) check(when string) {
	h.t.Helper()
	h.api.hc.CloseIdleConnections()
	obs, err := h.api.observe(context.Background())
	if err != nil {
		h.t.Fatalf("%s: %v", when, err)
	}
	probs, _, _, _ := h.l.verify(obs)
	for _, p := range probs {
		h.t.Errorf("%s: %s", when, p)
	}
}

// startLoad runs the admin writers and registrations (one at a time,
// paced by every) until stopLoad. Unlike the crash loop, writers keep
// going after refusals.
func (h *harness) startLoad(every time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	h.stop = cancel
	for _, a := range h.admins {
		h.wg.Go(func() {
			for ctx.Err() == nil {
				a.do(ctx, adminOps[a.rng.IntN(len(adminOps))].name)
				select {
				case <-ctx.Done():
				case <-time.After(every):
				}
			}
		})
	}
	h.wg.Go(func() {
		for ctx.Err() == nil {
			h.registerOne(ctx)
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
		}
	})
}

// registerOne registers one extra node and records it; it returns the
// error.
func (h *harness) registerOne(ctx context.Context) error {
	i := h.seq.Add(1)
	host := fmt.Sprintf("probe-%d", i)
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	reg, err := loadgen.RegisterOne(rctx, h.srv.URL, h.srvKey, h.authKey, host)
	cancel()
	if ctx.Err() != nil {
		return err
	}
	o := Acked
	if err != nil {
		// A refusal comes with an answer; only the text tells it from a
		// lost connection, and this load never loses one.
		o = Refused
		h.mu.Lock()
		if len(h.regErrs) < 5 {
			h.regErrs = append(h.regErrs, err.Error())
		}
		h.mu.Unlock()
	}
	h.l.registered(reg.Machine.String(), host, int(i)%2, false, o)
	return err
}

func (h *harness) stopLoad() {
	h.stop()
	h.wg.Wait()
}

// acked is the number of acknowledged registrations and admin writes.
func (h *harness) acked() (regs, writes int) {
	h.l.mu.Lock()
	defer h.l.mu.Unlock()
	return h.l.regAcked, h.l.writesAcked
}
