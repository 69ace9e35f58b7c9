//go:build integration

package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	agentpkg "github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

var (
	cluster   *kubeharness.Cluster
	pluginBin string
)

func TestMain(m *testing.M) { os.Exit(testbed.Main(m, &pluginBin, &cluster, nil)) }

// The agent, in process, installs into a testbed node's CNI dirs with a
// kubeconfig built from a token file it watches; pods added through the
// chain it wrote are captured once the token is valid; the plug-in's
// decision shows in the agent's log and metrics; shutdown restores the
// conf dir byte for byte.
func TestAgentOnANode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ctx := context.Background()
	node := newNode(t)
	before := snapshotDir(t, node.ConfDir)

	// The agent's service account may only get pods, as in production.
	_, goodToken, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-agent",
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sa := t.TempDir() // stands in for the projected volume
	tokenPath, caPath := filepath.Join(sa, "token"), filepath.Join(sa, "ca.crt")
	writeAtomic(t, tokenPath, "not-a-valid-token")
	writeAtomic(t, caPath, string(cluster.CAData))

	o := agentpkg.DefaultOptions()
	o.CNIConfDir, o.CNIBinDir, o.RunDir = node.ConfDir, node.BinDir, filepath.Join(node.Dir, "run")
	o.PluginBinary, o.APIServer, o.TokenPath, o.CAPath = pluginBin, cluster.URL, tokenPath, caPath
	o.HealthAddr = "127.0.0.1:0"
	o.ExcludeNamespaces = []string{"kube-system", "istio-system"}
	o.PluginLogLevel, o.PodLookupRetries, o.PodLookupInterval, o.APITimeout = "debug", 3, 200*time.Millisecond, 3*time.Second
	logs := &testbed.SyncBuffer{}
	a, err := agentpkg.New(o, slog.New(slog.NewJSONHandler(io.MultiWriter(logs, testWriter{t}), nil)))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	stopped := false
	shutdown := func() error {
		if stopped {
			return nil
		}
		stopped = true
		stop()
		select {
		case err := <-done:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("agent did not stop within 10s")
		}
	}
	t.Cleanup(func() { _ = shutdown() })

	waitFor(t, 10*time.Second, "agent ready", func() bool { ok, _ := a.Ready(); return ok })
	health := "http://" + a.HealthAddr().String()
	if code, body := httpGet(t, health+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz = %d %s", code, body)
	}
	list, err := node.Conflist()
	if err != nil {
		t.Fatal(err)
	}
	if last := list.Plugins[len(list.Plugins)-1]; last.Network.Type != "meshcni" {
		t.Fatalf("chain ends with %s", last.Network.Type)
	}

	// A garbage token: the API rejects the plug-in, the ADD fails closed.
	pod := testbed.MeshPod("bookinfo", "productpage", 9080)
	created, err := cluster.CreatePod(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	_, err = node.AddPod(ctx, created.Namespace, created.Name, string(created.UID))
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater || !strings.Contains(err.Error(), "token") {
		t.Fatalf("ADD with a rejected token = %v, want CNI error 11 naming the token", err)
	}
	t.Logf("ADD with a garbage token: %v", err)

	// The projected volume rotates the token: the agent rewrites the
	// kubeconfig and the next ADD succeeds.
	kubeconfig := filepath.Join(o.RunDir, "kubeconfig")
	rotated := time.Now()
	writeAtomic(t, tokenPath, goodToken)
	waitFor(t, 2*time.Second, "kubeconfig carries the new token", func() bool {
		b, _ := os.ReadFile(kubeconfig)
		return strings.Contains(string(b), goodToken)
	})
	t.Logf("kubeconfig rewritten %v after the token file changed", time.Since(rotated).Round(time.Millisecond))
	p, err := node.AddPod(ctx, created.Namespace, created.Name, string(created.UID))
	if err != nil {
		t.Fatalf("ADD after the token rotated: %v", err)
	}
	save, _, err := netfilter.New(netfilter.Options{LockDir: t.TempDir()}).Save(ctx, p.NS.Path(), rules.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(save, "-A ISTIO_OUTPUT") || !strings.Contains(save, "-A ISTIO_REDIRECT") {
		t.Fatalf("the pod is not captured:\n%s", save)
	}
	if err := node.CheckPod(ctx, p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}

	// The plug-in's decisions reached the agent over the socket.
	waitFor(t, 2*time.Second, "the plug-in's ADD decision in the agent's log", func() bool {
		return findPluginLine(logs.String(), "ADD", "bookinfo/productpage", "captured") != nil
	})
	line := findPluginLine(logs.String(), "ADD", "bookinfo/productpage", "captured")
	t.Logf("agent re-logged: %v", line)
	waitFor(t, 2*time.Second, "CHECK decision in the agent's log", func() bool {
		return findPluginLine(logs.String(), "CHECK", "bookinfo/productpage", "captured") != nil
	})
	_, metrics := httpGet(t, health+"/metrics")
	for _, want := range []string{
		`meshcni_plugin_results_total{command="ADD",decision="captured"} 1`,
		`meshcni_plugin_results_total{command="CHECK",decision="captured"} 1`,
		`meshcni_agent_installs_total 1`,
		`meshcni_agent_kubeconfig_writes_total 2`,
		`meshcni_agent_ready 1`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if err := node.DelPod(ctx, p); err != nil {
		t.Errorf("DEL: %v", err)
	}
	if _, err := os.Stat(p.NS.Path()); !os.IsNotExist(err) {
		t.Errorf("pod netns %s left: %v", p.NS.Path(), err)
	}

	// Shutdown: the conf dir is as it was, the binary and kubeconfig gone.
	if err := shutdown(); err != nil {
		t.Fatal(err)
	}
	after := snapshotDir(t, node.ConfDir)
	for k := range mergeKeys(before, after) {
		if before[k] != after[k] {
			t.Errorf("%s after uninstall:\n got %q\nwant %q", k, after[k], before[k])
		}
	}
	for _, path := range []string{filepath.Join(node.BinDir, "meshcni"), kubeconfig} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s left after uninstall", path)
		}
	}
}

// The agent binary, configured through the environment and a kubeconfig
// that holds only the server and CA, installs, captures a pod, and on
// SIGTERM exits 0 with the conf dir as it was.
func TestAgentBinaryWithKubeconfig(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ctx := context.Background()
	node := newNode(t)
	before := snapshotDir(t, node.ConfDir)

	_, token, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-agent",
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenPath, kc := filepath.Join(dir, "token"), filepath.Join(dir, "server.kubeconfig")
	writeAtomic(t, tokenPath, token)
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: cluster.URL, CertificateAuthorityData: cluster.CAData}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c"}
	cfg.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}

	agent := buildAgent(t, dir)
	stderr := &testbed.SyncBuffer{}
	cmd := exec.Command(agent, "--plugin-binary", pluginBin, "--kubeconfig", kc, "--health-addr", "127.0.0.1:0")
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"CNI_CONF_DIR=" + node.ConfDir, "CNI_BIN_DIR=" + node.BinDir, "MESHCNI_RUN_DIR=" + filepath.Join(node.Dir, "run"),
		"MESHCNI_TOKEN_PATH=" + tokenPath, "MESHCNI_EXCLUDE_NAMESPACES=kube-system,istio-system",
		"MESHCNI_POD_LOOKUP_RETRIES=3", "MESHCNI_POD_LOOKUP_INTERVAL=200ms",
	}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := false
	t.Cleanup(func() {
		if !exited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("agent stderr:\n%s", stderr.String())
		}
	})
	waitFor(t, 10*time.Second, "agent installed", func() bool {
		return strings.Contains(stderr.String(), `"msg":"meshcni is installed; watching"`)
	})

	pod := testbed.MeshPod("bookinfo", "details", 9080)
	created, err := cluster.CreatePod(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	p, err := node.AddPod(ctx, created.Namespace, created.Name, string(created.UID))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	save, _, err := netfilter.New(netfilter.Options{LockDir: t.TempDir()}).Save(ctx, p.NS.Path(), rules.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(save, "-A ISTIO_OUTPUT") {
		t.Fatalf("the pod is not captured:\n%s", save)
	}
	waitFor(t, 2*time.Second, "the plug-in's decision in the agent's stderr", func() bool {
		return findPluginLine(stderr.String(), "ADD", "bookinfo/details", "captured") != nil
	})
	if err := node.DelPod(ctx, p); err != nil {
		t.Errorf("DEL: %v", err)
	}
	if _, err := os.Stat(p.NS.Path()); !os.IsNotExist(err) {
		t.Errorf("pod netns %s left: %v", p.NS.Path(), err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	exited = true
	if err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	after := snapshotDir(t, node.ConfDir)
	for k := range mergeKeys(before, after) {
		if before[k] != after[k] {
			t.Errorf("%s after uninstall:\n got %q\nwant %q", k, after[k], before[k])
		}
	}
	if _, err := os.Stat(filepath.Join(node.BinDir, "meshcni")); !os.IsNotExist(err) {
		t.Errorf("binary left after uninstall: %v", err)
	}
}

// newNode makes a testbed node reaching the API server's port, closes it
// when the test ends and checks that no netns it made is left.
func newNode(t *testing.T) *testbed.Node {
	t.Helper()
	node, err := testbed.NewNode(testbed.Options{ForwardPorts: []int{cluster.Port}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		node.Close()
		if _, err := os.Stat(node.NS.Path()); !os.IsNotExist(err) {
			t.Errorf("node netns %s left: %v", node.NS.Path(), err)
		}
	})
	return node
}

// findPluginLine returns the agent's re-logged plug-in record for msg, pod
// and decision, or nil.
func findPluginLine(logs, msg, pod, decision string) map[string]any {
	for _, l := range strings.Split(logs, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) != nil {
			continue
		}
		if rec["source"] == "plugin" && rec["msg"] == msg && rec["pod"] == pod && rec["decision"] == decision {
			return rec
		}
	}
	return nil
}

// writeAtomic replaces path the way kubelet updates a projected volume:
// never a half-written file.
func writeAtomic(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func httpGet(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// testWriter sends the agent's log to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
