package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshcni/meshcni/internal/buildinfo"
)

// metrics are the agent's Prometheus series, in a registry of its own so
// that several agents can live in one test binary.
type metrics struct {
	reg         *prometheus.Registry
	installs    prometheus.Counter
	reinserts   prometheus.Counter
	conflicts   prometheus.Counter
	kubeconfig  prometheus.Counter
	ready       prometheus.Gauge
	taintErrors prometheus.Counter
	results     *prometheus.CounterVec
	adds        *addMetrics
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		installs: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshcni_agent_installs_total",
			Help: "Times the agent wrote the meshcni entry into a CNI config that did not have it while the agent was not ready (first install, a new primary config)."}),
		reinserts: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshcni_agent_reinserts_total",
			Help: "Times the agent put its entry back after something removed, moved or changed it."}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshcni_agent_conflicts_total",
			Help: "Times the agent stopped fighting over the CNI config for a while because another writer kept reverting it."}),
		kubeconfig: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshcni_agent_kubeconfig_writes_total",
			Help: "Times the agent wrote the plug-in's kubeconfig (first write and token rotations)."}),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshcni_agent_ready",
			Help: "1 while the meshcni entry, binary and kubeconfig are installed and watched."}),
		taintErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshcni_agent_taint_errors_total",
			Help: "Failed attempts to remove the startup taint from the agent's node (each retried and logged)."}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshcni_plugin_results_total",
			Help: "Decisions the plug-in reported over the log socket, by command (ADD, CHECK) and decision (captured, skipped, error)."},
			[]string{"command", "decision"}),
	}
	m.reg.MustRegister(m.installs, m.reinserts, m.conflicts, m.kubeconfig, m.ready, m.taintErrors, m.results,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.adds = newAddMetrics(m.reg)
	buildinfo.MustRegister(m.reg)
	return m
}

// Handler serves /healthz (the process answers), /readyz (200 only while
// installed and watching; 503 with the reason otherwise) and /metrics.
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ready, reason := a.Ready()
		if !ready {
			http.Error(w, "not ready: "+reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

// healthLimits bound what one client of the health server (on the node's
// network, unauthenticated) can hold: every connection is closed after
// its timeouts, and the listener holds at most conns connections, at
// most connsPerPeer from one IP. 10,000 idle connections without them
// took the agent from 27 MB to 217 MB and used up its file descriptors.
type healthLimits struct {
	readHeader, read, write, idle time.Duration
	conns, connsPerPeer           int
}

// defaultHealthLimits: a probe or a scrape sends its request at once and
// gets a reply in milliseconds; the caps leave room for the kubelet,
// Prometheus and a few humans.
var defaultHealthLimits = healthLimits{
	readHeader: 5 * time.Second, read: 10 * time.Second, write: 10 * time.Second, idle: 30 * time.Second,
	conns: 128, connsPerPeer: 16,
}

// serveHealth listens on addr until ctx ends. It returns the listener's
// address (":0" picks a port) once listening.
func (a *Agent) serveHealth(ctx context.Context, addr string) (net.Addr, <-chan struct{}, error) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("health server on %s (--health-addr): %w", addr, err)
	}
	lim := a.healthLimits
	srv := &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: lim.readHeader,
		ReadTimeout:       lim.read,
		WriteTimeout:      lim.write,
		IdleTimeout:       lim.idle,
		MaxHeaderBytes:    8 << 10,
	}
	l = newCapListener(l, lim.conns, lim.connsPerPeer)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("health server stopped", "addr", addr, "error", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return l.Addr(), done, nil
}
