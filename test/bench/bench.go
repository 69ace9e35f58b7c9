package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

// Namespace of every measured pod; kube-system is excluded in the
// plug-in config, as in production.
const (
	benchNS    = "bench"
	excludedNS = "kube-system"
)

// Where an ADD is timed.
const (
	scopePlugin = "plug-in alone"
	scopeChain  = "whole chain"
)

// kind is a pod shape the bench measures.
type kind struct {
	Name string
	Desc string
	Dual bool // the node hands out IPv6 too
	Pod  func(namespace, name string) *corev1.Pod
}

var kinds = []kind{
	{Name: "default", Desc: "mesh pod, REDIRECT, IPv4",
		Pod: func(ns, name string) *corev1.Pod { return testbed.MeshPod(ns, name, 9080) }},
	{Name: "tproxy-dns-dual", Desc: "mesh pod, TPROXY, DNS capture, dual-stack", Dual: true,
		Pod: func(ns, name string) *corev1.Pod {
			p := testbed.MeshPod(ns, name, 9080)
			p.Annotations["sidecar.istio.io/interceptionMode"] = "TPROXY"
			for i := range p.Spec.Containers {
				if p.Spec.Containers[i].Name == "istio-proxy" {
					// ISTIO_DUAL_STACK: without it a dual-stack pod gets
					// IPv4 rules only, as with Istio.
					p.Spec.Containers[i].Env = []corev1.EnvVar{{Name: "ISTIO_META_DNS_CAPTURE", Value: "true"}, {Name: "ISTIO_DUAL_STACK", Value: "true"}}
				}
			}
			return p
		}},
}

func kindByName(name string) (kind, bool) {
	for _, k := range kinds {
		if k.Name == name {
			return k, true
		}
	}
	return kind{}, false
}

func kindNames() []string {
	var out []string
	for _, k := range kinds {
		out = append(out, k.Name)
	}
	return out
}

type bench struct {
	o          options
	cluster    *kubeharness.Cluster
	kubeconfig string
	dir        string
	logFile    string
	static     string // a do-nothing static binary, for the exec baseline
	launcher   string // runs a program and reports its peak RSS
	// cacheSocket serves the node's pods as the agent does (lookup cache).
	cacheSocket string

	mu  sync.Mutex
	seq int
}

func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the bench creates network namespaces (and touches nothing outside them)")
	}
	b := &bench{o: o}
	if b.dir, err = os.MkdirTemp("", "meshcni-bench-"); err != nil {
		return err
	}
	defer os.RemoveAll(b.dir)
	b.logFile = filepath.Join(b.dir, "plugin.log")
	rep := &report{Machine: describeMachine(), Options: o, Started: time.Now()}
	if st, err := os.Stat(o.plugin); err == nil {
		rep.BinarySize = st.Size()
	}

	if b.static, err = buildGo(ctx, b.dir, "noop", "package main\n\nfunc main() {}\n"); err != nil {
		progress("no static no-op binary, its rows are left out: %v", err)
	}
	if b.launcher, err = buildGo(ctx, b.dir, "launcher", launcherSrc); err != nil {
		progress("no launcher, peak RSS is left out: %v", err)
	}

	progress("starting etcd and kube-apiserver")
	if b.cluster, err = kubeharness.Start(ctx, kubeharness.Options{}); err != nil {
		return err
	}
	defer b.cluster.Stop()
	// The plug-in's identity may only get pods, as in production.
	b.kubeconfig, _, err = b.cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni",
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}, time.Hour)
	if err != nil {
		return err
	}
	if err := b.cluster.EnsureNamespace(ctx, benchNS); err != nil {
		return err
	}

	if slices.Contains(o.lookups, lookupCache) {
		progress("serving the node's pods on a socket, as the agent does")
		stopCache, err := b.servePodCache(ctx)
		if err != nil {
			return err
		}
		defer stopCache()
	}

	for _, name := range o.kinds {
		k, _ := kindByName(name)
		if err := b.measureKind(ctx, k, rep); err != nil {
			return fmt.Errorf("pod kind %s: %w", k.Name, err)
		}
	}
	if o.agent != "" {
		progress("agent: %d pods churning on its node", o.agentPods)
		if rep.Agent, err = b.measureAgent(ctx); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
	}
	rep.Took = time.Since(rep.Started)
	rep.LoadEnd = describeMachine().LoadAvg
	var buf bytes.Buffer
	rep.write(&buf)
	os.Stdout.Write(buf.Bytes())
	if o.out != "" {
		if err := os.WriteFile(o.out, buf.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// pluginEntry is the meshcni-shaped config entry; with lookup cache it
// names the agent's pod cache socket, as the agent's entry does.
func (b *bench) pluginEntry(lookup string) map[string]any {
	e := map[string]any{
		"type":               filepath.Base(b.o.plugin),
		"kubeconfig":         b.kubeconfig,
		"exclude_namespaces": []string{"kube-system", "istio-system"},
		"log_file":           b.logFile,
	}
	if lookup == lookupCache {
		e["pod_cache_socket"] = b.cacheSocket
	}
	if b.o.backend != "" {
		e["iptables_backend"] = b.o.backend
	}
	for k, v := range b.o.extraConf {
		e[k] = v
	}
	return e
}

func (b *bench) newNode(k kind, chained bool) (*node, error) {
	opts := testbed.Options{PluginBinary: b.o.plugin, Subnet4: "10.250.0.0/16", ForwardPorts: []int{b.cluster.Port}}
	if chained {
		opts.PluginConf = b.pluginEntry(b.o.lookups[0])
	}
	if k.Dual {
		opts.Subnet6 = "fd0a:250::/64"
	}
	return newNode(opts)
}

// installed is the plug-in's path in the node's CNI bin dir.
func installed(n *node, plugin string) string { return filepath.Join(n.BinDir, filepath.Base(plugin)) }

func (b *bench) measureKind(ctx context.Context, k kind, rep *report) error {
	progress("%s: plug-in alone (node conflist holds only the primary)", k.Name)
	n, err := b.newNode(k, false)
	if err != nil {
		return err
	}
	defer n.Close()
	for i, lookup := range b.o.lookups {
		if err := b.rows(ctx, n, k, scopePlugin, lookup, i == 0, rep); err != nil {
			return err
		}
	}
	if k.Name == "default" {
		progress("%s: breakdown", k.Name)
		if rep.Breakdown, err = b.breakdown(ctx, n, k); err != nil {
			return err
		}
		if rep.Init, err = b.initCosts(ctx, n, min(b.o.pods, 20)); err != nil {
			return err
		}
	}
	if b.o.procADDs > 0 {
		progress("%s: %d ADDs under strace, %d under the RSS launcher", k.Name, b.o.procADDs, b.o.procADDs)
		c, err := b.procCosts(ctx, n, k, len(rep.Procs) == 0)
		if err != nil {
			return err
		}
		rep.Procs = append(rep.Procs, c...)
	}
	n.Close()

	progress("%s: whole chain (bridge + host-local + plug-in)", k.Name)
	if n, err = b.newNode(k, true); err != nil {
		return err
	}
	defer n.Close()
	return b.rows(ctx, n, k, scopeChain, b.o.lookups[0], true, rep)
}

// rows measures ADDs one at a time and, with batches set, the batch
// sizes of --batches.
func (b *bench) rows(ctx context.Context, n *node, k kind, scope, lookup string, batches bool, rep *report) error {
	sets := []int{1}
	if batches {
		sets = append(sets, b.o.batches...)
	}
	for _, atOnce := range sets {
		count := atOnce
		if atOnce == 1 {
			count = b.o.pods
		}
		r, err := b.measureSet(ctx, n, k, scope, lookup, count, atOnce)
		if err != nil {
			return err
		}
		progress("  %-14s %-5s %3d at once: %d ADDs, %d failed, p50 %s ms, p99 %s ms", scope, lookup, atOnce, r.ADDs, r.Fails, ms(percentile(r.Lat, 50)), ms(percentile(r.Lat, 99)))
		rep.Rows = append(rep.Rows, r)
	}
	return nil
}

// row is one line of the latency table.
type row struct {
	Kind, Scope  string
	Lookup       string
	AtOnce       int
	ADDs, Fails  int
	Lat, InProc  []time.Duration
	Startup      []time.Duration // plug-in alone: fork to CmdAdd start
	CPU          []time.Duration // plug-in alone: user+system per ADD
	Wall         time.Duration
	GETsPerADD   float64 // NaN: metrics unreadable
	NotCaptured  int     // mesh pods the plug-in's log says it did not capture
	OtherSource  int     // ADDs whose log line says the pod came from elsewhere than Lookup
	FirstMiss    string  // why the cache did not answer, the first time
	FirstErr     string
	DualStackOK  bool
	dualExpected bool
}

func (b *bench) podName(prefix string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	return fmt.Sprintf("%s-%d", prefix, b.seq)
}

// createPods stores count pods of kind k in the API, bound to the node.
func (b *bench) createPods(ctx context.Context, count int, mk func(ns, name string) *corev1.Pod, ns, prefix string) ([]*corev1.Pod, error) {
	pods := make([]*corev1.Pod, count)
	err := parallel(count, 8, func(i int) error {
		p, err := b.cluster.Client.CoreV1().Pods(ns).Create(ctx, mk(ns, b.podName(prefix)), metav1.CreateOptions{})
		pods[i] = p
		return err
	})
	if err != nil {
		b.deletePods(pods)
	}
	return pods, err
}

func (b *bench) deletePods(pods []*corev1.Pod) {
	// Cleanup runs even when ctx is done.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_ = parallel(len(pods), 8, func(i int) error {
		if p := pods[i]; p != nil {
			_ = b.cluster.Client.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		}
		return nil
	})
}

// sandboxes creates the API pods and prepares their netns (untimed).
func (b *bench) sandboxes(ctx context.Context, n *node, pods []*corev1.Pod, primary bool) ([]*sandbox, error) {
	sbs := make([]*sandbox, len(pods))
	err := parallel(len(pods), 4, func(i int) error {
		s, err := n.prepare(ctx, pods[i], primary)
		sbs[i] = s
		return err
	})
	if err != nil {
		releaseAll(n, sbs)
		return nil, err
	}
	return sbs, nil
}

func releaseAll(n *node, sbs []*sandbox) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_ = parallel(len(sbs), 4, func(i int) error {
		if sbs[i] != nil {
			n.release(ctx, sbs[i])
		}
		return nil
	})
}

// measureSet ADDs count pods, one at a time (atOnce 1) or all at once,
// and reads API GETs and the plug-in's own durations around it.
func (b *bench) measureSet(ctx context.Context, n *node, k kind, scope, lookup string, count, atOnce int) (row, error) {
	r := row{Kind: k.Name, Scope: scope, Lookup: lookup, AtOnce: atOnce, ADDs: count, GETsPerADD: math.NaN(), dualExpected: k.Dual}
	prefix := k.Name + "-c"
	if scope == scopePlugin {
		prefix = k.Name + "-p"
	}
	pods, err := b.createPods(ctx, count, k.Pod, benchNS, prefix)
	if err != nil {
		return r, err
	}
	defer b.deletePods(pods)
	sbs, err := b.sandboxes(ctx, n, pods, scope == scopePlugin)
	if err != nil {
		return r, err
	}
	defer releaseAll(n, sbs)

	before, errBefore := b.podRequests(ctx, "GET")
	lat := make([]time.Duration, count)
	runs := make([]execRun, count)
	errs := make([]error, count)
	bin := installed(n, b.o.plugin)
	entry := b.pluginEntry(lookup)
	one := func(i int) {
		if scope == scopePlugin {
			runs[i], errs[i] = n.addPlugin(ctx, bin, entry, sbs[i])
			lat[i] = runs[i].Wall
			return
		}
		lat[i], errs[i] = n.addChain(ctx, sbs[i])
	}
	start := time.Now()
	if atOnce == 1 {
		for i := range sbs {
			one(i)
		}
	} else {
		gate := make(chan struct{})
		var wg sync.WaitGroup
		for i := range sbs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				one(i)
			}()
		}
		start = time.Now()
		close(gate)
		wg.Wait()
	}
	r.Wall = time.Since(start)
	if err := ctx.Err(); err != nil {
		return r, err
	}
	after, errAfter := b.podRequests(ctx, "GET")
	if errBefore == nil && errAfter == nil {
		r.GETsPerADD = (after - before) / float64(count)
	}

	logged := b.readLog()
	r.DualStackOK = true
	for i, s := range sbs {
		if errs[i] != nil {
			r.Fails++
			if r.FirstErr == "" {
				r.FirstErr = errs[i].Error()
			}
			continue
		}
		r.Lat = append(r.Lat, lat[i])
		if scope == scopePlugin {
			r.CPU = append(r.CPU, runs[i].CPU)
		}
		if l, ok := logged[s.pod.Namespace+"/"+s.pod.Name]; ok {
			r.InProc = append(r.InProc, l.Duration)
			if scope == scopePlugin {
				startup, _ := runs[i].phases(l)
				r.Startup = append(r.Startup, startup)
			}
			if l.Decision != "captured" {
				r.NotCaptured++
			}
			if l.Source != "" && l.Source != lookup {
				r.OtherSource++
			}
			if r.FirstMiss == "" {
				r.FirstMiss = l.Miss
			}
		}
		if k.Dual && !hasV6(s) {
			r.DualStackOK = false
		}
	}
	return r, nil
}

func hasV6(s *sandbox) bool {
	if s.prev == nil {
		return false
	}
	for _, ip := range s.prev.IPs {
		if ip.Address.IP.To4() == nil {
			return true
		}
	}
	return false
}

// podRequests reads the API server's counter of requests on pods.
func (b *bench) podRequests(ctx context.Context, verbs ...string) (float64, error) {
	raw, err := b.cluster.Client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return 0, err
	}
	return podRequests(bytes.NewReader(raw), verbs...)
}

func (b *bench) readLog() map[string]addLine {
	f, err := os.Open(b.logFile)
	if err != nil {
		return nil
	}
	defer f.Close()
	return readAddLog(f)
}

// parallel runs fn(0..n-1), at most limit at a time, and returns the
// first error.
func parallel(n, limit int, fn func(i int) error) error {
	sem := make(chan struct{}, limit)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// buildGo compiles a one-file Go program, statically linked (the no-op
// is the floor for any exec'd Go plug-in). Returns "" and the error when
// there is no Go toolchain.
func buildGo(ctx context.Context, dir, name, src string) (string, error) {
	srcDir := filepath.Join(dir, name+"-src")
	if err := os.MkdirAll(srcDir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(srcDir, "main.go"), []byte(src), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(srcDir, "go.mod"), []byte("module "+name+"\n\ngo 1.21\n"), 0o644); err != nil {
		return "", err
	}
	out := filepath.Join(dir, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", out, ".")
	cmd.Dir = srcDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s: %w: %s", name, err, b)
	}
	return out, nil
}
