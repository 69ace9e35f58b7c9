package webhook

import (
	"encoding/json"
	"net/http"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	admissionv1 "k8s.io/api/admission/v1"

	"github.com/meshcni/meshcni/internal/inject"
)

// FuzzServeHTTP: any body gets an answer, never a panic; a patch the
// webhook returns always applies to the object it was given.
func FuzzServeHTTP(f *testing.F) {
	f.Add(review("Pod", admissionv1.Create, "shop", stockPod(f)))
	f.Add(review("Pod", admissionv1.Create, "shop", []byte(`{"metadata":{"annotations":null},"spec":{"initContainers":[{"name":"istio-init","args":["istio-iptables","-p"]}]}}`)))
	f.Add([]byte(`{"request":{"uid":"x","kind":{"kind":"Pod"},"operation":"CREATE","object":{}}}`))
	h := enabled("istio-system")
	f.Fuzz(func(t *testing.T, body []byte) {
		w := post(h, "POST", "application/json", body)
		if w.Code != http.StatusOK {
			return
		}
		var in, out admissionv1.AdmissionReview
		if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil || out.Response == nil {
			t.Fatalf("200 without a review: %s", w.Body)
		}
		if out.Response.Patch == nil {
			return
		}
		_ = jsonv2.Unmarshal(body, &in) // as the handler reads it
		var ops []inject.Op
		if err := json.Unmarshal(out.Response.Patch, &ops); err != nil {
			t.Fatal(err)
		}
		if _, err := inject.ApplyPatch(in.Request.Object.Raw, ops); err != nil {
			t.Fatalf("patch does not apply: %v", err)
		}
	})
}
