// Package metrics defines the server's Prometheus metrics on a registry of
// its own (no global registry) and serves them with pprof on the metrics
// listener.
package metrics

import (
	"database/sql"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Counts reports node totals at scrape time.
type Counts func() (total, online int)

// Metrics holds every metric the server exports.
type Metrics struct {
	Registry *prometheus.Registry

	mapSessions   prometheus.Gauge
	framesSent    *prometheus.CounterVec
	bytesSent     *prometheus.CounterVec
	deliveryDelay prometheus.Histogram
	resyncs       prometheus.Counter
	registrations *prometheus.CounterVec
	httpRequests  *prometheus.CounterVec
	httpDuration  *prometheus.HistogramVec
	dbQuery       *prometheus.HistogramVec
	limitHits     *prometheus.CounterVec
}

// New registers the metrics. counts feeds headscale_nodes_total and
// headscale_online_nodes.
func New(counts Counts) *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: reg,
		mapSessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "headscale_map_sessions_open", Help: "Streaming map sessions currently open.",
		}),
		framesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "headscale_map_messages_sent_total", Help: "Map messages written to clients, by kind (full, delta, keepalive).",
		}, []string{"kind"}),
		bytesSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "headscale_map_bytes_sent_total", Help: "Map bytes written to clients (after compression), by kind.",
		}, []string{"kind"}),
		deliveryDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "headscale_change_delivery_seconds", Help: "Time from a state change to its delta being written to a session.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		resyncs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "headscale_map_session_resyncs_total", Help: "Sessions that fell behind and were resent a full map.",
		}),
		registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "headscale_registrations_total", Help: "Register requests by outcome.",
		}, []string{"outcome"}),
	}
	m.httpRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "headscale_http_requests_total", Help: "HTTP requests to the API, /health and /version, by route pattern and status code.",
	}, []string{"route", "code"})
	m.httpDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "headscale_http_request_duration_seconds", Help: "Time to answer an HTTP request, by route pattern.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
	}, []string{"route"})
	m.dbQuery = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "headscale_db_query_duration_seconds", Help: "Time of a database operation, by operation.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
	}, []string{"op"})
	m.limitHits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "headscale_limit_hits_total", Help: "Times a protective limit refused, slowed or closed something, by limit.",
	}, []string{"limit"})
	reg.MustRegister(m.mapSessions, m.framesSent, m.bytesSent, m.deliveryDelay, m.resyncs, m.registrations,
		m.httpRequests, m.httpDuration, m.dbQuery, m.limitHits)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "headscale_nodes_total", Help: "Registered nodes.",
	}, func() float64 { t, _ := counts(); return float64(t) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "headscale_online_nodes", Help: "Nodes with at least one open map session.",
	}, func() float64 { _, o := counts(); return float64(o) }))
	return m
}

// DBQuery records one database operation (store.Options.Observe).
func (m *Metrics) DBQuery(op string, d time.Duration) {
	m.dbQuery.WithLabelValues(op).Observe(d.Seconds())
}

// AddDBPools exports connection-pool statistics of the named pools.
func (m *Metrics) AddDBPools(pools map[string]*sql.DB) {
	for name, db := range pools {
		m.Registry.MustRegister(collectors.NewDBStatsCollector(db, name))
	}
}

// DERPStats reads the embedded relay's counters at scrape time.
type DERPStats func() (current, accepted, bytesRelayed int64)

// AddDERP exports the embedded relay's clients and traffic.
func (m *Metrics) AddDERP(stats DERPStats) {
	m.Registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "headscale_derp_connections", Help: "DERP clients connected to the embedded relay now.",
		}, func() float64 { c, _, _ := stats(); return float64(c) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "headscale_derp_connections_total", Help: "DERP connections the embedded relay accepted since start.",
		}, func() float64 { _, a, _ := stats(); return float64(a) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "headscale_derp_bytes_relayed_total", Help: "Bytes the embedded relay forwarded to clients since start.",
		}, func() float64 { _, _, b := stats(); return float64(b) }),
	)
}

// TLSCert reads, at scrape time, the served TLS certificate's expiry
// (zero when there is none yet) and whether a problem is current (a
// refused file pair, a failing ACME CA).
type TLSCert func() (notAfter time.Time, problem bool)

// AddTLS exports the served certificate's days to expiry (absent while
// there is no certificate) and whether a certificate problem is current.
func (m *Metrics) AddTLS(source string, cert TLSCert) {
	m.Registry.MustRegister(&tlsCollector{
		days: prometheus.NewDesc("headscale_tls_certificate_expiry_days",
			"Days until the served TLS certificate expires (negative once expired); absent while there is none.",
			[]string{"source"}, nil),
		problem: prometheus.NewDesc("headscale_tls_certificate_problem",
			"1 while a TLS certificate problem is current (a new file pair refused, the ACME CA failing), else 0.",
			[]string{"source"}, nil),
		source: source,
		cert:   cert,
	})
}

type tlsCollector struct {
	days, problem *prometheus.Desc
	source        string
	cert          TLSCert
}

func (c *tlsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.days; ch <- c.problem }

func (c *tlsCollector) Collect(ch chan<- prometheus.Metric) {
	notAfter, problem := c.cert()
	if !notAfter.IsZero() {
		ch <- prometheus.MustNewConstMetric(c.days, prometheus.GaugeValue, time.Until(notAfter).Hours()/24, c.source)
	}
	v := 0.0
	if problem {
		v = 1
	}
	ch <- prometheus.MustNewConstMetric(c.problem, prometheus.GaugeValue, v, c.source)
}

// InstrumentHTTP counts and times requests to h. The route label is the
// ServeMux pattern that matched (so IDs in paths do not make new series),
// or "other". h must not hijack connections.
func (m *Metrics) InstrumentHTTP(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		route := r.Pattern
		if route == "" || route == "/api/v1/" {
			route = "other"
		}
		m.httpRequests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
		m.httpDuration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code        int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader {
		w.code, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// FrameSent implements mapper.Observer.
func (m *Metrics) FrameSent(kind string, bytes int, latency time.Duration) {
	m.framesSent.WithLabelValues(kind).Inc()
	m.bytesSent.WithLabelValues(kind).Add(float64(bytes))
	if latency > 0 {
		m.deliveryDelay.Observe(latency.Seconds())
	}
}

// SessionResynced implements mapper.Observer.
func (m *Metrics) SessionResynced() { m.resyncs.Inc() }

// SessionsChanged implements mapper.Observer.
func (m *Metrics) SessionsChanged(open int) { m.mapSessions.Set(float64(open)) }

// Registration implements control.Observer.
func (m *Metrics) Registration(outcome string) { m.registrations.WithLabelValues(outcome).Inc() }

// LimitHit counts one refusal, slow-down or close by the named limit
// (headscale_limit_hits_total{limit}). Limit names are fixed strings such
// as "h2_streams" or "noise_handshakes", listed in docs/metrics.md.
func (m *Metrics) LimitHit(limit string) { m.limitHits.WithLabelValues(limit).Inc() }

// Handler serves /metrics and /debug/pprof/ for the metrics listener.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}
