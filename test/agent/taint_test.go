//go:build integration

package agent

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentpkg "github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/test/testbed"
)

// The startup taint comes off only once the agent is ready. While the
// API refuses its removal the agent retries, logs, counts each failure
// and is not ready (before: a timeout passed for success and the agent
// logged "removed" with the taint in place). An agent that stops without
// a confirmed uninstall (here: no pod identity) keeps the plug-in in the
// chain and adds no taint (before: it uninstalled and tainted the node).
func TestStartupTaint(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ctx := context.Background()
	node := newNode(t)

	nodeName := "taint-node-1"
	createNode(t, nodeName, nil, agentpkg.StartupTaint, corev1.Taint{Key: "other", Effect: corev1.TaintEffectNoExecute})
	// First without patch on nodes: the removal is forbidden.
	const sa = "meshcni-agent-taint"
	readOnly := slices.Clone(nodeRules)
	readOnly[1] = rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}}
	o, tokenPath, token := agentOnNode(t, node, nodeName, sa, readOnly)
	o.HealthAddr = "127.0.0.1:0"
	a, err := agentpkg.New(o, slog.New(slog.NewJSONHandler(testWriter{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	// No token yet: the agent cannot install, so it must not be ready and
	// must leave the taint in place.
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
	waitFor(t, 10*time.Second, "failed taint removals to be counted", func() bool {
		return metricValue(t, a, "meshcni_agent_taint_errors_total") >= 2
	})
	ready, reason := a.Ready()
	code, body := healthGet(t, a, "/readyz")
	if ready || !strings.Contains(reason, "startup taint") || code != http.StatusServiceUnavailable || !strings.Contains(body, "forbidden") {
		t.Fatalf("while the API refuses the removal: ready=%v (%q), /readyz %d %q; want not ready, naming the taint and the error", ready, reason, code, body)
	}
	if !tainted() {
		t.Fatal("the taint is gone although its removal was forbidden")
	}
	if list, err := node.Conflist(); err != nil || list.Plugins[len(list.Plugins)-1].Network.Type != "meshcni" {
		t.Fatalf("the plug-in must be installed while the taint stays: %v", err)
	}

	// Granted: the next retry lifts it.
	if _, _, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", sa, nodeRules, time.Hour); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the taint to come off once allowed", func() bool { return !tainted() })
	waitFor(t, 5*time.Second, "ready once the taint is off", func() bool { ok, _ := a.Ready(); return ok })
	if v := metricValue(t, a, "meshcni_agent_ready"); v != 1 {
		t.Fatalf("meshcni_agent_ready = %v once ready", v)
	}

	stop()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
	if tainted() {
		t.Fatal("a stopping agent put the startup taint back")
	}
	list, err := node.Conflist()
	if err != nil {
		t.Fatal(err)
	}
	if last := list.Plugins[len(list.Plugins)-1]; last.Network.Type != "meshcni" {
		t.Fatal("an agent stopped without a confirmed uninstall removed the plug-in from the chain")
	}
	n, _ := cluster.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if !slices.ContainsFunc(n.Spec.Taints, func(tt corev1.Taint) bool { return tt.Key == "other" }) {
		t.Fatal("another component's taint was lost")
	}
}

// healthGet GETs path from a's health server.
func healthGet(t *testing.T, a *agentpkg.Agent, path string) (int, string) {
	t.Helper()
	addr := a.HealthAddr()
	if addr == nil {
		t.Fatal("no health server")
	}
	resp, err := http.Get("http://" + addr.String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue is the value of an unlabelled series on a's /metrics (-1:
// absent).
func metricValue(t *testing.T, a *agentpkg.Agent, series string) float64 {
	t.Helper()
	_, body := healthGet(t, a, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return -1
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
