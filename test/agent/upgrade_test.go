//go:build integration

package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentpkg "github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/test/testbed"
)

// A stopping agent whose DaemonSet remains (a rolling upgrade) keeps the
// install for the next agent; once the DaemonSet is deleted, a stopping
// agent uninstalls, leaving the conf dir as it was and no startup taint
// (before: a true uninstall put the taint back on every node, so after
// `meshcnictl disable` no pod could be scheduled anywhere).
func TestUpgradeKeepsUninstallRemoves(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ctx := context.Background()
	node := newNode(t)
	before := snapshotDir(t, node.ConfDir)

	const ns = "meshcni-upgrade"
	if err := cluster.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "meshcni-agent"}
	ds, err := cluster.Client.AppsV1().DaemonSets(ns).Create(ctx, &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "meshcni-agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "meshcni-agent:dev"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "meshcni-agent-x1", Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID, Controller: &yes}}},
		Spec: corev1.PodSpec{NodeName: testbed.NodeName, Containers: []corev1.Container{{Name: "agent", Image: "meshcni-agent:dev"}}},
	}
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		_ = cluster.Client.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		_ = cluster.Client.AppsV1().DaemonSets(ns).Delete(ctx, ds.Name, metav1.DeleteOptions{})
	})
	base, _, _ := agentOnNode(t, node, testbed.NodeName, "meshcni-agent-upgrade", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
		{APIGroups: []string{"apps"}, Resources: []string{"daemonsets"}, Verbs: []string{"get"}},
	})
	createNode(t, testbed.NodeName, nil, agentpkg.StartupTaint)

	runOnce := func(beforeStop func()) {
		t.Helper()
		o := base
		o.PodName, o.PodNamespace = pod.Name, ns
		a, err := agentpkg.New(o, slog.New(slog.NewJSONHandler(testWriter{t}, nil)))
		if err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(runCtx) }()
		waitFor(t, 10*time.Second, "agent ready", func() bool { ok, _ := a.Ready(); return ok })
		beforeStop()
		stop()
		if err := <-done; err != nil {
			t.Fatalf("agent: %v", err)
		}
	}

	runOnce(func() {})
	list, err := node.Conflist()
	if err != nil {
		t.Fatal(err)
	}
	if last := list.Plugins[len(list.Plugins)-1]; last.Network.Type != "meshcni" {
		t.Fatal("an agent stopped while its DaemonSet remains must keep the install")
	}
	if _, err := os.Stat(filepath.Join(node.BinDir, "meshcni")); err != nil {
		t.Fatalf("binary removed on an upgrade: %v", err)
	}
	if hasStartupTaint(t, testbed.NodeName) {
		t.Fatal("an upgrade put the startup taint back")
	}
	if err := cluster.Client.AppsV1().DaemonSets(ns).Delete(ctx, ds.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// A node that carries the taint again (registered anew) when meshcni
	// is uninstalled must lose it too.
	runOnce(func() {
		n, err := cluster.Client.CoreV1().Nodes().Get(ctx, testbed.NodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Spec.Taints = append(n.Spec.Taints, agentpkg.StartupTaint)
		if _, err := cluster.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	})
	if hasStartupTaint(t, testbed.NodeName) {
		t.Fatal("the startup taint stays after meshcni was uninstalled")
	}
	after := snapshotDir(t, node.ConfDir)
	if len(after) != len(before) {
		t.Fatalf("after uninstall the conf dir has %d files, before %d", len(after), len(before))
	}
	for name, b := range before {
		if after[name] != b {
			t.Fatalf("%s differs after uninstall", name)
		}
	}
}
