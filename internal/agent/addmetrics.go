package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshcni/meshcni/internal/addstat"
)

// addBuckets span 1 ms (a skipped pod, decided from its namespace) to
// 10 s (an ADD that waited out its API retries). A captured ADD takes
// 5–30 ms on these machines (docs/performance.md), so the buckets are
// densest there, for a useful p50 and p99.
var addBuckets = []float64{.001, .002, .005, .01, .015, .02, .03, .05, .075, .1, .25, .5, 1, 2.5, 5, 10}

// addMetrics are the series of the plug-in's ADD records (addstat).
type addMetrics struct {
	duration *prometheus.HistogramVec
	adds     *prometheus.CounterVec
}

func newAddMetrics(reg prometheus.Registerer) *addMetrics {
	m := &addMetrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "meshcni_plugin_add_duration_seconds",
			Help:    "Time the plug-in took for a CNI ADD on this node, from its start to its decision line, by decision (captured, skipped, failed) and the backend that programmed the pod (iptables-legacy, iptables-nft, nftables, none).",
			Buckets: addBuckets},
			[]string{"decision", "backend"}),
		adds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshcni_plugin_adds_total",
			Help: "CNI ADDs the plug-in reported on this node, by decision (captured, skipped, failed) and reason (the verdict's code, or the step that failed)."},
			[]string{"decision", "reason"}),
	}
	reg.MustRegister(m.duration, m.adds)
	return m
}

// observe counts one record, its labels kept to their fixed sets.
func (m *addMetrics) observe(r addstat.Record) {
	decision, reason, backend := r.Labels()
	if r.Seconds >= 0 {
		m.duration.WithLabelValues(decision, backend).Observe(r.Seconds)
	}
	m.adds.WithLabelValues(decision, reason).Inc()
}
