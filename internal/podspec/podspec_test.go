package podspec

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/capture"
)

func pod(containers []string, init []corev1.Container, ann map[string]string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: ann}}
	for _, c := range containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: c})
	}
	p.Spec.InitContainers = init
	return p
}

func TestDecide(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	cases := []struct {
		name    string
		pod     *corev1.Pod
		capture bool
		reason  string
	}{
		{"sidecar", pod([]string{"app", "istio-proxy"}, nil, nil), true, "present"},
		{"inject false", pod([]string{"app", "istio-proxy"}, nil, map[string]string{"sidecar.istio.io/inject": "False"}), false, "inject=false"},
		{"inject true", pod([]string{"app", "istio-proxy"}, nil, map[string]string{"sidecar.istio.io/inject": "true"}), true, "present"},
		{"no sidecar", pod([]string{"app", "envoy"}, nil, nil), false, "no istio-proxy"},
		{"sidecar alone", pod([]string{"istio-proxy"}, nil, nil), false, "only one container"},
		{"istio-init", pod([]string{"app", "istio-proxy"}, []corev1.Container{{Name: "istio-init"}}, nil), false, "istio-init"},
		{"native sidecar", pod([]string{"app"}, []corev1.Container{{Name: "istio-proxy", RestartPolicy: &always}}, nil), true, "present"},
		{"init istio-proxy that is not a sidecar", pod([]string{"app"}, []corev1.Container{{Name: "istio-proxy"}}, nil), false, "no istio-proxy"},
	}
	judge := NewJudge(capture.Default(), []string{"kube-system"})
	for _, tc := range cases {
		v, err := judge.Pod(view(t, tc.pod), nil)
		if err != nil || v.Capture != tc.capture || !strings.Contains(v.Reason, tc.reason) {
			t.Errorf("%s: got (%v, %q, %v), want (%v, ...%q...)", tc.name, v.Capture, v.Reason, err, tc.capture, tc.reason)
		}
	}
}

// The verdict's namespace part decides alone (the plug-in's fast path,
// before any API call), and Pod makes the same decision.
func TestExcludedNamespace(t *testing.T) {
	judge := NewJudge(capture.Default(), []string{"kube-system"})
	if _, done := judge.Namespace("shop"); done {
		t.Error("namespace shop decided without the pod")
	}
	v, done := judge.Namespace("kube-system")
	if !done || v.Capture || !strings.Contains(v.Reason, "excluded") {
		t.Errorf("kube-system: %+v, done %v", v, done)
	}
	p := pod([]string{"app", "istio-proxy"}, nil, nil)
	p.Namespace = "kube-system"
	if v, err := judge.Pod(view(t, p), nil); err != nil || v.Capture || v.ProgrammedBy != "" || !strings.Contains(v.Reason, "excluded") {
		t.Errorf("a mesh pod in kube-system: %+v, %v", v, err)
	}
	// In an excluded namespace, istio-init programs the rules: verify
	// must expect them rather than call them strays.
	p.Spec.InitContainers = []corev1.Container{{Name: "istio-init"}}
	if v, err := judge.Pod(view(t, p), nil); err != nil || v.Capture || v.ProgrammedBy != "istio-init" {
		t.Errorf("an istio-init pod in kube-system: %+v, %v", v, err)
	}
}

// The spec's IPv6 comes from the addresses the caller passes, decided as
// Istio decides it; the API's podIPs are one such list.
func TestVerdictIPv6(t *testing.T) {
	p := pod([]string{"app", "istio-proxy"}, nil, nil)
	p.Namespace = "shop"
	p.Status.PodIPs = []corev1.PodIP{{IP: "fd00::1"}, {IP: "10.0.0.1"}}
	judge := NewJudge(capture.Default(), nil)
	addrs := Addrs(view(t, p))
	if len(addrs) != 2 || !addrs[0].Is6() {
		t.Fatalf("Addrs = %v", addrs)
	}
	v, err := judge.Pod(view(t, p), addrs)
	if err != nil || !v.Capture || v.Spec.IPv6 {
		t.Errorf("dual-stack pod, IPv6 first, no ISTIO_DUAL_STACK: %+v, %v; want IPv4 only, as Istio", v.Spec.IPv6, err)
	}
	p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: "ISTIO_DUAL_STACK", Value: "true"}}
	if v, err := judge.Pod(view(t, p), addrs); err != nil || !v.Spec.IPv6 {
		t.Errorf("with ISTIO_DUAL_STACK: IPv6 %v, %v", v.Spec.IPv6, err)
	}
	// A flag set through valueFrom is false, with a warning, not an error.
	p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: "INVALID_DROP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}
	if v, err := judge.Pod(view(t, p), addrs); err != nil || v.Spec.DropInvalid || len(v.Warnings) != 1 {
		t.Errorf("INVALID_DROP from valueFrom: %+v, %v", v, err)
	}
}

// view is the pod as the plug-in decodes it from the API's JSON.
func view(t *testing.T, p *corev1.Pod) *Pod {
	t.Helper()
	v, err := Of(p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestProxyOf reads the sidecar's identity and env through the JSON the
// API sends: the container's runAsUser/runAsGroup over the pod's, literal
// env values, valueFrom as empty.
func TestProxyOf(t *testing.T) {
	uid, podUID, podGID := int64(1337), int64(1000), int64(1001)
	always := corev1.ContainerRestartPolicyAlways
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "ns", UID: "u-1", Annotations: map[string]string{"k": "v"}},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsUser: &podUID, RunAsGroup: &podGID},
			Containers:      []corev1.Container{{Name: "app"}},
			InitContainers: []corev1.Container{{Name: "istio-proxy", RestartPolicy: &always,
				SecurityContext: &corev1.SecurityContext{RunAsUser: &uid},
				Env: []corev1.EnvVar{{Name: "ISTIO_META_DNS_CAPTURE", Value: "true"},
					{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}}},
		},
	}
	v := view(t, p)
	if v.Name != "a" || v.Namespace != "ns" || v.UID != "u-1" || v.Annotations["k"] != "v" {
		t.Fatalf("metadata: %+v", v.ObjectMeta)
	}
	got := ProxyOf(v)
	if got.UID == nil || *got.UID != uid || got.GID == nil || *got.GID != podGID {
		t.Fatalf("identity: uid %v gid %v, want %d %d", got.UID, got.GID, uid, podGID)
	}
	if got.Env["ISTIO_META_DNS_CAPTURE"] != "true" || got.Env["POD_NAME"] != "" || len(got.Env) != 2 {
		t.Fatalf("env: %v", got.Env)
	}
}
