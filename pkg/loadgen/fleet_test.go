package loadgen_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/internal/tstest"
	"github.com/hsctl/headscale/pkg/loadgen"
)

// TestFleet keeps 50 simulated nodes connected while two more (another
// fleet) join: the first fleet stays converged and its nodes' netmaps
// list the newcomers, online.
func TestFleet(t *testing.T) {
	ts := servertest.Start(t, servertest.Options{DiscardLogs: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cfg := loadgen.DefaultConfig()
	cfg.URL = ts.URL
	cfg.AuthKey = ts.CreatePreAuthKey(t, ts.CreateUser(t, "load"), true, time.Time{})
	cfg.N = 50
	cfg.Concurrency = 16
	cfg.RegisterTimeout = time.Minute
	cfg.ConvergeTimeout = time.Minute
	if testing.Verbose() {
		cfg.Logf = t.Logf
	}
	f, err := loadgen.StartFleet(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.Converged() || f.N() != 50 || f.ConvergedCount() != 50 {
		t.Fatalf("fleet of %d started with %d converged", f.N(), f.ConvergedCount())
	}
	t.Logf("50 nodes registered in %.2fs, converged after %.2fs", f.Register.Metrics["register_s"], f.Register.Metrics["converge_s"])

	cfg2 := cfg
	cfg2.N = 2
	cfg2.Hostname = "joiner"
	g, err := loadgen.StartFleet(ctx, cfg2)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()

	want := map[string]bool{g.Hostname(0): true, g.Hostname(1): true}
	for i := 1; i < f.N(); i++ {
		want[f.Hostname(i)] = true
	}
	tstest.WaitFor(t, 30*time.Second, "node 0's netmap to list the others online", func() error {
		peers, err := f.Peers(ctx, 0)
		if err != nil {
			return tstest.Permanent(err)
		}
		online := 0
		for _, p := range peers {
			if want[p.Hostname] && p.Online && len(p.Addresses) > 0 {
				online++
			}
		}
		if online != len(want) || len(peers) != len(want) {
			return fmt.Errorf("%d peers, %d of the %d expected online", len(peers), online, len(want))
		}
		return nil
	})
	if err := f.WaitConverged(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if e := f.StreamEnds(); e != 0 {
		t.Errorf("%d map streams ended while the fleet ran", e)
	}
	if f.BytesReceived() <= 0 {
		t.Error("no bytes received")
	}
	f.Close()
	f.Close() // idempotent
	if f.Converged() {
		t.Error("converged after Close")
	}
}
