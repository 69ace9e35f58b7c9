package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/apilookup"
	"github.com/meshcni/meshcni/test/testbed"
)

// userHZ is the unit of /proc/<pid>/stat CPU times on Linux.
const userHZ = 100

// procSample is one reading of a process's CPU time and memory.
type procSample struct {
	At    time.Time
	CPU   time.Duration // user+system, its own and its waited-for children's
	RSSKB int64         // VmRSS
}

func readProc(pid int) (procSample, error) {
	s := procSample{At: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	if s.CPU, err = parseStatCPU(string(stat)); err != nil {
		return s, err
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, err
	}
	s.RSSKB, err = parseVmRSS(string(status))
	return s, err
}

// parseStatCPU sums utime, stime, cutime and cstime (fields 14-17).
func parseStatCPU(stat string) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no ')' in /proc/<pid>/stat")
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 15 {
		return 0, fmt.Errorf("short /proc/<pid>/stat: %d fields after comm", len(f))
	}
	var ticks int64
	for _, idx := range []int{11, 12, 13, 14} { // field n is f[n-3]
		v, err := strconv.ParseInt(f[idx], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/<pid>/stat field %d: %w", idx+3, err)
		}
		ticks += v
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

func parseVmRSS(status string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 0 {
				break
			}
			return strconv.ParseInt(f[0], 10, 64)
		}
	}
	return 0, errors.New("no VmRSS in /proc/<pid>/status")
}

// agentResult is the agent's CPU and memory over the phases of the run.
type agentResult struct {
	Binary string
	Pods   int
	Phases []agentPhase
	// Reads are pod GET, LIST and WATCH requests during the run: the
	// agent's, since nothing else reads pods then.
	Reads float64
	Note  string
}

type agentPhase struct {
	Name               string
	Wall, CPU          time.Duration
	RSSStart, RSSEnd   int64
	RSSPeak            int64
	PodsCreatedDeleted int
}

func (a *agentResult) write(w io.Writer) {
	fmt.Fprintf(w, "### Node agent under pod churn (%s, %d pods bound to %s, API objects only)\n\n", a.Binary, a.Pods, testbed.NodeName)
	fmt.Fprintln(w, "CPU: user+system time from /proc/<pid>/stat (children included); memory: VmRSS sampled every 200 ms.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| phase | wall s | pod ops | CPU s | CPU % of one core | VmRSS start MiB | VmRSS peak MiB | VmRSS end MiB |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range a.Phases {
		pct := 0.0
		if p.Wall > 0 {
			pct = 100 * p.CPU.Seconds() / p.Wall.Seconds()
		}
		fmt.Fprintf(w, "| %s | %.1f | %d | %.2f | %.1f | %.1f | %.1f | %.1f |\n", p.Name, p.Wall.Seconds(), p.PodsCreatedDeleted, p.CPU.Seconds(), pct,
			mib(p.RSSStart), mib(p.RSSPeak), mib(p.RSSEnd))
	}
	fmt.Fprintf(w, "\nPod GET/LIST/WATCH requests the API server completed during the run (the agent's; a watch counts when it ends): %.0f.", a.Reads)
	if a.Reads == 0 {
		fmt.Fprint(w, " The agent does not read pods, so churn cannot cost it anything yet.")
	}
	fmt.Fprintf(w, " %s\n", a.Note)
}

func mib(kb int64) float64 { return float64(kb) / 1024 }

// measureAgent runs the agent binary in the node netns against a fresh
// node's CNI dirs and the API, waits until it has installed the plug-in,
// then creates and deletes --agent-pods pods bound to the node at
// --agent-churn operations per second, sampling the agent throughout.
func (b *bench) measureAgent(ctx context.Context) (*agentResult, error) {
	res := &agentResult{Binary: b.o.agent, Pods: b.o.agentPods}
	n, err := b.newNode(kinds[0], false)
	if err != nil {
		return nil, err
	}
	defer n.Close()

	dir := filepath.Join(b.dir, "agent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// The agent wants a binary named like the entry's type, and installs
	// meshcni's API lookup helper from beside it.
	plugin := filepath.Join(dir, "meshcni")
	if err := testbed.CopyExecutable(b.o.plugin, plugin); err != nil {
		return nil, err
	}
	helper := filepath.Join(filepath.Dir(b.o.plugin), apilookup.HelperName)
	if _, err := os.Stat(helper); err == nil {
		if err := testbed.CopyExecutable(helper, filepath.Join(dir, apilookup.HelperName)); err != nil {
			return nil, err
		}
	}
	// The chart's ClusterRole meshcni-agent (charts/meshcni/templates/rbac.yaml).
	kubeconfig, token, err := b.cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-agent", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "delete"}},
		{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"update", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
		{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
	}, time.Hour)
	if err != nil {
		return nil, err
	}
	// Its node, for the startup taint; no kubelet registers one here.
	nodeObj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testbed.NodeName}}
	if _, err := b.cluster.Client.CoreV1().Nodes().Create(ctx, nodeObj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create node %s: %w", testbed.NodeName, err)
	}
	// And the plug-in's own, as the chart makes it: get pods, nothing else.
	_, pluginToken, err := b.cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-plugin", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
	}, time.Hour)
	if err != nil {
		return nil, err
	}
	agentTokenPath, tokenPath := filepath.Join(dir, "agent-token"), filepath.Join(dir, "token")
	for path, tok := range map[string]string{agentTokenPath: token, tokenPath: pluginToken} {
		if err := os.WriteFile(path, []byte(tok), 0o600); err != nil {
			return nil, err
		}
	}
	args := []string{
		"--cni-conf-dir=" + n.ConfDir, "--cni-bin-dir=" + n.BinDir, "--run-dir=" + filepath.Join(dir, "run"),
		"--plugin-binary=" + plugin, "--kubeconfig=" + kubeconfig, "--token-path=" + tokenPath, "--agent-token-path=" + agentTokenPath,
		"--health-addr=", "--log-level=warn",
	}
	args = append(args, b.o.agentArgs...)
	stderr := &testbed.SyncBuffer{}
	cmd := exec.Command(b.o.agent, args...)
	cmd.Env = append(os.Environ(), "NODE_NAME="+testbed.NodeName, "KUBERNETES_NODE_NAME="+testbed.NodeName)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	// Started from the node netns, as a DaemonSet pod with hostNetwork
	// runs in the node's.
	if err := n.NS.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		return nil, fmt.Errorf("start %s: %w", b.o.agent, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer terminate(cmd, exited)
	pid := cmd.Process.Pid

	// Ready when the entry is in the node's conflist.
	deadline := time.Now().Add(30 * time.Second)
	for {
		conf, _ := os.ReadFile(n.ConflistPath())
		if bytes.Contains(conf, []byte(`"meshcni"`)) {
			break
		}
		select {
		case err := <-exited:
			exited <- err
			return nil, fmt.Errorf("agent exited before installing the plug-in: %v\n%s", err, tail(stderr.String(), 20))
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("agent did not add its entry to %s within 30s\n%s", n.ConflistPath(), tail(stderr.String(), 20))
		}
	}

	readsBefore, err := b.podRequests(ctx, "GET", "LIST", "WATCH")
	if err != nil {
		return nil, err
	}
	sampler := newSampler(pid)
	defer sampler.stop()
	phase := func(name string, ops int, fn func() error) error {
		start, err := readProc(pid)
		if err != nil {
			return fmt.Errorf("agent gone: %w\n%s", err, tail(stderr.String(), 20))
		}
		sampler.resetPeak()
		if err := fn(); err != nil {
			return err
		}
		end, err := readProc(pid)
		if err != nil {
			return fmt.Errorf("agent gone: %w\n%s", err, tail(stderr.String(), 20))
		}
		res.Phases = append(res.Phases, agentPhase{Name: name, Wall: end.At.Sub(start.At), CPU: end.CPU - start.CPU,
			RSSStart: start.RSSKB, RSSEnd: end.RSSKB, RSSPeak: max(sampler.peak(), start.RSSKB, end.RSSKB), PodsCreatedDeleted: ops})
		return nil
	}
	idle := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Second):
			return nil
		}
	}
	names := make([]string, b.o.agentPods)
	for i := range names {
		names[i] = b.podName("agent")
	}
	defer func() { // whatever a failed phase left
		pods := make([]*corev1.Pod, len(names))
		for i, nm := range names {
			pods[i] = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: benchNS, Name: nm}}
		}
		b.deletePods(pods)
	}()
	steps := []struct {
		name string
		ops  int
		fn   func() error
	}{
		{"idle, before", 0, idle},
		{fmt.Sprintf("create %d pods", len(names)), len(names), func() error { return b.churn(ctx, names, true) }},
		{fmt.Sprintf("idle with %d pods", len(names)), 0, idle},
		{fmt.Sprintf("delete %d pods", len(names)), len(names), func() error { return b.churn(ctx, names, false) }},
		{"idle, after", 0, idle},
	}
	for _, s := range steps {
		progress("  agent: %s", s.name)
		if err := phase(s.name, s.ops, s.fn); err != nil {
			return nil, err
		}
	}
	readsAfter, err := b.podRequests(ctx, "GET", "LIST", "WATCH")
	if err != nil {
		return nil, err
	}
	res.Reads = readsAfter - readsBefore
	res.Note = fmt.Sprintf("Agent flags: %s, NODE_NAME=%s.", strings.Join(args, " "), testbed.NodeName)
	if lines := problemLines(stderr.String()); len(lines) > 0 {
		res.Note += fmt.Sprintf(" The agent logged %d warnings or errors; the first: %s", len(lines), oneLine(lines[0]))
	}
	return res, nil
}

// churn creates (or deletes) the named pods at --agent-churn per second.
func (b *bench) churn(ctx context.Context, names []string, create bool) error {
	tick := time.NewTicker(time.Second / time.Duration(b.o.agentChurn))
	defer tick.Stop()
	var wg sync.WaitGroup
	errs := make(chan error, len(names))
	sem := make(chan struct{}, 16)
	for _, name := range names {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pods := b.cluster.Client.CoreV1().Pods(benchNS)
			var err error
			if create {
				_, err = pods.Create(ctx, testbed.MeshPod(benchNS, name, 9080), metav1.CreateOptions{})
			} else {
				err = pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs // nil when none
}

// sampler reads VmRSS every 200 ms and keeps the peak since resetPeak.
type sampler struct {
	mu   sync.Mutex
	max  int64
	done chan struct{}
	wg   sync.WaitGroup
}

func newSampler(pid int) *sampler {
	s := &sampler{done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.done:
				return
			case <-t.C:
			}
			if p, err := readProc(pid); err == nil {
				s.mu.Lock()
				s.max = max(s.max, p.RSSKB)
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *sampler) resetPeak()  { s.mu.Lock(); s.max = 0; s.mu.Unlock() }
func (s *sampler) peak() int64 { s.mu.Lock(); defer s.mu.Unlock(); return s.max }
func (s *sampler) stop()       { close(s.done); s.wg.Wait() }

// problemLines are the agent's WARN and ERROR log lines (JSON or text).
func problemLines(log string) []string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, `"level":"WARN"`) || strings.Contains(l, `"level":"ERROR"`) ||
			strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			out = append(out, l)
		}
	}
	return out
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// terminate stops a child of the bench whose Wait reports on exited:
// SIGTERM, then SIGKILL if it has not exited within 15 s, so that a
// server stuck in its shutdown cannot hang the bench.
func terminate(cmd *exec.Cmd, exited <-chan error) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}
