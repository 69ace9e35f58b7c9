//go:build integration

package controller

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/api/v1alpha1"
)

// gather returns the default registry's families by name: what the
// controller's /metrics serves.
func gather(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

func successes(t *testing.T) (count float64, timed uint64) {
	t.Helper()
	mfs := gather(t)
	for _, m := range mfs["meshcni_controller_reconcile_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "result" && l.GetValue() == "success" {
				count = m.GetCounter().GetValue()
			}
		}
	}
	if h := mfs["meshcni_controller_reconcile_duration_seconds"]; h != nil {
		timed = h.GetMetric()[0].GetHistogram().GetSampleCount()
	}
	return count, timed
}

// The controller counts and times its reconciles against a real API
// server, and exports meshcni_build_info, in the registry /metrics serves.
func TestReconcileMetrics(t *testing.T) {
	ctx := context.Background()
	setupNodes(t)
	count0, timed0 := successes(t)
	startController(t, controllerConfig(t))
	obj := meshcni(t, "metadata: {name: default}\nspec: {excludeNamespaces: [kube-system]}\n")
	if _, err := meshRC().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Gone before the controller stops (cleanups run last first), so
	// that its finalizer is removed and the next test can create it.
	t.Cleanup(func() {
		_ = meshRC().Delete(ctx, v1alpha1.Name, metav1.DeleteOptions{})
		eventually(t, "MeshCNI deleted", func() (string, bool) {
			_, err := meshRC().Get(ctx, v1alpha1.Name, metav1.GetOptions{})
			return fmt.Sprint(err), apierrors.IsNotFound(err)
		})
	})
	waitPhase(t, v1alpha1.PhaseUpdating, nil)
	count, timed := successes(t)
	if count <= count0 || timed <= timed0 || timed-timed0 < uint64(count-count0) {
		t.Errorf("reconciles: success %v→%v, timed %d→%d", count0, count, timed0, timed)
	}
	if bi := gather(t)["meshcni_build_info"]; bi == nil || bi.GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Errorf("meshcni_build_info: %v", bi)
	}
}
