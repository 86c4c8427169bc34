// Package metrics defines the server's Prometheus metrics on a registry of
// its own (no global registry) and serves them with pprof on the metrics
// listener.
package metrics

import (
	"net/http"
	"net/http/pprof"
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
	reg.MustRegister(m.mapSessions, m.framesSent, m.bytesSent, m.deliveryDelay, m.resyncs, m.registrations)
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "headscale_nodes_total", Help: "Registered nodes.",
	}, func() float64 { t, _ := counts(); return float64(t) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "headscale_online_nodes", Help: "Nodes with at least one open map session.",
	}, func() float64 { _, o := counts(); return float64(o) }))
	return m
}

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
