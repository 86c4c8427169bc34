package loadgen

import (
	"strings"
	"testing"
)

func TestParseSeries(t *testing.T) {
	const text = `# HELP headscale_cluster_records_applied_total Change-log records read.
# TYPE headscale_cluster_records_applied_total counter
headscale_cluster_records_applied_total 42
headscale_cluster_apply_lag_seconds_bucket{le="0.005"} 3
headscale_cluster_apply_lag_seconds_sum 0.25
headscale_cluster_apply_lag_seconds_count 7
headscale_db_query_duration_seconds_count{op="append live"} 5 1700000000000
headscale_db_query_duration_seconds_sum{op="append live"} 0.5
headscale_db_query_duration_seconds_bucket{op="append live",le="0.01"} 5
headscale_map_sessions 9
`
	for _, tc := range []struct {
		key  string
		want float64
		ok   bool
	}{
		{"headscale_cluster_records_applied_total", 42, true},
		{"headscale_cluster_apply_lag_seconds_sum", 0.25, true},
		{"headscale_cluster_apply_lag_seconds_count", 7, true},
		{`headscale_db_query_duration_seconds_count{op="append live"}`, 5, true},
		{`headscale_db_query_duration_seconds_sum{op="append live"}`, 0.5, true},
		{`headscale_cluster_apply_lag_seconds_bucket{le="0.005"}`, 0, false},
		{"headscale_map_sessions", 0, false},
		{`headscale_db_query_duration_seconds_bucket{op="append live",le="0.01"}`, 0, false},
	} {
		m, err := parseSeries(strings.NewReader(text), scrapePrefixes)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := m[tc.key]
		if ok != tc.ok || got != tc.want {
			t.Errorf("%s: got %v, %v; want %v, %v", tc.key, got, ok, tc.want, tc.ok)
		}
	}
	if _, err := parseSeries(strings.NewReader("headscale_db_x{op=\"a\"} NaNx\n"), scrapePrefixes); err == nil {
		t.Errorf("a bad sample parsed")
	}
}

func TestScraperReport(t *testing.T) {
	s := &scraper{urls: []string{"a", "b"}}
	a := scrapeSample{xacts: 10, statements: -1, series: []map[string]float64{
		{"headscale_cluster_records_applied_total": 1, `headscale_db_query_duration_seconds_count{op="x"}`: 4},
		{"headscale_cluster_records_applied_total": 2},
	}}
	b := scrapeSample{xacts: 30, statements: -1, series: []map[string]float64{
		{"headscale_cluster_records_applied_total": 6, `headscale_db_query_duration_seconds_count{op="x"}`: 14},
		{"headscale_cluster_records_applied_total": 7, "headscale_cluster_apply_lag_seconds_sum": 0.1, "headscale_cluster_apply_lag_seconds_count": 4},
	}}
	res := &PhaseResult{Name: PhaseChurn, Sent: 5, Metrics: map[string]float64{}}
	s.report(a, b, res)
	for k, want := range map[string]float64{
		"cluster_records_applied": 10, "cluster_batches_applied": 4, "cluster_apply_lag_mean_ms": 25,
		"server_db_ops": 10, "server_db_ops_per_change": 2, "pg_xacts": 20, "pg_xacts_per_change": 4,
	} {
		if got := res.Metrics[k]; got < want-1e-9 || got > want+1e-9 {
			t.Errorf("%s = %v, want %v", k, got, want)
		}
	}
	if _, ok := res.Metrics["pg_statements"]; ok {
		t.Errorf("pg_statements reported without pg_stat_statements")
	}
	if len(res.ServerMetrics) != 2 || res.ServerMetrics[1]["headscale_cluster_records_applied_total"] != 5 {
		t.Errorf("server metrics %v", res.ServerMetrics)
	}
	if line := res.dbLine(); !strings.Contains(line, "2.0 per change") || !strings.Contains(line, "xacts in postgresql 20 (4.0 per change)") {
		t.Errorf("dbLine %q", line)
	}
}
