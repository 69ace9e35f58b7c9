//go:build integration

package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentpkg "github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/test/testbed"
)

// A node labelled meshcni.io/iptables-backend=nftables gets the native
// backend although the flags say iptables-nft; the startup taint comes off
// only once the entry says so, and the agent's own update of its entry is
// not taken for another writer's.
func TestBackendLabel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ctx := context.Background()
	node := newNode(t)
	nodeName := "label-node-1"
	_, err := cluster.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{agentpkg.BackendLabel: "nftables"}},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{agentpkg.StartupTaint}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Client.CoreV1().Nodes().Delete(ctx, nodeName, metav1.DeleteOptions{}) })
	_, token, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-agent-label", []rbacv1.PolicyRule{
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
	writeAtomic(t, tokenPath, token)
	o := agentpkg.DefaultOptions()
	o.CNIConfDir, o.CNIBinDir, o.RunDir = node.ConfDir, node.BinDir, filepath.Join(node.Dir, "run")
	o.PluginBinary, o.APIServer, o.TokenPath, o.CAPath = pluginBin, cluster.URL, tokenPath, caPath
	o.HealthAddr, o.NodeName, o.IptablesBackend = "", nodeName, "nft"
	logs := &testbed.SyncBuffer{}
	a, err := agentpkg.New(o, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
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

	backend := func() string {
		list, err := libcni.ConfListFromFile(node.ConflistPath())
		if err != nil {
			return ""
		}
		var e map[string]any
		last := list.Plugins[len(list.Plugins)-1]
		if json.Unmarshal(last.Bytes, &e) != nil || e["type"] != "meshcni" {
			return ""
		}
		s, _ := e["iptables_backend"].(string)
		return s
	}
	untainted := func() bool {
		n, err := cluster.Client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range n.Spec.Taints {
			if tt.Key == agentpkg.StartupTaint.Key {
				return false
			}
		}
		return true
	}
	waitFor(t, 15*time.Second, "the taint to come off", untainted)
	if got := backend(); got != "nftables" {
		t.Fatalf("the entry's backend is %q once the taint is off, want the label's nftables\n%s", got, logs)
	}
	if ready, why := a.Ready(); !ready {
		t.Fatalf("not ready: %s", why)
	}
	if strings.Contains(logs.String(), "put the meshcni entry back") || strings.Contains(logs.String(), "another writer") {
		t.Fatalf("the agent's own update was taken for a fight:\n%s", logs)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
}
