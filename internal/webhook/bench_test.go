package webhook

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
)

// BenchmarkReview is one review end to end in-process: the stock
// Istio-injected Bookinfo productpage pod as an AdmissionReview body
// through the HTTP handler, its response written and checked.
func BenchmarkReview(b *testing.B) {
	names, pods := fixturePods(b)
	var pod []byte
	for i, n := range names {
		if n == "bookinfo-injected-default.yaml/Deployment/productpage-v1" {
			pod = pods[i]
		}
	}
	if pod == nil {
		b.Fatal("no productpage-v1 in the fixtures")
	}
	body := review("Pod", admissionv1.Create, "shop", pod)
	h := enabled("istio-system")
	b.ReportAllocs()
	for b.Loop() {
		req := httptest.NewRequest("POST", "/mutate", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"patch":`) {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}
