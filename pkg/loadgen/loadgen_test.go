package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hsctl/headscale/pkg/cli"
	"github.com/hsctl/headscale/pkg/config"
	"github.com/hsctl/headscale/pkg/server"
)

// startServer runs this repository's server in-process on loopback and
// returns its URL and the config file the CLI talks to it with.
func startServer(t *testing.T) (url, cfgPath string) {
	t.Helper()
	dir := t.TempDir()
	cfgPath = filepath.Join(dir, "config.yaml")
	yaml := fmt.Sprintf(`
server_url: http://127.0.0.1:8080
listen_addr: 127.0.0.1:0
metrics_listen_addr: ""
state_dir: %s
unix_socket: %s/hs.sock
derp:
  server:
    stun_listen_addr: 127.0.0.1:0
`, dir, dir)
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, _, err := config.Load(config.LoadOptions{Path: cfgPath})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.New(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), "test")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := s.Listen(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	return "http://" + s.Addr().String(), cfgPath
}

// hs runs the headscale CLI against the test server.
func hs(t *testing.T, cfgPath string, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Execute(cli.Env{Version: "test", Stdout: &out, Stderr: &errb, Environ: []string{}}, append([]string{"-c", cfgPath}, args...))
	if code != 0 {
		t.Fatalf("headscale %v: exit %d: %s", args, code, errb.String())
	}
	return out.String()
}

func TestSmokeAllPhases(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 200 simulated nodes")
	}
	url, cfgPath := startServer(t)
	hs(t, cfgPath, "users", "create", "load")
	var pak struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal([]byte(hs(t, cfgPath, "preauthkeys", "create", "--user", "load", "--reusable", "-o", "json")), &pak); err != nil || pak.Key == "" {
		t.Fatalf("pre-auth key: %v %q", err, pak.Key)
	}
	var apiKey struct {
		APIKey string `json:"apiKey"`
	}
	if err := json.Unmarshal([]byte(hs(t, cfgPath, "apikeys", "create", "-o", "json")), &apiKey); err != nil || apiKey.APIKey == "" {
		t.Fatalf("API key: %v", err)
	}

	cfg := DefaultConfig()
	cfg.URL = url
	cfg.AuthKey = pak.Key
	cfg.APIKey = apiKey.APIKey
	cfg.N = 200
	cfg.Concurrency = 16
	cfg.Changes = 5
	cfg.ChurnRate = 40
	cfg.ChurnDuration = 2 * time.Second
	cfg.ChurnGrace = 20 * time.Second
	cfg.SlowFill = 600
	cfg.SlowFillRate = 300
	cfg.ServerPID = os.Getpid() // the server runs in this process
	cfg.RegisterTimeout = time.Minute
	cfg.ConvergeTimeout = time.Minute
	cfg.ChangeTimeout = 20 * time.Second
	if testing.Verbose() {
		cfg.Logf = t.Logf
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
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
	if len(rep.Phases) != len(AllPhases()) {
		t.Fatalf("ran %d phases, want %d", len(rep.Phases), len(AllPhases()))
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
	reg := rep.Phase(PhaseRegister)
	if got := reg.Metrics["api_nodes_ours"]; got != 200 {
		t.Errorf("API lists %v of the 200 nodes", got)
	}
	for _, name := range []string{PhasePropagate, PhaseSlow} {
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
	if p := rep.Phase(PhaseSlow); p.Metrics["fill_changes"] != float64(cfg.SlowFill) {
		t.Errorf("slow: %v fill changes, want %d", p.Metrics["fill_changes"], cfg.SlowFill)
	}
	if p := rep.Phase(PhaseChurn); p.Sent < 40 || p.Latency == nil || p.Latency.Count != p.Sent*int64(cfg.N-1) {
		t.Errorf("churn: %d sent, latency %+v", p.Sent, p.Latency)
	}
	if rep.Memory == nil || rep.Memory.HeapBytesPerNode <= 0 {
		t.Errorf("no client memory figures: %+v", rep.Memory)
	}
	if !rep.OK || !strings.Contains(table.String(), "PASS") {
		t.Errorf("report not OK")
	}
}
