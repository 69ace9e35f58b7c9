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
	"github.com/meshcni/meshcni/test/testbed"
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
	createNode(t, nodeName, nil, agentpkg.StartupTaint, corev1.Taint{Key: "other", Effect: corev1.TaintEffectNoExecute})
	// No token yet: the agent cannot install, so it must not be ready and
	// must leave the taint in place.
	o, tokenPath, token := agentOnNode(t, node, nodeName, "meshcni-agent-taint", nodeRules)
	a, err := agentpkg.New(o, slog.New(slog.NewJSONHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(tokenPath)

	tainted := func() bool { return hasStartupTaint(t, nodeName) }
	done, stop := runAgent(t, a)

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

// createNode creates the Node nodeName with labels and taints, deleted
// when the test ends.
func createNode(t *testing.T, nodeName string, labels map[string]string, taints ...corev1.Taint) {
	t.Helper()
	ctx := context.Background()
	_, err := cluster.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: labels},
		Spec:       corev1.NodeSpec{Taints: taints},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Client.CoreV1().Nodes().Delete(ctx, nodeName, metav1.DeleteOptions{}) })
}

// nodeRules let an agent watch its node's pods, read and taint its Node,
// and record events.
var nodeRules = []rbacv1.PolicyRule{
	{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
	{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
	{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
}

// agentOnNode returns an agent's options for the testbed node as the Node
// nodeName, with a service account named sa that may do what rules allow;
// its token is written at tokenPath.
func agentOnNode(t *testing.T, node *testbed.Node, nodeName, sa string, rules []rbacv1.PolicyRule) (o agentpkg.Options, tokenPath, token string) {
	t.Helper()
	_, token, err := cluster.ServiceAccountKubeconfig(context.Background(), "kube-system", sa, rules, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenPath, caPath := filepath.Join(dir, "token"), filepath.Join(dir, "ca.crt")
	writeAtomic(t, caPath, string(cluster.CAData))
	writeAtomic(t, tokenPath, token)
	o = agentpkg.DefaultOptions()
	o.CNIConfDir, o.CNIBinDir, o.RunDir = node.ConfDir, node.BinDir, filepath.Join(node.Dir, "run")
	o.PluginBinary, o.APIServer, o.TokenPath, o.CAPath = pluginBin, cluster.URL, tokenPath, caPath
	o.HealthAddr, o.NodeName = "", nodeName
	return o, tokenPath, token
}

// hasStartupTaint reports whether the Node carries the startup taint.
func hasStartupTaint(t *testing.T, nodeName string) bool {
	t.Helper()
	n, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), nodeName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return slices.ContainsFunc(n.Spec.Taints, func(tt corev1.Taint) bool { return tt.Key == agentpkg.StartupTaint.Key })
}

// runAgent runs a until stop (or the end of the test); done receives
// Run's error.
func runAgent(t *testing.T, a *agentpkg.Agent) (done <-chan error, stop context.CancelFunc) {
	ctx, stop := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	finished := make(chan struct{})
	go func() { errc <- a.Run(ctx); close(finished) }()
	t.Cleanup(func() {
		stop()
		select {
		case <-finished:
		case <-time.After(10 * time.Second):
			t.Error("the agent did not stop within 10 s")
		}
	})
	return errc, stop
}
