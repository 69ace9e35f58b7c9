//go:build integration

// Package podcache proves the agent's pod cache with a real kube-apiserver
// (test/kubeharness), a testbed node (its own netns; the host's is never
// touched) and the agent in process with --node-name: a warm ADD makes no
// pod GET, a stopped agent leaves the API path working, and a recreated
// pod is never mistaken for the one the cache remembers. BenchmarkAdd
// measures ADD with and without the cache.
package podcache

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/types"

	agentpkg "github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

var (
	cluster   *kubeharness.Cluster
	pluginBin string
)

func TestMain(m *testing.M) { os.Exit(testbed.Main(m, &pluginBin, &cluster, nil)) }

// env is a testbed node whose conflist the agent runs, and the agent.
type env struct {
	node  *testbed.Node
	opts  agentpkg.Options
	agent *agentpkg.Agent
	logs  *testbed.SyncBuffer
	proxy *freezer // between the agent (and the plug-in) and the API server
	stop  func()   // stops the agent; idempotent
}

// start runs the agent on a new node with --node-name, repair and the
// startup taint off, and waits until its entry is in the node's conflist.
// The agent's identity may get, list and watch pods and nothing else; the
// plug-in's, which the agent writes into its kubeconfig, may only get
// them, as with the chart.
func start(t testing.TB, keepOnExit bool) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ctx := context.Background()
	proxy := newFreezer(t, strings.TrimPrefix(cluster.URL, "https://"))
	node, err := testbed.NewNode(testbed.Options{ForwardPorts: []int{proxy.port()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		node.Close()
		if _, err := os.Stat(node.NS.Path()); !os.IsNotExist(err) {
			t.Errorf("node netns %s left: %v", node.NS.Path(), err)
		}
	})
	// Two identities, as the chart makes them: the agent's own may list
	// and watch pods; the plug-in's, which the agent writes to the node's
	// disk, may only get them.
	_, agentToken, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-agent-podcache",
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	_, pluginToken, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-plugin-podcache",
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	sa := t.TempDir()
	tokenPath, agentTokenPath, caPath := filepath.Join(sa, "token"), filepath.Join(sa, "agent-token"), filepath.Join(sa, "ca.crt")
	for path, data := range map[string]string{tokenPath: pluginToken, agentTokenPath: agentToken, caPath: string(cluster.CAData)} {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	o := agentpkg.DefaultOptions()
	o.CNIConfDir, o.CNIBinDir, o.RunDir = node.ConfDir, node.BinDir, filepath.Join(node.Dir, "run")
	o.PluginBinary, o.APIServer, o.TokenPath, o.CAPath = pluginBin, "https://"+proxy.addr(), tokenPath, caPath
	o.AgentTokenPath = agentTokenPath
	o.HealthAddr, o.NodeName, o.RepairMode, o.StartupTaint = "127.0.0.1:0", testbed.NodeName, agentpkg.RepairOff, false
	o.ExcludeNamespaces = []string{"kube-system", "istio-system"}
	o.PodLookupRetries, o.PodLookupInterval, o.APITimeout = 3, 200*time.Millisecond, 3*time.Second
	o.KeepOnExit = keepOnExit
	logs := &testbed.SyncBuffer{}
	a, err := agentpkg.New(o, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(runCtx) }()
	var once sync.Once
	e := &env{node: node, opts: o, agent: a, logs: logs, proxy: proxy}
	e.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("agent: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Errorf("the agent did not stop within 15s")
			}
		})
	}
	t.Cleanup(func() {
		e.stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	waitFor(t, 15*time.Second, "the agent's entry in the node's conflist", func() bool {
		l, err := node.Conflist()
		return err == nil && l.Plugins[len(l.Plugins)-1].Network.Type == "meshcni"
	})
	return e
}

// warm waits until the agent's cache answers for the pod.
func (e *env) warm(t testing.TB, ns, name string, uid types.UID) {
	t.Helper()
	c := podcache.NewClient(e.opts.PodCacheSocketPath())
	waitFor(t, 10*time.Second, "the cache to hold "+ns+"/"+name, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.Pod(ctx, ns, name, string(uid))
		return err == nil
	})
}

// decision returns the plug-in's ADD record for pod, from the agent's
// re-log (source "plugin") or, with the agent gone, from the plug-in's
// log file.
func (e *env) decision(t testing.TB, pod string) map[string]any {
	t.Helper()
	var rec map[string]any
	waitFor(t, 5*time.Second, "the ADD decision of "+pod, func() bool {
		file, _ := os.ReadFile(e.opts.LogFilePath())
		rec = findADD(e.logs.String()+"\n"+string(file), pod)
		return rec != nil
	})
	return rec
}

func findADD(logs, pod string) map[string]any {
	var found map[string]any
	for _, l := range strings.Split(logs, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["msg"] == "ADD" && rec["pod"] == pod {
			found = rec // the last one
		}
	}
	return found
}

// agentMetric returns one series' value from the agent's /metrics.
func (e *env) agentMetric(t testing.TB, series string) string {
	t.Helper()
	resp, err := http.Get("http://" + e.agent.HealthAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			return v
		}
	}
	return ""
}

// assertCaptured checks the pod's netns for meshcni's redirection.
func assertCaptured(t testing.TB, p *testbed.Pod) {
	t.Helper()
	save, _, err := netfilter.New(netfilter.Options{LockDir: t.TempDir()}).Save(context.Background(), p.NS.Path(), rules.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(save, "-A ISTIO_OUTPUT") || !strings.Contains(save, "-A ISTIO_REDIRECT") {
		t.Fatalf("%s/%s is not captured:\n%s", p.Namespace, p.Name, save)
	}
}

// podGETs is the API server's count of pod GETs (by name) so far, all
// clients and codes: apiserver_request_total{resource="pods",
// subresource="", verb="GET"}. LISTs and WATCHes are other verbs.
func podGETs(t testing.TB) float64 {
	t.Helper()
	raw, err := cluster.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, l := range strings.Split(string(raw), "\n") {
		if !strings.HasPrefix(l, "apiserver_request_total{") {
			continue
		}
		if !strings.Contains(l, `resource="pods"`) || !strings.Contains(l, `subresource=""`) || !strings.Contains(l, `verb="GET"`) {
			continue
		}
		v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", l, err)
		}
		sum += v
	}
	return sum
}

// freezer is a TCP proxy to the API server that can hold the data of the
// connections it already carries (the agent's watch) while new ones (the
// plug-in's GETs) go through: a watch that lags, on demand.
type freezer struct {
	l      net.Listener
	target string

	mu       sync.Mutex
	cond     *sync.Cond
	next     int // id of the next connection
	frozenTo int // connections with id < frozenTo are held; 0: none
	conns    []net.Conn
	closed   bool
}

func newFreezer(t testing.TB, target string) *freezer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{l: l, target: target, next: 1}
	f.cond = sync.NewCond(&f.mu)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

func (f *freezer) addr() string { return f.l.Addr().String() }
func (f *freezer) port() int    { return f.l.Addr().(*net.TCPAddr).Port }

func (f *freezer) serve() {
	for {
		in, err := f.l.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", f.target)
		if err != nil {
			_ = in.Close()
			continue
		}
		f.mu.Lock()
		id := f.next
		f.next++
		f.conns = append(f.conns, in, out)
		f.mu.Unlock()
		go f.pipe(id, in, out)
		go f.pipe(id, out, in)
	}
}

func (f *freezer) pipe(id int, from, to net.Conn) {
	defer from.Close()
	defer to.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			f.mu.Lock()
			for id < f.frozenTo && !f.closed {
				f.cond.Wait()
			}
			f.mu.Unlock()
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze holds every connection open now; thaw releases them.
func (f *freezer) freeze() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozenTo = f.next
}

func (f *freezer) thaw() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frozenTo = 0
	f.cond.Broadcast()
}

func (f *freezer) close() {
	_ = f.l.Close()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	f.cond.Broadcast()
	for _, c := range f.conns {
		_ = c.Close()
	}
}

func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
