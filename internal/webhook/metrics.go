package webhook

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshcni/meshcni/internal/buildinfo"
	"github.com/meshcni/meshcni/internal/inject"
)

// The results of a review, meshcni_webhook_mutations_total's label.
const (
	// resultConverted: istio-init became istio-validation; the plug-in
	// programs the pod.
	resultConverted = "converted"
	// resultRestored: a pod in an excluded namespace got istio-init back.
	resultRestored = "restored"
	// resultUnchanged: a pod CREATE left as Istio made it (no istio-init,
	// inject=false, or not convertible: then noted in an annotation).
	resultUnchanged = "unchanged"
	// resultError: the pod could not be read or patched; left unchanged.
	resultError = "error"
	// resultSkipped: not a pod CREATE (another kind, operation or
	// subresource), which the webhook's rules should never send.
	resultSkipped = "skipped"
)

var (
	mutations = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshcni_webhook_mutations_total",
		Help: "Admission reviews the webhook answered, by result: converted, restored, unchanged, error, skipped."},
		[]string{"result"})
	// Buckets from 100 µs: a review takes well under a millisecond, and
	// the goal is ≤ 2 ms p99 added to each pod creation (issue #18).
	mutationDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshcni_webhook_mutation_duration_seconds",
		Help:    "Time the webhook took to decide one admission review, decoding and patching included.",
		Buckets: []float64{.0001, .00025, .0005, .001, .002, .005, .01, .025, .05, .1, .25, 1}})
)

// The default registry, which the controller's (and this webhook's)
// /metrics serves.
func init() {
	prometheus.MustRegister(mutations, mutationDuration)
	for _, r := range []string{resultConverted, resultRestored, resultUnchanged, resultError, resultSkipped} {
		mutations.WithLabelValues(r) // every result shows, at 0, from the start
	}
	buildinfo.MustRegister(prometheus.DefaultRegisterer)
}

// resultOf is the result of a review that patched the pod with action.
func resultOf(action string) string {
	switch action {
	case inject.ToValidation:
		return resultConverted
	case inject.ToInit:
		return resultRestored
	}
	return resultUnchanged // a note only: istio-init stays
}

// observeReview counts one review that started at start; it is deferred
// with a pointer to the result the review sets on its way out.
func observeReview(start time.Time, result *string) {
	mutationDuration.Observe(time.Since(start).Seconds())
	mutations.WithLabelValues(*result).Inc()
}
