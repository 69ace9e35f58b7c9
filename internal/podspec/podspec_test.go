package podspec

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	for _, tc := range cases {
		got, why := Decide(tc.pod)
		if got != tc.capture || !strings.Contains(why, tc.reason) {
			t.Errorf("%s: got (%v, %q), want (%v, ...%q...)", tc.name, got, why, tc.capture, tc.reason)
		}
	}
}

func TestHasIPv6(t *testing.T) {
	p := &corev1.Pod{Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}}}
	if HasIPv6(p) {
		t.Fatal("IPv4-only pod reported as IPv6")
	}
	p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::1"})
	if !HasIPv6(p) {
		t.Fatal("dual-stack pod not reported as IPv6")
	}
}
