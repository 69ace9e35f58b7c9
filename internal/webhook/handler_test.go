package webhook

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/internal/inject"
)

// stockPod is the "ranges-ports" pod as a stock Istio injects it.
func stockPod(t testing.TB) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "inject", "testdata", "istio", "pods-injected-default.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		if strings.Contains(doc, "name: ranges-ports\n") {
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			return js
		}
	}
	t.Fatal("no ranges-ports pod")
	return nil
}

func review(kind string, op admissionv1.Operation, ns string, obj []byte) []byte {
	r := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "u-1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: kind},
			Operation: op, Namespace: ns, Object: runtime.RawExtension{Raw: obj}},
	}
	b, _ := json.Marshal(r)
	return b
}

func post(h http.Handler, method, ctype string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "/mutate", bytes.NewReader(body))
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func decode(t *testing.T, w *httptest.ResponseRecorder) *admissionv1.AdmissionResponse {
	t.Helper()
	if w.Code != http.StatusOK {
		t.Fatalf("status %d: %s", w.Code, w.Body)
	}
	var r admissionv1.AdmissionReview
	if err := json.Unmarshal(w.Body.Bytes(), &r); err != nil || r.Response == nil {
		t.Fatalf("response %s: %v", w.Body, err)
	}
	if r.APIVersion != "admission.k8s.io/v1" || r.Kind != "AdmissionReview" || r.Response.UID != "u-1" || !r.Response.Allowed {
		t.Fatalf("response %s", w.Body)
	}
	return r.Response
}

// enabled is a handler whose policy has meshcni on, excluding excl.
func enabled(excl ...string) *Handler {
	h := &Handler{}
	h.SetPolicy(Policy{Enabled: true, Excluded: excl})
	return h
}

func TestMutatesStockPod(t *testing.T) {
	h := enabled("istio-system")
	pod := stockPod(t)
	resp := decode(t, post(h, "POST", "application/json", review("Pod", admissionv1.Create, "shop", pod)))
	if resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("no JSON patch: %+v", resp)
	}
	var ops []inject.Op
	if err := json.Unmarshal(resp.Patch, &ops); err != nil {
		t.Fatal(err)
	}
	out, err := inject.ApplyPatch(pod, ops)
	if err != nil {
		t.Fatal(err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	c := got.Spec.InitContainers[0]
	if c.Name != inject.ValidationName || len(c.SecurityContext.Capabilities.Add) != 0 {
		t.Fatalf("init container %s with %v", c.Name, c.SecurityContext.Capabilities)
	}
	if got.Annotations["traffic.sidecar.istio.io/excludeOutboundPorts"] != "5432,6379" || got.Annotations[inject.AnnotationMutated] != inject.ToValidation {
		t.Fatalf("annotations %v", got.Annotations)
	}
	// Only the init container and annotations are touched.
	for _, op := range ops {
		if op.Path != "/spec/initContainers/0" && !strings.HasPrefix(op.Path, "/metadata/annotations/") {
			t.Errorf("op on %s", op.Path)
		}
	}
	// Reinvoked with its own output: nothing more to do.
	again := decode(t, post(h, "POST", "application/json", review("Pod", admissionv1.Create, "shop", out)))
	if again.Patch != nil {
		t.Errorf("second pass patched: %s", again.Patch)
	}
	// In an excluded namespace the stock pod is left alone.
	excl := decode(t, post(enabled("shop"), "POST", "application/json", review("Pod", admissionv1.Create, "shop", pod)))
	if excl.Patch != nil {
		t.Errorf("excluded namespace patched: %s", excl.Patch)
	}
}

// The policy follows the resource: switched off (or not known yet) every
// pod is left alone; a namespace added to the exclusions takes effect on
// the next request, without a new handler.
func TestPolicyIsLive(t *testing.T) {
	pod := stockPod(t)
	req := review("Pod", admissionv1.Create, "shop", pod)
	h := &Handler{}
	if resp := decode(t, post(h, "POST", "application/json", req)); resp.Patch != nil {
		t.Errorf("patched before any policy: %s", resp.Patch)
	}
	h.SetPolicy(Policy{Enabled: true, Excluded: []string{"istio-system"}})
	if resp := decode(t, post(h, "POST", "application/json", req)); resp.Patch == nil {
		t.Error("enabled, captured namespace: not patched")
	}
	excl := []string{"istio-system", "shop"}
	h.SetPolicy(Policy{Enabled: true, Excluded: excl})
	excl[1] = "other" // the handler keeps its own copy
	if resp := decode(t, post(h, "POST", "application/json", req)); resp.Patch != nil {
		t.Errorf("namespace newly excluded: patched %s", resp.Patch)
	}
	h.SetPolicy(Policy{Enabled: false, Excluded: []string{"istio-system"}})
	if resp := decode(t, post(h, "POST", "application/json", req)); resp.Patch != nil {
		t.Errorf("disabled: patched %s", resp.Patch)
	}
}

func TestLeavesOtherRequestsAlone(t *testing.T) {
	h := enabled()
	pod := stockPod(t)
	for _, c := range []struct {
		name string
		body []byte
	}{
		{"update", review("Pod", admissionv1.Update, "shop", pod)},
		{"not a pod", review("Deployment", admissionv1.Create, "shop", pod)},
		{"undecodable pod", review("Pod", admissionv1.Create, "shop", []byte(`{"spec":{"initContainers":7}}`))},
	} {
		t.Run(c.name, func(t *testing.T) {
			if resp := decode(t, post(h, "POST", "application/json", c.body)); resp.Patch != nil {
				t.Errorf("patched: %s", resp.Patch)
			}
		})
	}
}

func TestBadRequests(t *testing.T) {
	h := &Handler{}
	for _, c := range []struct {
		name, method, ctype string
		body                []byte
		code                int
	}{
		{"get", "GET", "application/json", nil, http.StatusMethodNotAllowed},
		{"content type", "POST", "text/plain", []byte("{}"), http.StatusUnsupportedMediaType},
		{"too large", "POST", "application/json", bytes.Repeat([]byte(" "), MaxBody+1), http.StatusRequestEntityTooLarge},
		{"garbage", "POST", "application/json", []byte("{"), http.StatusBadRequest},
		{"no request", "POST", "application/json", []byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}`), http.StatusBadRequest},
	} {
		t.Run(c.name, func(t *testing.T) {
			if w := post(h, c.method, c.ctype, c.body); w.Code != c.code {
				t.Errorf("status %d, want %d: %s", w.Code, c.code, w.Body)
			}
		})
	}
}
