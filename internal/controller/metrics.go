package controller

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/meshcni/meshcni/internal/buildinfo"
)

// The results of a reconcile, meshcni_controller_reconcile_total's label.
const (
	resultSuccess = "success"
	// resultRequeue: done for now without error, to look again shortly
	// (objects being deleted that no informer watches).
	resultRequeue = "requeue"
	// resultConflict: a write lost to a newer object; retried.
	resultConflict = "conflict"
	resultError    = "error"
)

var (
	reconciles = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshcni_controller_reconcile_total",
		Help: "Reconciles of the MeshCNI resource, by result: success, requeue, conflict, error."},
		[]string{"result"})
	// A reconcile renders the chart's objects, applies them and reads
	// every node's agent: milliseconds to seconds with thousands of nodes.
	reconcileDuration = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "meshcni_controller_reconcile_duration_seconds",
		Help:    "Time one reconcile of the MeshCNI resource took, API writes and status included.",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}})
)

// The default registry, which the controller's /metrics serves.
func init() {
	prometheus.MustRegister(reconciles, reconcileDuration)
	for _, r := range []string{resultSuccess, resultRequeue, resultConflict, resultError} {
		reconciles.WithLabelValues(r) // every result shows, at 0, from the start
	}
	buildinfo.MustRegister(prometheus.DefaultRegisterer)
}

// observedReconcile is reconcile, timed and counted.
func (c *Controller) observedReconcile(ctx context.Context) (again bool, err error) {
	start := time.Now()
	again, err = c.reconcile(ctx)
	reconcileDuration.Observe(time.Since(start).Seconds())
	reconciles.WithLabelValues(reconcileResult(again, err)).Inc()
	return again, err
}

func reconcileResult(again bool, err error) string {
	switch {
	case apierrors.IsConflict(err):
		return resultConflict
	case err != nil:
		return resultError
	case again:
		return resultRequeue
	}
	return resultSuccess
}
