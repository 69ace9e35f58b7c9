package webhook

import (
	"encoding/json"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"

	"github.com/meshcni/meshcni/internal/inject"
)

// Each kind of review moves its result's counter by one and the latency
// histogram by one, and no other result's counter.
func TestMutationMetrics(t *testing.T) {
	pod := stockPod(t)
	h := &Handler{}
	h.SetPolicy(Policy{Enabled: true, Excluded: []string{"istio-system"}})
	// The stock pod converted, for the restore case.
	resp := decode(t, post(h, "POST", "application/json", review("Pod", admissionv1.Create, "shop", pod)))
	var ops []inject.Op
	if err := json.Unmarshal(resp.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	converted, err := inject.ApplyPatch(pod, ops)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		result string
		body   []byte
	}{
		{resultConverted, review("Pod", admissionv1.Create, "shop", pod)},
		{resultRestored, review("Pod", admissionv1.Create, "istio-system", converted)},
		{resultUnchanged, review("Pod", admissionv1.Create, "shop", converted)},
		{resultUnchanged, review("Pod", admissionv1.Create, "istio-system", pod)},
		{resultError, review("Pod", admissionv1.Create, "shop", []byte(`{"spec":{"initContainers":7}}`))},
		{resultSkipped, review("Pod", admissionv1.Update, "shop", pod)},
		{resultSkipped, review("Deployment", admissionv1.Create, "shop", pod)},
	}
	all := []string{resultConverted, resultRestored, resultUnchanged, resultError, resultSkipped}
	for _, tc := range cases {
		before := map[string]float64{}
		for _, r := range all {
			before[r] = testutil.ToFloat64(mutations.WithLabelValues(r))
		}
		count := histogramCount(t)
		decode(t, post(h, "POST", "application/json", tc.body))
		for _, r := range all {
			want := before[r]
			if r == tc.result {
				want++
			}
			if got := testutil.ToFloat64(mutations.WithLabelValues(r)); got != want {
				t.Errorf("%s review: meshcni_webhook_mutations_total{result=%q} = %v, want %v", tc.result, r, got, want)
			}
		}
		if got := histogramCount(t); got != count+1 {
			t.Errorf("%s review: duration count %d, want %d", tc.result, got, count+1)
		}
	}
	// In the default registry, which /metrics serves.
	if n, err := testutil.GatherAndCount(prometheus.DefaultGatherer, "meshcni_webhook_mutations_total", "meshcni_webhook_mutation_duration_seconds", "meshcni_build_info"); err != nil || n != len(all)+2 {
		t.Errorf("default registry: %d series, %v", n, err)
	}
}

func histogramCount(t *testing.T) uint64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "meshcni_webhook_mutation_duration_seconds" {
			return mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("no meshcni_webhook_mutation_duration_seconds")
	return 0
}
