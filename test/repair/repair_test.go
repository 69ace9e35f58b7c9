//go:build integration

// Package repair tests the repair controller against a real kube-apiserver
// and real pod network namespaces that were attached without meshcni.
package repair

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podspec"
	"github.com/meshcni/meshcni/internal/repair"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

var cluster *kubeharness.Cluster

func TestMain(m *testing.M) { os.Exit(kubeharness.RunTests(m, kubeharness.Options{}, &cluster)) }

// node is a testbed node whose chain lacks meshcni: pods start uncaptured,
// as when they are scheduled before the agent is ready.
func node(t *testing.T) *testbed.Node {
	t.Helper()
	n, err := testbed.NewNode(testbed.Options{ForwardPorts: []int{cluster.Port}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// brokenPod creates a mesh pod with an istio-validation init container,
// attaches it without meshcni, starts a process for it in a cgroup named
// after its UID (as kubelet would) and reports the validation failure.
func brokenPod(t *testing.T, n *testbed.Node, name string, mod ...func(*corev1.Pod)) (*corev1.Pod, *testbed.Pod) {
	t.Helper()
	ctx := context.Background()
	spec := testbed.MeshPod("shop", name, 9080)
	for _, m := range mod {
		m(spec)
	}
	spec.Spec.InitContainers = []corev1.Container{{Name: repair.ValidationContainer, Image: "meshcni:dev",
		Args: []string{"--run-validation", "--skip-rule-apply"}}}
	pod, err := cluster.CreatePod(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.CoreV1().Pods("shop").Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	p, err := n.AddPod(ctx, "shop", name, string(pod.UID))
	if err != nil {
		t.Fatal(err)
	}
	sandboxProcess(t, p.NS, string(pod.UID))
	return failValidation(t, pod), p
}

func failValidation(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	pod.Status.PodIPs = []corev1.PodIP{{IP: "10.250.0.9"}}
	pod.Status.InitContainerStatuses = []corev1.ContainerStatus{{
		Name: repair.ValidationContainer, RestartCount: 1,
		LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 126, Reason: "Error", FinishedAt: metav1.Now()}},
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
	}}
	updated, err := cluster.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(context.Background(), pod, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return updated
}

// sandboxProcess runs a process inside netns n, in a cgroup path that holds
// "pod<uid>" as kubelet's cgroupfs driver lays it out.
func sandboxProcess(t *testing.T, n ns.NetNS, uid string) {
	t.Helper()
	cg := filepath.Join("/sys/fs/cgroup/pids", "meshcni-test-"+strconv.Itoa(os.Getpid()), "kubepods", "pod"+uid)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatalf("cgroup: %v", err)
	}
	var cmd *exec.Cmd
	err := n.Do(func(ns.NetNS) error {
		cmd = exec.Command("sleep", "600")
		return cmd.Start()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		for d := cg; strings.Contains(d, "meshcni-test-"); d = filepath.Dir(d) {
			_ = os.Remove(d)
		}
	})
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func start(t *testing.T, mode repair.Mode, reg *prometheus.Registry) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pods, watchDone := agent.WatchNodePods(ctx, cluster.Client, testbed.NodeName)
	c, err := repair.New(repair.Options{
		Client: cluster.Client, NodeName: testbed.NodeName, Mode: mode, Pods: pods.Informer,
		Finder: repair.ProcFinder{}, Rules: netfilter.New(netfilter.Options{LockDir: t.TempDir()}),
		Judge: podspec.NewJudge(capture.Default(), []string{"kube-system"}), Registerer: reg,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
		<-watchDone
	})
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func events(t *testing.T, pod *corev1.Pod, reason string) int {
	t.Helper()
	list, err := cluster.Client.CoreV1().Events(pod.Namespace).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.uid=" + string(pod.UID) + ",reason=" + reason})
	if err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}

func actions(reg *prometheus.Registry, mode repair.Mode, result string) float64 {
	mfs, _ := reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "meshcni_repair_actions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["mode"] == string(mode) && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestRepairInPlace(t *testing.T) {
	n := node(t)
	reg := prometheus.NewRegistry()
	pod, p := brokenPod(t, n, "cart")
	rec := testbed.NewRecorder()
	t.Cleanup(rec.Close)
	if err := rec.Serve(p.NS, "sidecar", ":15001"); err != nil {
		t.Fatal(err)
	}
	// Uncaptured before the repair: a dial to a closed port is refused.
	if _, err := testbed.Ask(p.NS, "10.250.0.1:8080"); err == nil {
		t.Fatal("the pod was captured before any repair")
	}

	start(t, repair.InPlace, reg)
	eventually(t, "the Repaired event", func() bool { return events(t, pod, "Repaired") == 1 })
	if got, want := mustAsk(t, p, "10.250.0.1:8080"), "sidecar 10.250.0.1:8080"; got != want {
		t.Fatalf("after repair, outbound landed on %q, want %q", got, want)
	}
	if err := netfilter.New(netfilter.Options{LockDir: t.TempDir()}).Check(context.Background(), p.NS.Path(), capture.Default()); err != nil {
		t.Fatalf("repaired rules differ from the pod's spec: %v", err)
	}
	if got := actions(reg, repair.InPlace, "success"); got != 1 {
		t.Fatalf("success metric = %v, want 1", got)
	}

	// The same failure seen again (any pod update) is not acted on twice.
	fresh, _ := cluster.Client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
	fresh.Labels["touched"] = "yes"
	if _, err := cluster.Client.CoreV1().Pods(pod.Namespace).Update(context.Background(), fresh, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if got := actions(reg, repair.InPlace, "success") + actions(reg, repair.InPlace, "failure"); got != 1 {
		t.Fatalf("the same failure was acted on again: %v actions", got)
	}
}

// Repair judges with the plug-in's verdict, rule budget included: a broken
// pod over the budget gets a RepairFailed event naming it, and no rules.
func TestRepairHonoursRuleBudget(t *testing.T) {
	n := node(t)
	reg := prometheus.NewRegistry()
	pod, p := brokenPod(t, n, "multiplied", func(p *corev1.Pod) {
		var cidrs, nics []string
		for i := range 256 {
			cidrs = append(cidrs, fmt.Sprintf("10.%d.0.0/16", i))
		}
		for i := range 16 {
			nics = append(nics, fmt.Sprintf("vm%d", i))
		}
		p.Annotations[capture.AnnotationIncludeOutboundCIDRs] = strings.Join(cidrs, ",")
		p.Annotations[capture.AnnotationRerouteInterfaces] = strings.Join(nics, ",")
	})
	start(t, repair.InPlace, reg)
	eventually(t, "a RepairFailed event", func() bool { return events(t, pod, "RepairFailed") >= 1 })
	list, err := cluster.Client.CoreV1().Events(pod.Namespace).List(context.Background(), metav1.ListOptions{
		FieldSelector: "involvedObject.uid=" + string(pod.UID) + ",reason=RepairFailed"})
	if err != nil {
		t.Fatal(err)
	}
	if msg := list.Items[0].Message; !strings.Contains(msg, fmt.Sprintf("budget of %d", capture.RuleBudget)) || !strings.Contains(msg, capture.AnnotationRerouteInterfaces) {
		t.Errorf("event %q does not name the budget and the annotations", msg)
	}
	save, _, err := netfilter.New(netfilter.Options{LockDir: t.TempDir()}).Save(context.Background(), p.NS.Path(), rules.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(save, "ISTIO_") {
		t.Fatalf("repair programmed a pod over the budget:\n%s", save)
	}
	if got := actions(reg, repair.InPlace, "success"); got != 0 {
		t.Fatalf("success metric = %v, want 0", got)
	}
}

func mustAsk(t *testing.T, p *testbed.Pod, addr string) string {
	t.Helper()
	got, err := testbed.Ask(p.NS, addr)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestRepairDeleteUsesPreconditions(t *testing.T) {
	n := node(t)
	reg := prometheus.NewRegistry()
	pod, _ := brokenPod(t, n, "checkout")
	start(t, repair.Delete, reg)
	// Without a kubelet a graceful delete stops at the deletion timestamp.
	eventually(t, "the pod's deletion", func() bool {
		got, err := cluster.Client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		return err != nil || got.DeletionTimestamp != nil
	})
	// Events are recorded asynchronously, after the delete.
	eventually(t, "the RepairDeleted event", func() bool { return events(t, pod, "RepairDeleted") == 1 })
	if got := actions(reg, repair.Delete, "success"); got != 1 {
		t.Fatalf("success metric = %v, want 1", got)
	}

	// Recreated under the same name, healthy: never touched.
	if err := cluster.Client.CoreV1().Pods(pod.Namespace).Delete(context.Background(), pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	again, err := cluster.CreatePod(context.Background(), testbed.MeshPod("shop", "checkout", 9080))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	got, err := cluster.Client.CoreV1().Pods("shop").Get(context.Background(), "checkout", metav1.GetOptions{})
	if err != nil || got.UID != again.UID || got.DeletionTimestamp != nil {
		t.Fatalf("the recreated pod was touched: %v", err)
	}
}

func TestLabelMode(t *testing.T) {
	n := node(t)
	reg := prometheus.NewRegistry()
	pod, _ := brokenPod(t, n, "search")
	start(t, repair.Label, reg)
	eventually(t, "the label", func() bool {
		got, err := cluster.Client.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		return err == nil && got.Labels[repair.LabelKey] == "true"
	})
	eventually(t, "the Uncaptured event", func() bool { return events(t, pod, "Uncaptured") == 1 })
}

func TestHealthyAndExcludedPodsAreLeftAlone(t *testing.T) {
	n := node(t)
	reg := prometheus.NewRegistry()
	healthy, err := cluster.CreatePod(context.Background(), testbed.MeshPod("shop", "healthy", 9080))
	if err != nil {
		t.Fatal(err)
	}
	excluded := testbed.MeshPod("kube-system", "sys", 9080)
	created, err := cluster.CreatePod(context.Background(), excluded)
	if err != nil {
		t.Fatal(err)
	}
	failValidation(t, created)
	_ = n
	start(t, repair.Delete, reg)
	time.Sleep(2 * time.Second)
	for _, p := range []*corev1.Pod{healthy, created} {
		if _, err := cluster.Client.CoreV1().Pods(p.Namespace).Get(context.Background(), p.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("%s/%s was acted on: %v", p.Namespace, p.Name, err)
		}
	}
	if n := testutil.CollectAndCount(reg); n != 0 {
		t.Errorf("%d action series recorded for pods that needed none", n)
	}
	t.Cleanup(func() {
		for _, p := range []*corev1.Pod{healthy, created} {
			_ = cluster.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		}
	})
}
