// Package webhook serves meshcni's mutating admission webhook: for every
// pod CREATE it answers with the JSON Patch internal/inject computes, and
// it keeps its own TLS serving certificate (a self-signed CA in a Secret,
// its bundle in the MutatingWebhookConfiguration).
package webhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	jsonv2 "github.com/go-json-experiment/json"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/inject"
)

// MaxBody bounds a request: the API server caps a request at 3 MiB, and
// an AdmissionReview of a pod is far smaller.
const MaxBody = 3 << 20

// presize bounds readBody's first allocation: a review of a pod with a
// sidecar is 10-20 KiB.
const presize = 256 << 10

// Policy is what the handler applies: the MeshCNI resource as it is now.
type Policy struct {
	// Enabled false leaves every pod alone: with meshcni switched off, pods
	// keep Istio's istio-init, which programs their rules itself.
	Enabled bool
	// Excluded are the namespaces meshcni never captures: exactly the
	// plug-in's list (controller.ExcludedNamespaces decides both).
	Excluded []string
}

// Handler answers AdmissionReview (admission.k8s.io/v1) requests. Its zero
// value leaves every pod alone until SetPolicy is called: a webhook that
// does not know the settings yet acts as one that is down (failurePolicy
// Ignore), which is safe.
type Handler struct {
	Log    *slog.Logger
	policy atomic.Pointer[Policy]
}

// SetPolicy replaces the policy; requests already being answered keep
// the one they started with.
func (h *Handler) SetPolicy(p Policy) {
	p.Excluded = slices.Clone(p.Excluded)
	h.policy.Store(&p)
}

// Policy is the policy in force (the zero Policy before any SetPolicy).
func (h *Handler) Policy() Policy {
	if p := h.policy.Load(); p != nil {
		return *p
	}
	return Policy{}
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		http.Error(w, "Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	body, err := readBody(w, r)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("request larger than %d bytes", MaxBody), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "reading the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	// Requests are decoded with encoding/json/v2's implementation
	// (go-json-experiment, already in Kubernetes' own dependencies): in
	// half encoding/json's CPU (docs/performance.md), and it matches
	// names exactly and refuses duplicates, as JSON Patch resolves them,
	// so the pod decided on is the one the patch applies to. The answer
	// is written with encoding/json, whose omitempty the API types are
	// tagged for.
	var review admissionv1.AdmissionReview
	if err := jsonv2.Unmarshal(body, &review); err != nil {
		http.Error(w, "not an AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if review.Request == nil {
		http.Error(w, "AdmissionReview without a request", http.StatusBadRequest)
		return
	}
	out := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Response: h.Review(review.Request),
	}
	resp, err := json.Marshal(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(resp)
}

// readBody reads the request whole, at most MaxBody bytes; with a
// Content-Length (the API server sends one) in one allocation of that
// size, where io.ReadAll doubles its way up (an eighth of a review's
// allocated bytes). The first allocation is capped at presize, so that a
// client announcing a large body and sending none holds little memory.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	var buf bytes.Buffer
	if n := r.ContentLength; n > 0 {
		buf.Grow(int(min(n, presize)) + bytes.MinRead) // ReadFrom wants MinRead free at the end
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBody))
	return buf.Bytes(), err
}

// Review decides one request. It always allows: a pod it cannot read or
// convert is left as it is, and keeps Istio's istio-init, which programs
// the pod's rules itself (safe, as with failurePolicy Ignore).
func (h *Handler) Review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	result := resultSkipped
	defer observeReview(time.Now(), &result)
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		return resp
	}
	result = resultError
	var pod corev1.Pod
	if err := jsonv2.Unmarshal(req.Object.Raw, &pod); err != nil {
		resp.Warnings = []string{"meshcni: pod left unchanged: " + err.Error()}
		h.log().Warn("pod left unchanged", "namespace", req.Namespace, "name", req.Name, "err", err)
		return resp
	}
	ns := req.Namespace
	if ns == "" {
		ns = pod.Namespace
	}
	policy := h.Policy()
	if !policy.Enabled {
		result = resultSkipped
		return resp
	}
	_, _, rec := inject.Template(pod.ObjectMeta, pod.Spec, ns, policy.Excluded)
	if !rec.Changed() {
		result = resultUnchanged
		return resp
	}
	ops := rec.Patch("", pod.Annotations != nil)
	// The patch must apply to exactly what the API server sent; if it
	// does not (it always should), leaving the pod alone is safe.
	// CheckPatch answers as applying it would, without decoding and
	// re-encoding the whole pod (a third of a review's CPU).
	if err := inject.CheckPatch(req.Object.Raw, ops); err != nil {
		resp.Warnings = []string{"meshcni: pod left unchanged: " + err.Error()}
		h.log().Error("patch does not apply", "namespace", ns, "name", podName(req, &pod), "err", err)
		return resp
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return resp
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	result = resultOf(rec.Action)
	if rec.Action == "" {
		h.log().Info("pod keeps istio-init", "namespace", ns, "name", podName(req, &pod), "reason", note(rec))
	} else {
		// Every pod creation in the cluster comes here: counted by
		// meshcni_webhook_mutations_total, logged only at debug (at info, a
		// line per created pod, each a write on the review's path).
		h.log().Debug("pod mutated", "namespace", ns, "name", podName(req, &pod), "action", rec.Action, "ops", len(ops))
	}
	return resp
}

// note is the reason a pod was not converted.
func note(rec inject.Record) string {
	for _, kv := range rec.Annotations {
		if kv[0] == inject.AnnotationNotMutated {
			return kv[1]
		}
	}
	return ""
}

// podName names a pod for the log; a CREATE often has only generateName.
func podName(req *admissionv1.AdmissionRequest, pod *corev1.Pod) string {
	switch {
	case req.Name != "":
		return req.Name
	case pod.Name != "":
		return pod.Name
	}
	return pod.GenerateName + "*"
}

func (h *Handler) log() *slog.Logger {
	if h.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Log
}
