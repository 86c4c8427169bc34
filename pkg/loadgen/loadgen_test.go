package loadgen_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/internal/servertest"
	"github.com/hsctl/headscale/pkg/loadgen"
)

func TestSmokeAllPhases(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 200 simulated nodes")
	}
	ts := servertest.Start(t, servertest.Options{DiscardLogs: true})

	cfg := loadgen.DefaultConfig()
	cfg.URL = ts.URL
	cfg.AuthKey = ts.CreatePreAuthKey(t, ts.CreateUser(t, "load"), true, time.Time{})
	cfg.APIKey = ts.CreateAPIKey(t, time.Time{})
	cfg.N = 200
	cfg.Concurrency = 16
	cfg.Changes = 5
	cfg.ChurnRate = 40
	cfg.ChurnDuration = 2 * time.Second
	cfg.ChurnGrace = 20 * time.Second
	cfg.SlowFill = 600
	cfg.SlowFillRate = 300
	cfg.ServerPIDs = []int{os.Getpid()} // the server runs in this process
	cfg.RegisterTimeout = time.Minute
	cfg.ConvergeTimeout = time.Minute
	cfg.ChangeTimeout = 20 * time.Second
	if testing.Verbose() {
		cfg.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := loadgen.Run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var table bytes.Buffer
	rep.WriteTable(&table)
	t.Logf("\n%s", table.String())
	if err := rep.WriteJSONFile(filepath.Join(t.TempDir(), "report.json")); err != nil {
		t.Fatal(err)
	}

	// Validations only; timings are the tool's output, not assertions.
	if len(rep.Phases) != len(loadgen.AllPhases()) {
		t.Fatalf("ran %d phases, want %d", len(rep.Phases), len(loadgen.AllPhases()))
	}
	for _, p := range rep.Phases {
		if p.Skipped != "" {
			t.Errorf("%s skipped: %s", p.Name, p.Skipped)
			continue
		}
		for _, c := range p.Checks {
			if !c.OK {
				t.Errorf("%s: %s: %s", p.Name, c.Name, c.Detail)
			}
		}
		for _, e := range p.Errors {
			t.Errorf("%s: %s", p.Name, e)
		}
		if p.Lost != 0 || p.Regressed != 0 || p.Stale != 0 {
			t.Errorf("%s: lost %d, regressed %d, stale %d", p.Name, p.Lost, p.Regressed, p.Stale)
		}
		if p.Server == nil || p.Server.CPUSeconds <= 0 || p.Server.PeakRSSBytes <= 0 {
			t.Errorf("%s: no server figures: %+v", p.Name, p.Server)
		}
		if p.BytesReceived <= 0 {
			t.Errorf("%s: no bytes received", p.Name)
		}
	}
	reg := rep.Phase(loadgen.PhaseRegister)
	if got := reg.Metrics["api_nodes_ours"]; got != 200 {
		t.Errorf("API lists %v of the 200 nodes", got)
	}
	for _, name := range []string{loadgen.PhasePropagate, loadgen.PhaseSlow} {
		p := rep.Phase(name)
		if len(p.Changes) != cfg.Changes {
			t.Errorf("%s: %d changes measured, want %d", name, len(p.Changes), cfg.Changes)
		}
		for _, c := range p.Changes {
			if c.Delivered != c.Expected || c.Count != int64(c.Expected) {
				t.Errorf("%s: change %+v not delivered to every node", name, c)
			}
		}
	}
	if p := rep.Phase(loadgen.PhaseSlow); p.Metrics["fill_changes"] != float64(cfg.SlowFill) {
		t.Errorf("slow: %v fill changes, want %d", p.Metrics["fill_changes"], cfg.SlowFill)
	}
	if p := rep.Phase(loadgen.PhaseChurn); p.Sent < 40 || p.Latency == nil || p.Latency.Count != p.Sent*int64(cfg.N-1) {
		t.Errorf("churn: %d sent, latency %+v", p.Sent, p.Latency)
	}
	if rep.Memory == nil || rep.Memory.HeapBytesPerNode <= 0 {
		t.Errorf("no client memory figures: %+v", rep.Memory)
	}
	if !rep.OK || !strings.Contains(table.String(), "PASS") {
		t.Errorf("report not OK")
	}
}
