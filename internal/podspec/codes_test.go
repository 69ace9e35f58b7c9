package podspec

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/internal/capture"
)

// Every verdict carries a code from the fixed set, and the code agrees
// with the decision: the metrics' reason label is this code, so a pod
// counted "captured" must be one Judge captures.
func TestVerdictCodes(t *testing.T) {
	var cidrs []string
	for i := range 300 {
		cidrs = append(cidrs, fmt.Sprintf("10.%d.%d.0/24", i/256, i%256))
	}
	cases := []struct {
		name    string
		pod     *corev1.Pod
		ns      string
		code    string
		capture bool
		fails   bool
	}{
		{"captured", pod([]string{"app", "istio-proxy"}, nil, nil), "shop", CodeCaptured, true, false},
		{"excluded", pod([]string{"app", "istio-proxy"}, nil, nil), "kube-system", CodeExcludedNamespace, false, false},
		{"inject false", pod([]string{"app", "istio-proxy"}, nil, map[string]string{capture.AnnotationInject: "false"}), "shop", CodeInjectFalse, false, false},
		{"no sidecar", pod([]string{"app"}, nil, nil), "shop", CodeNoSidecar, false, false},
		{"one container", pod([]string{"istio-proxy"}, nil, nil), "shop", CodeOneContainer, false, false},
		{"istio-init", pod([]string{"app", "istio-proxy"}, []corev1.Container{{Name: "istio-init"}}, nil), "shop", CodeIstioInit, false, false},
		{"bad annotation", pod([]string{"app", "istio-proxy"}, nil, map[string]string{capture.AnnotationIncludeInboundPorts: "http"}), "shop", CodeInvalidPod, true, true},
		{"over budget", pod([]string{"app", "istio-proxy"}, nil, map[string]string{
			capture.AnnotationIncludeOutboundCIDRs: strings.Join(cidrs, ","),
			capture.AnnotationRerouteInterfaces:    "eth1,eth2,eth3,eth4,eth5,eth6,eth7,eth8",
		}), "shop", CodeBudget, true, true},
	}
	judge := NewJudge(capture.Default(), []string{"kube-system"})
	for _, tc := range cases {
		tc.pod.Namespace = tc.ns
		v, err := judge.Pod(view(t, tc.pod), nil)
		if (err != nil) != tc.fails || v.Code != tc.code || v.Capture != tc.capture {
			t.Errorf("%s: got code %q capture %v err %v; want %q, %v, error %v", tc.name, v.Code, v.Capture, err, tc.code, tc.capture, tc.fails)
		}
		if !slices.Contains(Codes, v.Code) {
			t.Errorf("%s: code %q is not in Codes", tc.name, v.Code)
		}
	}
	if v, done := judge.Namespace("kube-system"); !done || v.Code != CodeExcludedNamespace {
		t.Errorf("Namespace: %+v", v)
	}
}
