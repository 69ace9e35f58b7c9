//go:build integration

// Package console_test drives the console page in a real headless chromium
// against a real kube-apiserver (test/kubeharness) with the MeshCNI CRD
// installed: the page is served over HTTPS by meshcni-controller's Server
// (what every replica serves, with the certificate it keeps in its
// Secret), and each user reaches it through meshcnictl console's
// forwarder with their own service-account kubeconfig. The test plays the
// reconciler's part by writing the MeshCNI's status through the API.
package console_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/internal/console"
	"github.com/meshcni/meshcni/internal/controller"
	"github.com/meshcni/meshcni/internal/webhook"
	"github.com/meshcni/meshcni/test/kubeharness"
)

const (
	oldHash = "0a1b2c3d"
	newHash = "5e6f7a8b"
)

// runs numbers each run of a test (-count=N shares one cluster), so that
// each run has namespaces of its own.
var runs, browserRuns atomic.Int32

// agentsNS is this run's namespace of the node agents.
var agentsNS string

var cluster *kubeharness.Cluster

func TestMain(m *testing.M) {
	os.Exit(kubeharness.RunTests(withCRD{m}, kubeharness.Options{}, &cluster))
}

// withCRD installs the MeshCNI CRD before the tests run.
type withCRD struct{ m *testing.M }

func (w withCRD) Run() int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := installCRD(ctx, dynamic.NewForConfigOrDie(cluster.Config)); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return w.m.Run()
}

func TestConsoleInABrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium not found: hack/install-deps.sh installs it (apt-get install -y chromium): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	mcs := dyn.Resource(console.GVR)

	agentsNS = "meshcni-system"
	if n := browserRuns.Add(1); n > 1 {
		agentsNS = fmt.Sprintf("meshcni-system-%d", n)
	}
	for _, ns := range []string{agentsNS, "istio-system", "bookinfo", "monitoring"} {
		if err := cluster.EnsureNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	// The settings as meshcnictl disable leaves them, reported by the
	// controller: off, the default exclusions.
	mc := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{
		"enabled": false, "excludeNamespaces": []any{"kube-system", "istio-system"},
	}}}
	mc.SetGroupVersionKind(console.GVK)
	mc.SetName(console.Name)
	if _, err := mcs.Create(ctx, mc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create MeshCNI: %v", err)
	}
	// The singleton is cluster-wide: the next run creates it afresh.
	t.Cleanup(func() {
		if err := mcs.Delete(context.Background(), console.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete MeshCNI: %v", err)
		}
	})
	writeStatus(t, ctx, mcs, "Disabled", "meshcni is switched off: no agents run", oldHash, 2, 2)
	for _, node := range []string{"node-a", "node-b"} {
		agentPod(t, ctx, node, oldHash)
	}

	_, operator := userKubeconfig(t, ctx, "console-operator", []string{"get", "list", "watch", "update", "patch"})
	_, viewer := userKubeconfig(t, ctx, "console-viewer", []string{"get", "list", "watch"})

	// The console as meshcni-controller serves it: Config holds the
	// controller's (here: the cluster admin's) credentials, which the
	// console must never use for a caller.
	backendURL, caPEM := serveConsole(t, ctx)
	https := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool(t, caPEM), ServerName: "localhost"}}}
	opURL := forwarder(t, backendURL, withCA(operator, caPEM))
	viewURL := forwarder(t, backendURL, withCA(viewer, caPEM))

	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", "new"),
		chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.WindowSize(1100, 800),
		chromedp.UserDataDir(t.TempDir()),
	)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(alloc)
	defer cancelBrowser()

	t.Log("operator: the page shows the settings and the status")
	must(t, chromedp.Do(browser,
		chromedp.Navigate(opURL),
		waitText("#phase", "Disabled"),
		waitJS(`document.querySelectorAll("#nodes tr").length == 2`),
		// Set once: a reload of the page would lose it.
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Evaluate[bool](`window.loadedOnce = true`)(ctx, tg)
			return err
		}),
	))
	if state := js[bool](t, browser, `document.getElementById("enabled").checked`); state {
		t.Fatal("the switch is on, the MeshCNI says enabled: false")
	}
	if got := js[[]string](t, browser, `Array.from(document.querySelectorAll("#ns-list input:checked")).map(i => i.value)`); !slices.Equal(got, []string{"istio-system", "kube-system"}) {
		t.Fatalf("excluded namespaces checked on the page = %v, want [istio-system kube-system]", got)
	}
	if got := js[[]string](t, browser, `Array.from(document.querySelectorAll("#ns-list input")).map(i => i.value)`); !slices.Contains(got, "monitoring") || !slices.Contains(got, "bookinfo") {
		t.Fatalf("the namespace choice %v lacks the cluster's live namespaces", got)
	}

	t.Log("operator: switch on (mouse), exclude monitoring (keyboard), Update Settings")
	must(t, chromedp.Do(browser,
		chromedp.Click(chromedp.CSS(`label.switch`)),
		chromedp.Focus(chromedp.CSS(`#ns-list input[value="monitoring"]`)),
		chromedp.KeyEvent(" "),
		waitJS(`!document.getElementById("update").disabled`),
		chromedp.Click(chromedp.ID("update")),
		waitText("#result", "Settings saved"),
	))
	mc, err = mcs.Get(ctx, console.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	enabled, _, _ := unstructured.NestedBool(mc.Object, "spec", "enabled")
	excluded, _, _ := unstructured.NestedStringSlice(mc.Object, "spec", "excludeNamespaces")
	if !enabled || !slices.Equal(excluded, []string{"istio-system", "kube-system", "monitoring"}) {
		t.Fatalf("after Update Settings the MeshCNI spec is enabled=%v excludeNamespaces=%v", enabled, excluded)
	}
	if mf := mc.GetManagedFields(); !slices.ContainsFunc(mf, func(f metav1.ManagedFieldsEntry) bool { return f.Manager == "meshcni-console" }) {
		t.Fatalf("no managed-fields entry of meshcni-console: %+v", mf)
	}
	// The controller has not caught up: the page must not show the old Disabled.
	must(t, chromedp.Do(browser, waitText("#phase", "Updating")))

	t.Log("controller: Updating, one agent rolled; the page follows live")
	setPodHash(t, ctx, "node-a", newHash)
	writeStatus(t, ctx, mcs, "Updating", "1 of 2 agents run the new settings", newHash, 2, 1)
	must(t, chromedp.Do(browser,
		waitText("#message", "1 of 2 agents run the new settings"),
		waitText("#ready-nodes", "1/2"),
		waitJS(`document.querySelectorAll("#nodes .tag.current").length == 1`),
	))
	setPodHash(t, ctx, "node-b", newHash)
	writeStatus(t, ctx, mcs, "Running", "", newHash, 2, 2)
	must(t, chromedp.Do(browser,
		waitText("#phase", "Running"),
		waitText("#ready-nodes", "2/2"),
		waitJS(`document.querySelectorAll("#nodes .tag.current").length == 2`),
	))
	if !js[bool](t, browser, `window.loadedOnce === true`) {
		t.Fatal("the page reloaded: the status must arrive over the stream")
	}
	if got := js[string](t, browser, `document.getElementById("status").getAttribute("aria-live")`); got != "polite" {
		t.Fatalf("the status region's aria-live = %q", got)
	}
	shot, err := chromedp.Run(browser, chromedp.FullScreenshot(100))
	must(t, err)
	// CONSOLE_SCREENSHOT=docs/console.png refreshes the documentation's
	// screenshots (this one, and -readonly.png beside it).
	path := os.Getenv("CONSOLE_SCREENSHOT")
	if path == "" {
		path = filepath.Join(t.TempDir(), "console.png")
	}
	must(t, os.WriteFile(path, shot, 0o644))
	t.Logf("screenshot: %s", path)

	t.Log("viewer: read-only with the reason, and the API refuses a write sent around the page")
	mc, err = mcs.Get(ctx, console.Name, metav1.GetOptions{})
	must(t, err)
	rv := mc.GetResourceVersion()
	tab, cancelTab := chromedp.NewContext(browser)
	defer cancelTab()
	must(t, chromedp.Do(tab,
		chromedp.Navigate(viewURL),
		waitText("#phase", "Running"),
		waitText("#readonly", "may not update meshcnis.meshcni.io"),
	))
	shot, err = chromedp.Run(tab, chromedp.FullScreenshot(100))
	must(t, err)
	must(t, os.WriteFile(strings.TrimSuffix(path, ".png")+"-readonly.png", shot, 0o644))
	for _, sel := range []string{"#enabled", "#update", "#ns-list input"} {
		if !js[bool](t, tab, fmt.Sprintf(`Array.from(document.querySelectorAll(%q)).every(e => e.disabled)`, sel)) {
			t.Fatalf("%s is not disabled for a user without update rights", sel)
		}
	}
	if got := js[string](t, tab, `document.getElementById("who").textContent`); !strings.Contains(got, "system:serviceaccount:console-users:console-viewer") {
		t.Fatalf("the page names the user as %q", got)
	}
	// Around the page: the viewer's own browser posts the settings. The
	// handler writes as the viewer, so the API server refuses it.
	for _, rvSent := range []string{"", rv} { // create, then patch
		status := js[string](t, tab, fmt.Sprintf(`fetch("api/settings", {method: "POST",
			headers: {"Content-Type": "application/json", "X-Meshcni-Console": "1"},
			body: JSON.stringify({enabled: false, excludeNamespaces: [], resourceVersion: %q})})
			.then(r => String(r.status))`, rvSent), chromedp.EvalAwaitPromise)
		if status != "403" {
			t.Fatalf("the viewer's write (resourceVersion %q) answered %s, want 403 from the API server", rvSent, status)
		}
	}

	t.Log("no token, forged identity headers: refused before any API call")
	for _, hdr := range []map[string]string{
		{},
		{"Impersonate-User": "system:admin", "Impersonate-Group": "system:masters"},
		{"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters"},
	} {
		req, _ := http.NewRequest(http.MethodPost, backendURL+"/api/settings", strings.NewReader(`{"enabled":false,"excludeNamespaces":[],"resourceVersion":"`+rv+`"}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Meshcni-Console", "1")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := https.Do(req)
		must(t, err)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("a request with %v and no token got %d, want 401", hdr, resp.StatusCode)
		}
	}
	mc, err = mcs.Get(ctx, console.Name, metav1.GetOptions{})
	must(t, err)
	if mc.GetResourceVersion() != rv {
		t.Fatalf("the MeshCNI changed (resourceVersion %s -> %s) after refused writes", rv, mc.GetResourceVersion())
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// js evaluates expr in the page and returns its value.
func js[T any](t *testing.T, ctx context.Context, expr string, opts ...chromedp.EvaluateOption) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, opts...))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits, in the browser, until expr is true (on each DOM mutation).
func waitJS(expr string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.Poll[bool](expr, chromedp.WithPollingMutation(), chromedp.WithPollingTimeout(30*time.Second))(ctx, tg)
		if err != nil {
			err = fmt.Errorf("wait for %s: %w", expr, err)
		}
		return chromedp.Void{}, err
	}
}

// waitText waits until the element's text contains want.
func waitText(sel, want string) chromedp.Action[chromedp.Void] {
	return waitJS(fmt.Sprintf(`(document.querySelector(%q)?.textContent || "").includes(%q)`, sel, want))
}

func installCRD(ctx context.Context, dyn dynamic.Interface) error {
	data, err := os.ReadFile("../../charts/meshcni/crds/meshcni.io_meshcnis.yaml")
	if err != nil {
		return err
	}
	crd := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &crd.Object); err != nil {
		return err
	}
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if _, err = crds.Create(ctx, crd, metav1.CreateOptions{}); err != nil {
		return err
	}
	// Established, then served: wait on a watch, not a sleep.
	w, err := crds.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + crd.GetName()})
	if err != nil {
		return err
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		obj, ok := ev.Object.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return nil
			}
		}
	}
	return fmt.Errorf("the MeshCNI CRD never became Established: %w", ctx.Err())
}

func writeStatus(t *testing.T, ctx context.Context, mcs dynamic.NamespaceableResourceInterface, phase, message, hash string, desired, ready int64) {
	t.Helper()
	mc, err := mcs.Get(ctx, console.Name, metav1.GetOptions{})
	must(t, err)
	status := map[string]any{
		"observedGeneration": mc.GetGeneration(), "phase": phase, "settingsHash": hash,
		"nodes":      map[string]any{"desired": desired, "ready": ready, "updated": ready},
		"readyNodes": fmt.Sprintf("%d/%d", ready, desired),
	}
	if message != "" {
		status["message"] = message
	}
	mc.Object["status"] = status
	_, err = mcs.UpdateStatus(ctx, mc, metav1.UpdateOptions{})
	must(t, err)
}

func agentPod(t *testing.T, ctx context.Context, node, hash string) {
	t.Helper()
	p := kubeharness.NewPod(agentsNS, "meshcni-agent-"+node, node)
	p.Labels = map[string]string{"app.kubernetes.io/name": "meshcni", "app.kubernetes.io/component": "agent"}
	p.Annotations = map[string]string{console.ConfigHashAnnotation: hash}
	p, err := cluster.CreatePod(ctx, p)
	must(t, err)
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
	_, err = cluster.Client.CoreV1().Pods(agentsNS).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	must(t, err)
}

func setPodHash(t *testing.T, ctx context.Context, node, hash string) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{console.ConfigHashAnnotation: hash}}})
	_, err := cluster.Client.CoreV1().Pods(agentsNS).Patch(ctx, "meshcni-agent-"+node, "application/merge-patch+json", patch, metav1.PatchOptions{})
	must(t, err)
}

// userKubeconfig makes a service account with verbs on meshcnis and read
// rights on namespaces and pods, and returns its kubeconfig and rest.Config.
func userKubeconfig(t *testing.T, ctx context.Context, name string, verbs []string) (string, *rest.Config) {
	t.Helper()
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{"meshcni.io"}, Resources: []string{"meshcnis"}, Verbs: verbs},
		{APIGroups: []string{""}, Resources: []string{"namespaces", "pods"}, Verbs: []string{"get", "list", "watch"}},
	}
	path, _, err := cluster.ServiceAccountKubeconfig(ctx, "console-users", name, rules, 0)
	must(t, err)
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	must(t, err)
	return path, cfg
}

// serveConsole runs the controller's Server with only its console
// listener, on loopback, until the test ends: it writes its certificate
// to its Secret (the leader's job) and serves it (every replica's). It
// returns the console's URL and the CA that signed its certificate.
func serveConsole(t *testing.T, ctx context.Context) (string, []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := controller.NewServer(cluster.Config, controller.ServerOptions{Namespace: agentsNS, Service: "meshcni-controller",
		Secret: "meshcni-controller-tls", WebhookConfiguration: "meshcni-webhook", DNSNames: []string{"localhost"}, Log: log})
	must(t, err)
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, nil, ln) }()
	go srv.MaintainCerts(sctx, time.Hour)
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for srv.Ready() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("the controller's server is not ready: %v", srv.Ready())
		}
		time.Sleep(20 * time.Millisecond)
	}
	sec, err := cluster.Client.CoreV1().Secrets(agentsNS).Get(ctx, "meshcni-controller-tls", metav1.GetOptions{})
	must(t, err)
	return fmt.Sprintf("https://localhost:%d", ln.Addr().(*net.TCPAddr).Port), webhook.Bundle(sec.Data).CABundle()
}

// withCA is cfg trusting caPEM: the forwarder reaches the console itself
// here, where in a cluster it reaches the API server's service proxy.
func withCA(cfg *rest.Config, caPEM []byte) *rest.Config {
	cfg = rest.CopyConfig(cfg)
	cfg.TLSClientConfig.CAData, cfg.TLSClientConfig.CAFile = caPEM, ""
	return cfg
}

func pool(t *testing.T, caPEM []byte) *x509.CertPool {
	t.Helper()
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA certificate in the Secret")
	}
	return p
}

// forwarder serves meshcnictl console's forwarder for cfg's user on
// loopback, in front of the console at target; it returns its URL.
func forwarder(t *testing.T, target string, cfg *rest.Config) string {
	t.Helper()
	u, err := url.Parse(target)
	must(t, err)
	srv := httptest.NewUnstartedServer(nil)
	fwd, err := console.NewForwarder(u, cfg, srv.Listener.Addr().String())
	must(t, err)
	srv.Config.Handler = fwd
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL + "/"
}
