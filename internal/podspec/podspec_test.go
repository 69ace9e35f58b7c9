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
		got, why := Decide(view(t, tc.pod))
		if got != tc.capture || !strings.Contains(why, tc.reason) {
			t.Errorf("%s: got (%v, %q), want (%v, ...%q...)", tc.name, got, why, tc.capture, tc.reason)
		}
	}
}

func TestHasIPv6(t *testing.T) {
	p := &corev1.Pod{Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}}}
	if HasIPv6(view(t, p)) {
		t.Fatal("IPv4-only pod reported as IPv6")
	}
	p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::1"})
	if !HasIPv6(view(t, p)) {
		t.Fatal("dual-stack pod not reported as IPv6")
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
