package loadgen

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	c, jsonPath, err := ParseFlags([]string{"--url", "http://127.0.0.1:8080", "--auth-key", "k", "-n", "50",
		"--phases", "propagate, slow", "--churn-rate", "5", "--json", "out.json", "--compress=false", "--quiet"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.N != 50 || !slices.Equal(c.Phases, []string{"propagate", "slow"}) || c.ChurnRate != 5 || c.Compress || jsonPath != "out.json" || c.Logf != nil {
		t.Errorf("parsed %+v, json %q", c, jsonPath)
	}
	if !c.wants(PhaseRegister) || c.wants(PhaseChurn) {
		t.Error("register must always run; churn was not asked for")
	}
	for _, args := range [][]string{
		{"--auth-key", "k"},
		{"--url", "ftp://x", "--auth-key", "k"},
		{"--url", "http://x", "--auth-key", "k", "--phases", "register,bogus"},
		{"--url", "http://x", "--auth-key", "k", "-n", "1"},
		{"--url", "http://x"},
		{"--url", "http://x", "--auth-key", "k", "extra"},
	} {
		if _, _, err := ParseFlags(args, io.Discard); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
	if _, _, err := ParseFlags([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
	var out, errb bytes.Buffer
	if code := Main(t.Context(), []string{"-n", "5"}, &out, &errb); code != 2 || !strings.Contains(errb.String(), "--url is required") {
		t.Errorf("usage error: code %d, %q", code, errb.String())
	}
}

func TestReportOutput(t *testing.T) {
	rep := &Report{URL: "http://x", N: 3, Watch: 2, Compress: true, RunID: "abc", Started: time.Unix(0, 0).UTC(), Phases: []*PhaseResult{
		{Name: PhaseRegister, OK: true, WallSeconds: 1.5, Metrics: map[string]float64{"registered": 3, "register_s": 1, "converge_s": 1.5},
			Server: &ProcUsage{CPUSeconds: 2, PeakRSSBytes: 50 << 20}, BytesReceived: 12345},
		{Name: PhasePropagate, WallSeconds: 0.2, Latency: &Latency{Count: 4, P50: 1, P90: 2, P99: 3, Max: 4},
			Changes: []ChangeResult{{Node: 1, Seq: 1, Delivered: 1, Expected: 2, Latency: Latency{Count: 1, Max: 4}}}, Lost: 1,
			Checks: []Check{{Name: "no change lost", OK: false, Detail: "1 deliveries missing"}}},
		{Name: PhaseChurn, Skipped: "the nodes did not converge"},
	}}
	var b bytes.Buffer
	rep.WriteTable(&b)
	out := b.String()
	for _, want := range []string{
		"phase", "register", "3 registered in 1.00s, converged at 1.50s", "50.0 MiB", "12.1 KiB",
		"FAILED: no change lost: 1 deliveries missing", "slowest change: node 1 #1", "churn      skipped: the nodes did not converge", "FAIL: see above",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	// The table is right-aligned: the header and every row are as wide.
	lines := strings.Split(out, "\n")
	for _, l := range lines[3:6] {
		if len(l) != len(lines[2]) {
			t.Errorf("row %q is %d wide, header %d:\n%s", l, len(l), len(lines[2]), out)
		}
	}

	path := filepath.Join(t.TempDir(), "r.json")
	if err := rep.WriteJSONFile(path); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(path)
	var back Report
	if err := json.Unmarshal(raw, &back); err != nil || back.Phase(PhasePropagate).Changes[0].Max != 4 || back.Phase(PhaseChurn).Skipped == "" {
		t.Errorf("JSON round trip: %v\n%s", err, raw)
	}
	if !strings.Contains(string(raw), `"p99_ms": 3`) || !strings.Contains(string(raw), `"register_s": 1`) {
		t.Errorf("JSON field names:\n%s", raw)
	}
}
