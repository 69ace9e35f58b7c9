package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/testutils"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podinfo"
	"github.com/meshcni/meshcni/internal/podspec"
)

// fakePods serves pods from a map, or a fixed error.
type fakePods struct {
	pods  map[string]*corev1.Pod
	err   error
	calls int
}

func (f *fakePods) GetPod(_ context.Context, ns, name string) (*podspec.Pod, error) {
	f.calls++
	if f.err != nil {
		return nil, f.err
	}
	if p, ok := f.pods[ns+"/"+name]; ok {
		return podspec.Of(p)
	}
	return nil, &podinfo.APIError{Code: http.StatusNotFound, Reason: "NotFound", Message: `pods "` + name + `" not found`}
}

func (f *fakePods) Ready(context.Context) error { return f.err }

func meshPod(ns, name string, mod ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: k8stypes.UID("uid-" + name), Annotations: map[string]string{}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{
			{Name: "app", Ports: []corev1.ContainerPort{{ContainerPort: 9080}}},
			{Name: "istio-proxy"},
		}},
	}
	for _, m := range mod {
		m(p)
	}
	return p
}

const prevResult = `{"cniVersion":"%s","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],
 "ips":[{"address":"10.22.0.5/16","gateway":"10.22.0.1","interface":0}%s],"dns":{}}`

func stdinConf(version, extra string, ipv6 bool) []byte {
	v6 := ""
	if ipv6 {
		v6 = `,{"address":"fd00::5/64","interface":0}`
	}
	if version < "1.0.0" {
		// Results before 1.0.0 carry "version" per IP.
		v6 = strings.ReplaceAll(v6, `"address"`, `"version":"6","address"`)
	}
	prev := fmt.Sprintf(prevResult, version, v6)
	if version < "1.0.0" {
		prev = strings.Replace(prev, `{"address":"10.22`, `{"version":"4","address":"10.22`, 1)
	}
	return []byte(fmt.Sprintf(`{"cniVersion":"%s","name":"k8s-pod-network","type":"meshcni",
	 "kubeconfig":"/nonexistent","excludeNamespaces":["kube-system"],"podLookupRetries":2,
	 "podLookupInterval":"1ms"%s,"prevResult":%s}`, version, extra, prev))
}

type harness struct {
	p     *Plugin
	pods  *fakePods
	rules *netfilter.Fake
	log   *bytes.Buffer
}

func newHarness(pods ...*corev1.Pod) *harness {
	h := &harness{pods: &fakePods{pods: map[string]*corev1.Pod{}}, rules: netfilter.NewFake(), log: &bytes.Buffer{}}
	for _, p := range pods {
		h.pods.pods[p.Namespace+"/"+p.Name] = p
	}
	h.p = &Plugin{
		Rules: h.rules,
		API:   podinfo.Local{New: func(string, time.Duration) (podinfo.API, error) { return h.pods, nil }},
		LogTo: slog.New(slog.NewJSONHandler(h.log, nil)),
	}
	return h
}

func cmdArgs(ns, name, uid string, conf []byte) *skel.CmdArgs {
	args := "IgnoreUnknown=1"
	if name != "" {
		args += ";K8S_POD_NAMESPACE=" + ns + ";K8S_POD_NAME=" + name + ";K8S_POD_UID=" + uid
	}
	return &skel.CmdArgs{ContainerID: "c-" + name, Netns: "/var/run/netns/" + name, IfName: "eth0", Args: args, StdinData: conf}
}

func (h *harness) add(t *testing.T, a *skel.CmdArgs) ([]byte, error) {
	t.Helper()
	_, out, err := testutils.CmdAddWithArgs(a, func() error { return h.p.CmdAdd(a) })
	return out, err
}

func TestAddCapturesAndPassesResultThrough(t *testing.T) {
	for _, ver := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(ver, func(t *testing.T) {
			h := newHarness(meshPod("bookinfo", "productpage"))
			conf := stdinConf(ver, "", true)
			out, err := h.add(t, cmdArgs("bookinfo", "productpage", "uid-productpage", conf))
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			var got, want map[string]any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("stdout is not a result: %s", out)
			}
			var in map[string]any
			_ = json.Unmarshal(conf, &in)
			want = in["prevResult"].(map[string]any)
			if fmt.Sprint(got["ips"]) != fmt.Sprint(want["ips"]) || got["cniVersion"] != ver {
				t.Fatalf("result changed:\n got %v\nwant %v", got, want)
			}
			spec, ok := h.rules.Spec("/var/run/netns/productpage")
			if !ok {
				t.Fatal("pod was not captured")
			}
			// As Istio: a dual-stack pod without ISTIO_DUAL_STACK gets
			// IPv4 rules only (Envoy has no IPv6 listener to send to).
			if spec.IPv6 {
				t.Error("a dual-stack prevResult without ISTIO_DUAL_STACK enabled ip6tables rules")
			}
			if !strings.Contains(h.log.String(), `"decision":"captured"`) {
				t.Errorf("no decision line: %s", h.log)
			}
		})
	}
}

// The IPv6 decision from prevResult's addresses and the proxy's
// ISTIO_DUAL_STACK, as Istio makes it (capture.EnableIPv6).
func TestAddDecidesIPv6AsIstio(t *testing.T) {
	for _, tc := range []struct {
		name      string
		dualStack string
		want      bool
	}{{"no flag", "", false}, {"flag from valueFrom", "valueFrom", false}, {"flag true", "true", true}} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(meshPod("bookinfo", "productpage", func(p *corev1.Pod) {
				switch tc.dualStack {
				case "":
				case "valueFrom":
					p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: "ISTIO_DUAL_STACK",
						ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}
				default:
					p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: "ISTIO_DUAL_STACK", Value: tc.dualStack}}
				}
			}))
			if _, err := h.add(t, cmdArgs("bookinfo", "productpage", "uid-productpage", stdinConf("1.0.0", "", true))); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			spec, ok := h.rules.Spec("/var/run/netns/productpage")
			if !ok || spec.IPv6 != tc.want {
				t.Fatalf("captured %v, IPv6 %v; want IPv6 %v", ok, spec.IPv6, tc.want)
			}
			if tc.dualStack == "valueFrom" && !strings.Contains(h.log.String(), "read as false") {
				t.Errorf("no warning for a flag set through valueFrom: %s", h.log)
			}
		})
	}
	// An IPv6-only pod gets IPv6 rules without the flag.
	h := newHarness(meshPod("bookinfo", "productpage"))
	conf := strings.Replace(string(stdinConf("1.0.0", "", false)), `"10.22.0.5/16","gateway":"10.22.0.1"`, `"fd00::5/64","gateway":"fd00::1"`, 1)
	if _, err := h.add(t, cmdArgs("bookinfo", "productpage", "uid-productpage", []byte(conf))); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if spec, ok := h.rules.Spec("/var/run/netns/productpage"); !ok || !spec.IPv6 {
		t.Fatalf("IPv6-only pod: captured %v, IPv6 %v", ok, spec.IPv6)
	}
}

func TestAddSkips(t *testing.T) {
	cases := []struct {
		name   string
		pod    *corev1.Pod
		ns     string
		reason string
	}{
		{"excluded namespace", meshPod("kube-system", "coredns"), "kube-system", "excluded"},
		{"single container", meshPod("default", "solo", func(p *corev1.Pod) { p.Spec.Containers = p.Spec.Containers[1:] }), "default", "only one container"},
		{"no sidecar", meshPod("default", "plain", func(p *corev1.Pod) { p.Spec.Containers[1].Name = "logger" }), "default", "no istio-proxy"},
		{"inject false", meshPod("default", "optout", func(p *corev1.Pod) { p.Annotations[capture.AnnotationInject] = "false" }), "default", "inject=false"},
		{"istio-init", meshPod("default", "legacy", func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "istio-init"}}
		}), "default", "istio-init"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(tc.pod)
			if _, err := h.add(t, cmdArgs(tc.ns, tc.pod.Name, string(tc.pod.UID), stdinConf("1.0.0", "", false))); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if _, ok := h.rules.Spec("/var/run/netns/" + tc.pod.Name); ok {
				t.Fatal("pod must not be captured")
			}
			if !strings.Contains(h.log.String(), tc.reason) {
				t.Errorf("log does not give reason %q: %s", tc.reason, h.log)
			}
		})
	}
	t.Run("excluded namespace needs no API", func(t *testing.T) {
		h := newHarness()
		h.pods.err = errors.New("API down")
		if _, err := h.add(t, cmdArgs("kube-system", "x", "u", stdinConf("1.0.0", "", false))); err != nil {
			t.Fatalf("an excluded pod must start while the API is down: %v", err)
		}
		if h.pods.calls != 0 {
			t.Fatalf("%d API calls for an excluded namespace", h.pods.calls)
		}
	})
	t.Run("not a kubernetes pod", func(t *testing.T) {
		h := newHarness()
		if _, err := h.add(t, cmdArgs("", "", "", stdinConf("1.0.0", "", false))); err != nil {
			t.Fatal(err)
		}
		if h.pods.calls != 0 || h.rules.Calls != 0 {
			t.Fatal("no lookup or rules expected")
		}
	})
	t.Run("native sidecar counts as a container", func(t *testing.T) {
		always := corev1.ContainerRestartPolicyAlways
		pod := meshPod("default", "native", func(p *corev1.Pod) {
			p.Spec.Containers = p.Spec.Containers[:1]
			p.Spec.InitContainers = []corev1.Container{{Name: "istio-proxy", RestartPolicy: &always}}
		})
		h := newHarness(pod)
		if _, err := h.add(t, cmdArgs("default", "native", string(pod.UID), stdinConf("1.0.0", "", false))); err != nil {
			t.Fatal(err)
		}
		if _, ok := h.rules.Spec("/var/run/netns/native"); !ok {
			t.Fatal("a pod with a native istio-proxy sidecar must be captured")
		}
	})
}

func TestAddFailsClosed(t *testing.T) {
	cases := []struct {
		name string
		err  error
		pod  *corev1.Pod
		uid  string
		code uint
		msg  string
	}{
		{name: "api down", err: errors.New("connection refused"), code: types.ErrTryAgainLater, msg: "cannot reach the Kubernetes API"},
		{name: "forbidden", err: &podinfo.APIError{Code: http.StatusForbidden, Reason: "Forbidden", Message: "rbac"}, code: types.ErrInvalidNetworkConfig, msg: "may not get pods"},
		{name: "unauthorized", err: &podinfo.APIError{Code: http.StatusUnauthorized, Reason: "Unauthorized", Message: "expired"}, code: types.ErrTryAgainLater, msg: "rejected the plug-in's token"},
		{name: "not found", code: types.ErrTryAgainLater, msg: "not found"},
		{name: "api overloaded", err: fmt.Errorf("gave up: %w", &podinfo.APIError{Code: http.StatusTooManyRequests, Reason: "TooManyRequests"}),
			code: types.ErrTryAgainLater, msg: "the Kubernetes API answered 429 TooManyRequests"},
		{name: "not the pod", err: fmt.Errorf("gave up: %w", podinfo.ErrNotThePod), code: types.ErrTryAgainLater, msg: "did not send the pod"},
		{name: "uid mismatch", pod: meshPod("default", "p"), uid: "other", code: types.ErrTryAgainLater, msg: "different pod"},
		{name: "bad annotation", pod: meshPod("default", "p", func(p *corev1.Pod) {
			p.Annotations[capture.AnnotationExcludeInboundPorts] = "80,99999"
		}), uid: "uid-p", code: types.ErrInvalidNetworkConfig, msg: capture.AnnotationExcludeInboundPorts},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h *harness
			if tc.pod != nil {
				h = newHarness(tc.pod)
			} else {
				h = newHarness()
			}
			h.pods.err = tc.err
			out, err := h.add(t, cmdArgs("default", "p", tc.uid, stdinConf("1.0.0", "", false)))
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("want a CNI error, got %v (stdout %s)", err, out)
			}
			if te.Code != tc.code || !strings.Contains(te.Msg, tc.msg) {
				t.Fatalf("want code %d with %q, got %d %q", tc.code, tc.msg, te.Code, te.Msg)
			}
			if len(out) != 0 {
				t.Fatalf("a failed ADD must print no result, got %s", out)
			}
			if _, ok := h.rules.Spec("/var/run/netns/p"); ok {
				t.Fatal("rules applied despite the failure")
			}
		})
	}
	t.Run("apply fails", func(t *testing.T) {
		h := newHarness(meshPod("default", "p"))
		h.rules.Err = errors.New("iptables-restore: boom")
		_, err := h.add(t, cmdArgs("default", "p", "uid-p", stdinConf("1.0.0", "", false)))
		if err == nil || !strings.Contains(err.Error(), "cannot program redirection") {
			t.Fatalf("want apply error, got %v", err)
		}
	})
}

func TestAddRequiresPrevResult(t *testing.T) {
	h := newHarness(meshPod("default", "p"))
	conf := []byte(`{"cniVersion":"1.0.0","name":"n","type":"meshcni","kubeconfig":"/k"}`)
	_, err := h.add(t, cmdArgs("default", "p", "uid-p", conf))
	if err == nil || !strings.Contains(err.Error(), "must be called as chained plugin") {
		t.Fatalf("got %v", err)
	}
}

// A misspelt key is a CNI error 7 naming it, from every command that
// reads the config, before anything is looked up or programmed: it never
// silently becomes a default (here: no pod would be excluded).
func TestUnknownKeyIsError7(t *testing.T) {
	h := newHarness(meshPod("kube-system", "coredns"))
	conf := stdinConf("1.0.0", `,"exclude_namspaces":["kube-system"]`, false)
	for _, cmd := range []struct {
		name string
		run  func(*skel.CmdArgs) error
	}{{"ADD", h.p.CmdAdd}, {"CHECK", h.p.CmdCheck}, {"DEL", h.p.CmdDel}} {
		err := cmd.run(cmdArgs("kube-system", "coredns", "uid-coredns", conf))
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, `"exclude_namspaces"`) {
			t.Errorf("%s: %v, want code 7 naming exclude_namspaces", cmd.name, err)
		}
	}
	if h.pods.calls != 0 || h.rules.Calls != 0 {
		t.Errorf("API asked %d times, rules applied %d times", h.pods.calls, h.rules.Calls)
	}
}

func TestCheckAndDel(t *testing.T) {
	h := newHarness(meshPod("default", "p"))
	a := cmdArgs("default", "p", "uid-p", stdinConf("1.0.0", "", false))
	if _, err := h.add(t, a); err != nil {
		t.Fatal(err)
	}
	if err := h.p.CmdCheck(a); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	_ = h.rules.Remove(context.Background(), a.Netns)
	if err := h.p.CmdCheck(a); err == nil {
		t.Fatal("CHECK must fail when the rules are gone")
	}
	gone := *a
	gone.Netns = "/nonexistent/netns"
	if err := h.p.CmdDel(&gone); err != nil {
		t.Fatalf("DEL with a vanished netns: %v", err)
	}
}

func TestStatus(t *testing.T) {
	h := newHarness()
	conf := stdinConf("1.1.0", "", false)
	if err := h.p.CmdStatus(&skel.CmdArgs{StdinData: conf}); err != nil {
		t.Fatalf("STATUS with a reachable API: %v", err)
	}
	h.pods.err = errors.New("dial tcp: refused")
	var te *types.Error
	if err := h.p.CmdStatus(&skel.CmdArgs{StdinData: conf}); !errors.As(err, &te) || te.Code != 50 {
		t.Fatalf("STATUS with API down: want code 50, got %v", err)
	}
	real := &Plugin{LogTo: h.p.LogTo, API: podinfo.Local{New: podinfo.NewAPI}}
	if err := real.CmdStatus(&skel.CmdArgs{StdinData: conf}); !errors.As(err, &te) || te.Code != 50 || !strings.Contains(te.Msg, "kubeconfig") {
		t.Fatalf("STATUS without kubeconfig: want code 50 naming it, got %v", err)
	}
	// The test binary has no meshcni-lookup beside it.
	noHelper := &Plugin{LogTo: h.p.LogTo}
	if err := noHelper.CmdStatus(&skel.CmdArgs{StdinData: conf}); !errors.As(err, &te) || te.Code != 50 || !strings.Contains(te.Msg, "meshcni-lookup") {
		t.Fatalf("STATUS without the lookup helper: want code 50 naming it, got %v", err)
	}
}

func TestFailedLookupIsLoggedWhereTheConfigSays(t *testing.T) {
	h := newHarness()
	h.pods.err = errors.New("connection refused")
	h.p.LogTo = nil // log per config: logFile
	logFile := filepath.Join(t.TempDir(), "meshcni.log")
	a := cmdArgs("default", "p", "u", stdinConf("1.0.0", `,"logFile":"`+logFile+`"`, false))
	if _, err := h.add(t, a); err == nil {
		t.Fatal("ADD must fail")
	}
	b, err := os.ReadFile(logFile)
	if err != nil || !strings.Contains(string(b), `"decision":"error"`) || !strings.Contains(string(b), "default/p") {
		t.Fatalf("the failure is not in logFile: %q %v", b, err)
	}
}

// Lists as long as Istio allows start (257 CIDRs); a pod over the rule
// budget fails its ADD with code 7 naming the annotations and the budget,
// and nothing is programmed.
func TestAddRuleBudget(t *testing.T) {
	cidrs := func(n int) string {
		var l []string
		for i := range n {
			l = append(l, fmt.Sprintf("10.%d.%d.0/24", i/256, i%256))
		}
		return strings.Join(l, ",")
	}
	long := meshPod("bookinfo", "long", func(p *corev1.Pod) {
		p.Annotations[capture.AnnotationExcludeOutboundCIDRs] = cidrs(257)
	})
	multiplied := meshPod("bookinfo", "multiplied", func(p *corev1.Pod) {
		p.Annotations[capture.AnnotationIncludeOutboundCIDRs] = cidrs(256)
		p.Annotations[capture.AnnotationRerouteInterfaces] = "vm0,vm1,vm2,vm3,vm4,vm5,vm6,vm7,vm8,vm9,vm10,vm11,vm12,vm13,vm14,vm15"
	})
	h := newHarness(long, multiplied)
	if _, err := h.add(t, cmdArgs("bookinfo", "long", "uid-long", stdinConf("1.0.0", "", false))); err != nil {
		t.Fatalf("257 CIDRs, as Istio accepts: %v", err)
	}
	if spec, ok := h.rules.Spec("/var/run/netns/long"); !ok || len(spec.ExcludeOutboundCIDRs) != 257 {
		t.Fatalf("257 CIDRs: captured %v with %d", ok, len(spec.ExcludeOutboundCIDRs))
	}
	_, err := h.add(t, cmdArgs("bookinfo", "multiplied", "uid-multiplied", stdinConf("1.0.0", "", false)))
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
		t.Fatalf("ADD over the budget: %v, want code 7", err)
	}
	for _, want := range []string{capture.AnnotationIncludeOutboundCIDRs, capture.AnnotationRerouteInterfaces, fmt.Sprintf("budget of %d", capture.RuleBudget)} {
		if !strings.Contains(te.Msg, want) {
			t.Errorf("message %q does not name %q", te.Msg, want)
		}
	}
	if _, ok := h.rules.Spec("/var/run/netns/multiplied"); ok {
		t.Error("rules were programmed for a pod over the budget")
	}
}
