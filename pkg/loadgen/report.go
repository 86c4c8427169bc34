package loadgen

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is the outcome of a run.
type Report struct {
	URL         string         `json:"url"`
	N           int            `json:"n"`
	Concurrency int            `json:"concurrency"`
	Watch       int            `json:"watch"`
	Compress    bool           `json:"compress"`
	Seed        int64          `json:"seed"`
	RunID       string         `json:"run_id"`
	Started     time.Time      `json:"started"`
	GoMaxProcs  int            `json:"gomaxprocs"`
	Phases      []*PhaseResult `json:"phases"`
	Memory      *ClientMemory  `json:"client_memory,omitempty"`
	// OK is true when every requested phase ran and passed its checks.
	OK bool `json:"ok"`
}

// ClientMemory is what the simulated nodes cost the load tool, measured
// after registration and convergence (after a GC).
type ClientMemory struct {
	Nodes             int     `json:"nodes"`
	HeapBytesPerNode  float64 `json:"heap_bytes_per_node"`
	StackBytesPerNode float64 `json:"stack_bytes_per_node"`
	HeapInuseBytes    int64   `json:"heap_inuse_bytes"`
	RSSBytes          int64   `json:"rss_bytes"`
	Goroutines        int     `json:"goroutines"`
	GoroutinesPerNode float64 `json:"goroutines_per_node"`
}

// PhaseResult is what one phase measured and checked.
type PhaseResult struct {
	Name    string   `json:"name"`
	OK      bool     `json:"ok"`
	Skipped string   `json:"skipped,omitempty"`
	Errors  []string `json:"errors,omitempty"`

	WallSeconds float64 `json:"wall_s"`
	// Metrics are the phase's own figures (register_s, converge_s, ...).
	Metrics map[string]float64 `json:"metrics,omitempty"`
	// Latency is from an endpoint change being sent to a node having
	// decoded it, over every (change, receiving node) pair.
	Latency *Latency `json:"latency,omitempty"`
	// SameServer and CrossServer split Latency by receiver, with several
	// servers: on the sending node's server, or on another one.
	SameServer  *Latency `json:"latency_same_server,omitempty"`
	CrossServer *Latency `json:"latency_cross_server,omitempty"`
	// Changes are the one-at-a-time changes, each with its own spread.
	Changes []ChangeResult `json:"changes,omitempty"`

	Sent       int64 `json:"changes_sent"`
	SendErrors int64 `json:"send_errors"`
	// Lost counts (change, node) pairs never seen within the phase's
	// grace period.
	Lost int64 `json:"lost"`
	// Regressed counts a node seeing a peer's endpoint older than one it
	// had already seen.
	Regressed         int64    `json:"regressed"`
	RegressionSamples []string `json:"regression_samples,omitempty"`
	// Stale counts (node, watched peer) pairs whose newest endpoint the
	// node did not have at the end of the phase.
	Stale int64 `json:"stale"`

	// BytesReceived is everything all simulated nodes read from their
	// TCP connections; MapBytes the map frames as sent (compressed when
	// asked), DecodedBytes the same after decompression.
	BytesReceived int64 `json:"bytes_received"`
	MapBytes      int64 `json:"map_bytes"`
	DecodedBytes  int64 `json:"decoded_bytes"`
	Frames        int64 `json:"frames"`
	StreamEnds    int64 `json:"stream_ends"`
	// FullMaps counts full peer lists received: one per new map session,
	// and any more are the server resynchronising a node.
	FullMaps int64 `json:"full_maps"`

	// Server is the server's usage, summed over the servers when there
	// are several (PID 0; the peak RSS is the sum of each one's peak),
	// and Servers each one's, in --server-pid order.
	Server  *ProcUsage  `json:"server,omitempty"`
	Servers []ProcUsage `json:"servers,omitempty"`
	// ServerMetrics are each server's counters (--metrics-url) over the
	// phase, in --metrics-url order.
	ServerMetrics []map[string]float64 `json:"server_metrics,omitempty"`
	Tool          *ProcUsage           `json:"tool,omitempty"`

	Checks []Check `json:"checks,omitempty"`
}

// ChangeResult is one endpoint change of the propagate or slow phase.
type ChangeResult struct {
	Node      int32 `json:"node"`
	Seq       int32 `json:"seq"`
	Delivered int32 `json:"delivered"`
	Expected  int32 `json:"expected"`
	Latency
}

// Check is one validation.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

func (p *PhaseResult) check(name string, ok bool, detail string) {
	p.Checks = append(p.Checks, Check{Name: name, OK: ok, Detail: detail})
}

func (p *PhaseResult) errorf(format string, args ...any) {
	p.Errors = append(p.Errors, fmt.Sprintf(format, args...))
}

// Phase returns the named phase's result, or nil.
func (r *Report) Phase(name string) *PhaseResult {
	for _, p := range r.Phases {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// WriteJSONFile writes the report as indented JSON.
func (r *Report) WriteJSONFile(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func human(b int64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	f, u := float64(b), "B"
	for _, x := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if f < unit {
			break
		}
		f, u = f/unit, x
	}
	return fmt.Sprintf("%.1f %s", f, u)
}

func secs(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.2fs", v)
	}
	return fmt.Sprintf("%.1fs", v)
}

func msec(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// summary is the phase's headline in a few words.
func (p *PhaseResult) summary() string {
	m := p.Metrics
	switch p.Name {
	case PhaseRegister:
		return fmt.Sprintf("%d registered in %s, converged at %s", int(m["registered"]), secs(m["register_s"]), secs(m["converge_s"]))
	case PhasePropagate:
		return fmt.Sprintf("%d changes, one at a time", len(p.Changes))
	case PhaseChurn:
		return fmt.Sprintf("%d changes at %.1f/s, settled %s after", p.Sent, m["sent_per_s"], secs(m["settle_s"]))
	case PhaseReconnect:
		return fmt.Sprintf("all dropped, reconverged at %s", secs(m["converge_s"]))
	case PhaseSlow:
		return fmt.Sprintf("node %d stopped reading; %d fill changes at %.0f/s (p99 %s ms), %d measured; it caught up in %s (%d full maps, %d new sessions)",
			int(m["slow_node"]), int(m["fill_changes"]), m["sent_per_s"], msec(m["fill_p99_ms"]), len(p.Changes), secs(m["catchup_s"]), int(m["slow_full_maps"]), int(m["slow_new_sessions"]))
	}
	return ""
}

// WriteTable writes the report as a human-readable table.
func (r *Report) WriteTable(w io.Writer) {
	fmt.Fprintf(w, "headscale-loadgen run %s: %d nodes against %s (compress %v, watch %d, seed %d)\n\n", r.RunID, r.N, r.URL, r.Compress, r.Watch, r.Seed)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "phase\twall\tp50 ms\tp90 ms\tp99 ms\tmax ms\tlost\tregressed\tstale\tsrv cpu\tsrv peak rss\trx bytes\tok\t")
	for _, p := range r.Phases {
		if p.Skipped != "" {
			fmt.Fprintf(tw, "%s\t-%sskipped\t\n", p.Name, strings.Repeat("\t", 11))
			continue
		}
		l := p.Latency
		lat := "-\t-\t-\t-"
		if l != nil && l.Count > 0 {
			lat = fmt.Sprintf("%s\t%s\t%s\t%s", msec(l.P50), msec(l.P90), msec(l.P99), msec(l.Max))
		}
		cpu, rss := "-", "-"
		if p.Server != nil {
			cpu, rss = secs(p.Server.CPUSeconds), human(p.Server.PeakRSSBytes)
		}
		ok := "ok"
		if !p.OK {
			ok = "FAIL"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", p.Name, secs(p.WallSeconds), lat, p.Lost, p.Regressed, p.Stale, cpu, rss, human(p.BytesReceived), ok)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, p := range r.Phases {
		if p.Skipped != "" {
			fmt.Fprintf(w, "%-10s skipped: %s\n", p.Name, p.Skipped)
			continue
		}
		fmt.Fprintf(w, "%-10s %s\n", p.Name, p.summary())
		extra := []string{fmt.Sprintf("%d frames (%d full maps), %s map bytes (%s decoded)", p.Frames, p.FullMaps, human(p.MapBytes), human(p.DecodedBytes))}
		if p.Tool != nil {
			extra = append(extra, fmt.Sprintf("tool cpu %s", secs(p.Tool.CPUSeconds)))
		}
		if p.Server != nil {
			extra = append(extra, fmt.Sprintf("server VmHWM %s", human(p.Server.HWMBytes)))
		}
		if p.StreamEnds > 0 {
			extra = append(extra, fmt.Sprintf("%d map streams ended", p.StreamEnds))
		}
		fmt.Fprintf(w, "%-10s %s\n", "", strings.Join(extra, ", "))
		if p.CrossServer != nil {
			fmt.Fprintf(w, "%-10s receivers on the sender's server: %s; on another server: %s\n", "", latLine(p.SameServer), latLine(p.CrossServer))
		}
		if len(p.Servers) > 0 {
			var each []string
			for _, u := range p.Servers {
				each = append(each, fmt.Sprintf("pid %d cpu %s peak rss %s", u.PID, secs(u.CPUSeconds), human(u.PeakRSSBytes)))
			}
			fmt.Fprintf(w, "%-10s servers: %s\n", "", strings.Join(each, "; "))
		}
		if db := p.dbLine(); db != "" {
			fmt.Fprintf(w, "%-10s %s\n", "", db)
		}
		if len(p.Changes) > 0 {
			worst := p.Changes[0]
			for _, c := range p.Changes {
				if c.Max > worst.Max {
					worst = c
				}
			}
			fmt.Fprintf(w, "%-10s slowest change: node %d #%d, p50 %s ms, p99 %s ms, max %s ms (%d/%d nodes)\n", "",
				worst.Node, worst.Seq, msec(worst.P50), msec(worst.P99), msec(worst.Max), worst.Delivered, worst.Expected)
		}
		for _, c := range p.Checks {
			if !c.OK {
				fmt.Fprintf(w, "%-10s FAILED: %s: %s\n", "", c.Name, c.Detail)
			}
		}
		for _, e := range p.Errors {
			fmt.Fprintf(w, "%-10s error: %s\n", "", e)
		}
		for _, s := range p.RegressionSamples {
			fmt.Fprintf(w, "%-10s regression: %s\n", "", s)
		}
	}
	if m := r.Memory; m != nil {
		fmt.Fprintf(w, "\nclient memory at %d nodes: %.1f KiB heap + %.1f KiB stack per node, %.1f goroutines per node, tool RSS %s\n",
			m.Nodes, m.HeapBytesPerNode/1024, m.StackBytesPerNode/1024, m.GoroutinesPerNode, human(m.RSSBytes))
	}
	verdict := "PASS: every validation passed"
	if !r.OK {
		verdict = "FAIL: see above"
	}
	fmt.Fprintf(w, "\n%s\n", verdict)
}

// latLine is a latency split's figures in a few words.
func latLine(l *Latency) string {
	if l == nil || l.Count == 0 {
		return "none"
	}
	return fmt.Sprintf("p50 %s ms, p99 %s ms, max %s ms (%d)", msec(l.P50), msec(l.P99), msec(l.Max), l.Count)
}

// dbLine is the phase's change-log and database figures, if measured.
func (p *PhaseResult) dbLine() string {
	m := p.Metrics
	unit := "change"
	if p.Name == PhaseRegister {
		unit = "node"
	}
	var out []string
	if v, ok := m["cluster_records_applied"]; ok {
		out = append(out, fmt.Sprintf("change-log records read %.0f (every server reads each, its own too) in %.0f batches (mean lag %s ms)", v, m["cluster_batches_applied"], msec(m["cluster_apply_lag_mean_ms"])))
	}
	if v, ok := m["server_db_ops"]; ok {
		s := fmt.Sprintf("server db ops %.0f", v)
		if r, ok := m["server_db_ops_per_"+unit]; ok {
			s += fmt.Sprintf(" (%.1f per %s)", r, unit)
		}
		out = append(out, s)
	}
	for _, k := range []string{"pg_xacts", "pg_statements"} {
		if v, ok := m[k]; ok {
			s := fmt.Sprintf("%s %.0f", strings.TrimPrefix(k, "pg_")+" in postgresql", v)
			if r, ok := m[k+"_per_"+unit]; ok {
				s += fmt.Sprintf(" (%.1f per %s)", r, unit)
			}
			out = append(out, s)
		}
	}
	return strings.Join(out, ", ")
}
