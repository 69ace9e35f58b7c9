//go:build integration

// Package chain drives a real conflist (Debian's bridge + host-local +
// loopback, then meshcni) through libcni from inside a node netns, against
// a real kube-apiserver, and proves the redirection with sockets.
package chain

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

var (
	cluster    *kubeharness.Cluster
	pluginBin  string
	kubeconfig string
)

func TestMain(m *testing.M) {
	os.Exit(testbed.Main(m, &pluginBin, &cluster, func(c *kubeharness.Cluster) (err error) {
		kubeconfig, _, err = testbed.PluginKubeconfig(context.Background(), c)
		return err
	}))
}

func pluginConf(kc string, extra map[string]any) map[string]any {
	c := map[string]any{
		"type": "meshcni", "kubeconfig": kc, "excludeNamespaces": []string{"kube-system", "istio-system"},
		"logLevel": "debug", "podLookupRetries": 3, "podLookupInterval": "200ms", "apiTimeout": "3s",
	}
	for k, v := range extra {
		c[k] = v
	}
	return c
}

func newNode(t *testing.T, kc string, ipv6 bool, extra map[string]any) *testbed.Node {
	t.Helper()
	opts := testbed.Options{PluginBinary: pluginBin, PluginConf: pluginConf(kc, extra), ForwardPorts: []int{cluster.Port}}
	if ipv6 {
		opts.Subnet6 = "fd0a:250::/64"
	}
	n, err := testbed.NewNode(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// createPod stores the pod in the API and attaches it through the chain.
func createPod(t *testing.T, n *testbed.Node, pod *corev1.Pod) (*testbed.Pod, error) {
	t.Helper()
	ctx := context.Background()
	created, err := cluster.CreatePod(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// No kubelet confirms a graceful delete here.
		_ = cluster.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	return n.AddPod(ctx, created.Namespace, created.Name, string(created.UID))
}

func mustCreatePod(t *testing.T, n *testbed.Node, pod *corev1.Pod) *testbed.Pod {
	t.Helper()
	p, err := createPod(t, n, pod)
	if err != nil {
		t.Fatalf("ADD %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return p
}

// server attaches a plain (uncaptured) pod listening on 8080.
func server(t *testing.T, n *testbed.Node, ns, name string) *testbed.Pod {
	t.Helper()
	p := mustCreatePod(t, n, kubeharness.NewPod(ns, name, testbed.NodeName))
	rec := testbed.NewRecorder()
	t.Cleanup(rec.Close)
	if err := rec.Serve(p.NS, "server", ":8080"); err != nil {
		t.Fatal(err)
	}
	return p
}

// sidecar serves stand-in Envoy listeners in a pod.
func sidecar(t *testing.T, p *testbed.Pod) {
	t.Helper()
	rec := testbed.NewRecorder()
	t.Cleanup(rec.Close)
	for name, addr := range map[string]string{"outbound": ":15001", "inbound": ":15006", "app": ":9080"} {
		if err := rec.Serve(p.NS, name, addr); err != nil {
			t.Fatal(err)
		}
	}
}

func ask(t *testing.T, p *testbed.Pod, addr string) string {
	t.Helper()
	got, err := testbed.Ask(p.NS, addr)
	if err != nil {
		t.Fatalf("%s -> %s: %v", p.Name, addr, err)
	}
	return got
}

func natRules(t *testing.T, p *testbed.Pod) string {
	t.Helper()
	out, _, err := netfilter.New(netfilter.Options{LockDir: t.TempDir()}).Save(context.Background(), p.NS.Path(), rules.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func hostPort(p *testbed.Pod, v6 bool, port int) string {
	a := p.IP(v6)
	if v6 {
		return fmt.Sprintf("[%s]:%d", a, port)
	}
	return fmt.Sprintf("%s:%d", a, port)
}

func TestProductpageIsCapturedAndRedirected(t *testing.T) {
	n := newNode(t, kubeconfig, true, nil)
	srv := server(t, n, "istio-system", "backend-pp")
	// ISTIO_DUAL_STACK: as with Istio, a dual-stack pod's IPv6 is
	// captured only with it (capture.EnableIPv6).
	dual := testbed.MeshPod("bookinfo", "productpage", 9080)
	dual.Spec.Containers[1].Env = append(dual.Spec.Containers[1].Env, corev1.EnvVar{Name: "ISTIO_DUAL_STACK", Value: "true"})
	pp := mustCreatePod(t, n, dual)
	sidecar(t, pp)

	for _, v6 := range []bool{false, true} {
		target := hostPort(srv, v6, 8080)
		if got, want := ask(t, pp, target), "outbound "+target; got != want {
			t.Errorf("app -> %s landed on %q, want %q", target, got, want)
		}
		app := hostPort(pp, v6, 9080)
		if got, want := ask(t, srv, app), "inbound "+app; got != want {
			t.Errorf("peer -> %s landed on %q, want %q", app, got, want)
		}
	}
	if save := natRules(t, pp); !strings.Contains(save, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT") {
		t.Errorf("productpage netns lacks the outbound capture:\n%s", save)
	}
	if save := natRules(t, srv); strings.Contains(save, "ISTIO") {
		t.Errorf("the uncaptured server pod got rules:\n%s", save)
	}

	// CHECK passes, then detects a deleted rule.
	if err := n.CheckPod(context.Background(), pp); err != nil {
		t.Fatalf("CHECK on a captured pod: %v", err)
	}
	_, err := netfilter.ExecRunner(context.Background(), nil, "*nat\n-D ISTIO_OUTPUT -j ISTIO_REDIRECT\nCOMMIT\n", "sh", "-c",
		"nsenter --net="+pp.NS.Path()+" iptables-restore --noflush")
	if err != nil {
		t.Fatal(err)
	}
	if err := n.CheckPod(context.Background(), pp); err == nil || !strings.Contains(err.Error(), "ISTIO_REDIRECT") {
		t.Fatalf("CHECK must name the deleted rule, got %v", err)
	}
}

func TestRepeatedAddIsIdempotent(t *testing.T) {
	n := newNode(t, kubeconfig, false, nil)
	pod := testbed.MeshPod("bookinfo", "details", 9080)
	p := mustCreatePod(t, n, pod)
	before := natRules(t, p)
	// A second ADD for the same sandbox, as a runtime retrying would send.
	out, err := n.AddChainedAgain(context.Background(), p)
	if err != nil {
		t.Fatalf("second ADD: %v", err)
	}
	if !strings.Contains(string(out), p.IP(false).String()) {
		t.Fatalf("second ADD must pass prevResult through, got %s", out)
	}
	if got := natRules(t, p); got != before {
		t.Fatalf("rules changed:\n%s\n---\n%s", before, got)
	}
}

func TestUncapturedPodsGetNoRules(t *testing.T) {
	n := newNode(t, kubeconfig, false, nil)
	srv := server(t, n, "istio-system", "backend-plain")
	single := kubeharness.NewPod("bookinfo", "single", testbed.NodeName)
	noProxy := testbed.MeshPod("bookinfo", "noproxy", 9080)
	noProxy.Spec.Containers[1].Name = "logger"
	optOut := testbed.MeshPod("bookinfo", "optout", 9080)
	optOut.Annotations["sidecar.istio.io/inject"] = "false"
	withInit := testbed.MeshPod("bookinfo", "withinit", 9080)
	withInit.Spec.InitContainers = []corev1.Container{{Name: "istio-init", Image: "docker.io/istio/proxyv2:1.24"}}
	excluded := testbed.MeshPod("kube-system", "excluded", 9080)

	for _, pod := range []*corev1.Pod{single, noProxy, optOut, withInit, excluded} {
		t.Run(pod.Name, func(t *testing.T) {
			p := mustCreatePod(t, n, pod)
			if save := natRules(t, p); strings.Contains(save, "ISTIO") {
				t.Fatalf("rules in an uncaptured pod:\n%s", save)
			}
			target := hostPort(srv, false, 8080)
			if got, want := ask(t, p, target), "server "+target; got != want {
				t.Fatalf("traffic must flow directly: got %q, want %q", got, want)
			}
		})
	}
}

func TestAnnotationsShapeRules(t *testing.T) {
	n := newNode(t, kubeconfig, false, nil)
	srv := server(t, n, "istio-system", "backend-ann")
	pod := testbed.MeshPod("bookinfo", "reviews", 9080)
	pod.Annotations["traffic.sidecar.istio.io/excludeOutboundPorts"] = "8080"
	pod.Annotations["traffic.sidecar.istio.io/includeInboundPorts"] = "9080"
	p := mustCreatePod(t, n, pod)
	sidecar(t, p)
	rec := testbed.NewRecorder()
	t.Cleanup(rec.Close)
	if err := rec.Serve(p.NS, "metrics", ":9100"); err != nil {
		t.Fatal(err)
	}

	target := hostPort(srv, false, 8080)
	if got := ask(t, p, target); got != "server "+target {
		t.Errorf("excluded outbound port must go direct, got %q", got)
	}
	if got, want := ask(t, srv, hostPort(p, false, 9080)), "inbound "+hostPort(p, false, 9080); got != want {
		t.Errorf("included inbound port: got %q, want %q", got, want)
	}
	if got, want := ask(t, srv, hostPort(p, false, 9100)), "metrics "+hostPort(p, false, 9100); got != want {
		t.Errorf("port not in includeInboundPorts must reach the app: got %q, want %q", got, want)
	}
}

func TestFailsClosed(t *testing.T) {
	ctx := context.Background()
	noRBAC, _, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", "nobody", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		kc    string
		mod   func(*corev1.Pod)
		uid   string
		down  bool
		wants string
	}{
		{name: "api down", kc: kubeconfig, down: true, wants: "cannot reach the Kubernetes API"},
		{name: "rbac forbidden", kc: noRBAC, wants: "may not get pods"},
		{name: "wrong uid", kc: kubeconfig, uid: "11111111-2222-3333-4444-555555555555", wants: "different pod"},
		{name: "bad annotation", kc: kubeconfig, mod: func(p *corev1.Pod) {
			p.Annotations["traffic.sidecar.istio.io/excludeOutboundIPRanges"] = "10.0.0.0/40"
		}, wants: "excludeOutboundIPRanges"},
		{name: "missing kubeconfig", kc: "/nonexistent/kubeconfig", wants: "kubeconfig /nonexistent/kubeconfig is missing"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, tc.kc, false, nil)
			if tc.down {
				n.StopForwarding()
			}
			pod := testbed.MeshPod("bookinfo", "fail-"+strconv.Itoa(i), 9080)
			if tc.mod != nil {
				tc.mod(pod)
			}
			created, err := cluster.CreatePod(ctx, pod)
			if err != nil {
				t.Fatal(err)
			}
			uid := string(created.UID)
			if tc.uid != "" {
				uid = tc.uid
			}
			_, err = n.AddPod(ctx, pod.Namespace, pod.Name, uid)
			if err == nil || !strings.Contains(err.Error(), tc.wants) {
				t.Fatalf("ADD must fail saying %q, got %v", tc.wants, err)
			}
		})
	}
}

func TestManyPodsInParallel(t *testing.T) {
	n := newNode(t, kubeconfig, false, nil)
	const count = 20
	var wg sync.WaitGroup
	errs := make(chan error, count)
	pods := make([]*testbed.Pod, count)
	for i := range count {
		pod := testbed.MeshPod("bookinfo", "load-"+strconv.Itoa(i), 9080)
		created, err := cluster.CreatePod(context.Background(), pod)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := n.AddPod(context.Background(), created.Namespace, created.Name, string(created.UID))
			pods[i] = p
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("parallel ADD: %v", err)
		}
	}
	for _, p := range pods {
		if err := n.CheckPod(context.Background(), p); err != nil {
			t.Errorf("%s: %v", p.Name, err)
		}
	}
}
