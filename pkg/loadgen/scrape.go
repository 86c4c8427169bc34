package loadgen

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// scrapePrefixes are the servers' Prometheus series a phase reports the
// change of: the change log's records and apply lag, and the database
// operations (headscale_db_*, by operation).
var scrapePrefixes = []string{
	"headscale_cluster_records_applied_total", // every record read, the server's own included
	"headscale_cluster_apply_lag_seconds_sum",
	"headscale_cluster_apply_lag_seconds_count",
	"headscale_db_",
}

// scraper reads the servers' counters and PostgreSQL's statistics before
// and after each phase.
type scraper struct {
	urls   []string
	client *http.Client
	pg     *pgx.Conn // nil without a DSN
	stmts  bool      // pg_stat_statements is installed
}

// scrapeSample is one reading: each server's series (nil where the
// scrape failed) and PostgreSQL's counters (-1: not read).
type scrapeSample struct {
	series     []map[string]float64
	xacts      float64
	statements float64
	errs       []string
}

func newScraper(ctx context.Context, urls []string, dsn string) (*scraper, error) {
	s := &scraper{urls: urls, client: &http.Client{Timeout: 10 * time.Second}}
	if dsn == "" {
		return s, nil
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(cctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("--pg-dsn: %w", err)
	}
	s.pg = c
	if err := c.QueryRow(cctx, "select exists (select 1 from pg_extension where extname = 'pg_stat_statements')").Scan(&s.stmts); err != nil {
		c.Close(ctx)
		return nil, fmt.Errorf("--pg-dsn: %w", err)
	}
	return s, nil
}

func (s *scraper) close() {
	if s.pg != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.pg.Close(ctx)
	}
}

// sample reads every server's series and PostgreSQL's counters.
func (s *scraper) sample(ctx context.Context) scrapeSample {
	out := scrapeSample{xacts: -1, statements: -1}
	for _, u := range s.urls {
		m, err := s.scrape(ctx, u)
		if err != nil {
			out.errs = append(out.errs, err.Error())
		}
		out.series = append(out.series, m)
	}
	if s.pg == nil {
		return out
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.pg.QueryRow(qctx, "select xact_commit + xact_rollback from pg_stat_database where datname = current_database()").Scan(&out.xacts); err != nil {
		out.xacts = -1
		out.errs = append(out.errs, fmt.Sprintf("pg_stat_database: %v", err))
	}
	if s.stmts {
		if err := s.pg.QueryRow(qctx, "select coalesce(sum(calls), 0)::float8 from pg_stat_statements where dbid = (select oid from pg_database where datname = current_database())").Scan(&out.statements); err != nil {
			out.statements = -1
			out.errs = append(out.errs, fmt.Sprintf("pg_stat_statements: %v", err))
		}
	}
	return out
}

// scrape reads the wanted series of one server's /metrics.
func (s *scraper) scrape(ctx context.Context, u string) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("--metrics-url %s: %w", u, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("--metrics-url %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("--metrics-url %s: %s", u, resp.Status)
	}
	m, err := parseSeries(resp.Body, scrapePrefixes)
	if err != nil {
		return nil, fmt.Errorf("--metrics-url %s: %w", u, err)
	}
	return m, nil
}

// parseSeries reads Prometheus' text format and returns the series whose
// names start with one of prefixes (histogram buckets left out), keyed by
// name and labels as written.
func parseSeries(r io.Reader, prefixes []string) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		wanted := false
		for _, p := range prefixes {
			wanted = wanted || strings.HasPrefix(line, p)
		}
		if !wanted {
			continue
		}
		// name{labels} value [timestamp]; label values may hold spaces.
		key, rest := line, ""
		if i := strings.LastIndexByte(line, '}'); i >= 0 {
			key, rest = line[:i+1], line[i+1:]
		} else if i := strings.IndexByte(line, ' '); i >= 0 {
			key, rest = line[:i], line[i:]
		}
		if strings.HasSuffix(seriesName(key), "_bucket") {
			continue // the sums and counts are enough
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("bad sample %q", line)
		}
		out[key] = v
	}
	return out, sc.Err()
}

// seriesName is a series key's metric name, without its labels.
func seriesName(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		return key[:i]
	}
	return key
}

// report puts the change from a to b into res: each server's series
// that moved, and totals in res.Metrics (per change sent, or per node in
// the register phase).
func (s *scraper) report(a, b scrapeSample, res *PhaseResult) {
	for _, e := range b.errs {
		res.errorf("%s", e)
	}
	per := float64(res.Sent)
	unit := "change"
	if res.Name == PhaseRegister {
		per, unit = res.Metrics["registered"], "node"
	}
	ratio := func(name string, v float64) {
		if per > 0 {
			res.Metrics[name+"_per_"+unit] = v / per
		}
	}
	var records, lagSum, lagCount, dbOps, dbSeconds float64
	for i := range s.urls {
		if a.series[i] == nil || b.series[i] == nil {
			res.ServerMetrics = append(res.ServerMetrics, nil)
			continue
		}
		d := map[string]float64{}
		for k, v := range b.series[i] {
			if dv := v - a.series[i][k]; dv != 0 {
				d[k] = dv
				switch name := seriesName(k); {
				case name == "headscale_cluster_records_applied_total":
					records += dv
				case name == "headscale_cluster_apply_lag_seconds_sum":
					lagSum += dv
				case name == "headscale_cluster_apply_lag_seconds_count":
					lagCount += dv
				case strings.HasPrefix(name, "headscale_db_") && strings.HasSuffix(name, "_count"):
					dbOps += dv
				case strings.HasPrefix(name, "headscale_db_") && strings.HasSuffix(name, "_sum"):
					dbSeconds += dv
				}
			}
		}
		res.ServerMetrics = append(res.ServerMetrics, d)
	}
	if len(s.urls) > 0 {
		res.Metrics["cluster_records_applied"] = records
		res.Metrics["cluster_batches_applied"] = lagCount
		if lagCount > 0 {
			res.Metrics["cluster_apply_lag_mean_ms"] = lagSum / lagCount * 1000
		}
		res.Metrics["server_db_ops"] = dbOps
		res.Metrics["server_db_seconds"] = dbSeconds
		ratio("server_db_ops", dbOps)
	}
	if a.xacts >= 0 && b.xacts >= 0 {
		res.Metrics["pg_xacts"] = b.xacts - a.xacts
		ratio("pg_xacts", b.xacts-a.xacts)
	}
	if a.statements >= 0 && b.statements >= 0 {
		res.Metrics["pg_statements"] = b.statements - a.statements
		ratio("pg_statements", b.statements-a.statements)
	}
}
