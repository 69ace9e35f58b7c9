//go:build integration

package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentpkg "github.com/meshcni/meshcni/internal/agent"
)

// The startup taint comes off only once the agent is ready, and is back
// before the agent uninstalls; the agent needs only get/patch on nodes.
func TestStartupTaint(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ctx := context.Background()
	node := newNode(t)

	nodeName := "taint-node-1"
	_, err := cluster.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{agentpkg.StartupTaint, {Key: "other", Effect: corev1.TaintEffectNoExecute}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Client.CoreV1().Nodes().Delete(ctx, nodeName, metav1.DeleteOptions{}) })
	_, token, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-agent-taint", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sa := t.TempDir()
	tokenPath, caPath := filepath.Join(sa, "token"), filepath.Join(sa, "ca.crt")
	writeAtomic(t, caPath, string(cluster.CAData))
	// No token yet: the agent cannot install, so it must not be ready and
	// must leave the taint in place.
	o := agentpkg.DefaultOptions()
	o.CNIConfDir, o.CNIBinDir, o.RunDir = node.ConfDir, node.BinDir, filepath.Join(node.Dir, "run")
	o.PluginBinary, o.APIServer, o.TokenPath, o.CAPath = pluginBin, cluster.URL, tokenPath, caPath
	o.HealthAddr, o.NodeName = "", nodeName
	writeAtomic(t, tokenPath, token)
	a, err := agentpkg.New(o, slog.New(slog.NewJSONHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(tokenPath)

	tainted := func() bool {
		n, err := cluster.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(n.Spec.Taints, func(tt corev1.Taint) bool { return tt.Key == agentpkg.StartupTaint.Key })
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
		}
	})

	select {
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(time.Second):
	}
	if ready, _ := a.Ready(); ready || !tainted() {
		t.Fatalf("without a token: ready=%v tainted=%v; want not ready and tainted", ready, tainted())
	}
	writeAtomic(t, tokenPath, token)
	waitFor(t, 10*time.Second, "the taint to come off once ready", func() bool { return !tainted() })
	if ready, _ := a.Ready(); !ready {
		t.Fatal("the taint came off while the agent was not ready")
	}

	stop()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
	if !tainted() {
		t.Fatal("the startup taint is not back after uninstall")
	}
	n, _ := cluster.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if !slices.ContainsFunc(n.Spec.Taints, func(tt corev1.Taint) bool { return tt.Key == "other" }) {
		t.Fatal("another component's taint was lost")
	}
}
