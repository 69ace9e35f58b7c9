package main

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

// step is one line of the breakdown: a program or an ADD that does a
// little more than the step it adds to.
type step struct {
	Name          string
	AddsTo        int // index of the step this one does a little more than; -1: none
	Lat           []time.Duration
	InProc        []time.Duration
	Startup, Exit []time.Duration
	CPU           []time.Duration
	Faults        []int64
}

// breakdown times, interleaved so that drift on a noisy machine hits all
// steps alike: a no-op exec, the plug-in's VERSION, and ADDs that stop
// ever later (namespace excluded, then per pod lookup a pod without
// sidecar and a mesh pod).
func (b *bench) breakdown(ctx context.Context, n *node, k kind) ([]step, error) {
	count := b.o.pods
	var all []*corev1.Pod
	defer func() { b.deletePods(all) }()
	prep := func(mk func(ns, name string) *corev1.Pod, ns, prefix string) ([]*sandbox, error) {
		pods, err := b.createPods(ctx, count, mk, ns, prefix)
		all = append(all, pods...)
		if err != nil {
			return nil, err
		}
		return b.sandboxes(ctx, n, pods, true)
	}
	excluded, err := prep(k.Pod, excludedNS, "excluded")
	if err != nil {
		return nil, err
	}
	defer releaseAll(n, excluded)

	bin := installed(n, b.o.plugin)
	version := []byte(`{"cniVersion":"1.0.0"}`)
	type probe struct {
		name   string
		addsTo int
		run    func(i int) (execRun, error)
		sbs    []*sandbox
	}
	var probes []probe
	last := func() int { return len(probes) - 1 }
	if b.static != "" {
		probes = append(probes, probe{name: "exec of a static no-op Go binary", addsTo: -1, run: func(int) (execRun, error) {
			return n.exec(ctx, []string{b.static}, os.Environ(), nil)
		}})
	}
	if t, err := exec.LookPath("true"); err == nil {
		probes = append(probes, probe{name: "exec of " + t + " (dynamic, libc)", addsTo: -1, run: func(int) (execRun, error) {
			return n.exec(ctx, []string{t}, os.Environ(), nil)
		}})
	}
	add := func(entry map[string]any, sbs []*sandbox) func(i int) (execRun, error) {
		return func(i int) (execRun, error) { return n.addPlugin(ctx, bin, entry, sbs[i]) }
	}
	noop := -1
	if b.static != "" {
		noop = 0
	}
	probes = append(probes, probe{name: "plug-in VERSION: process start, Go runtime and package init", addsTo: noop, run: func(int) (execRun, error) {
		return n.exec(ctx, []string{bin}, n.pluginEnv("VERSION", nil), version)
	}})
	probes = append(probes, probe{name: "plug-in ADD, namespace excluded: + config and prevResult parse, log line", addsTo: last(),
		run: add(b.pluginEntry(b.o.lookups[0]), excluded), sbs: excluded})
	excludedStep := last()
	for _, lookup := range b.o.lookups {
		what := "+ kubeconfig, client, TLS, pod GET"
		if lookup == lookupCache {
			what = "+ the pod from the agent's socket"
		}
		plain, err := prep(func(ns, name string) *corev1.Pod { return kubeharness.NewPod(ns, name, testbed.NodeName) }, benchNS, "plain-"+lookup)
		if err != nil {
			return nil, err
		}
		defer releaseAll(n, plain)
		mesh, err := prep(k.Pod, benchNS, k.Name+"-b"+lookup)
		if err != nil {
			return nil, err
		}
		defer releaseAll(n, mesh)
		entry := b.pluginEntry(lookup)
		probes = append(probes, probe{name: "plug-in ADD, pod without sidecar, " + lookup + " lookup: " + what, addsTo: excludedStep,
			run: add(entry, plain), sbs: plain})
		probes = append(probes, probe{name: "plug-in ADD, mesh pod (" + k.Name + "), " + lookup + " lookup: + netns, lock, rules", addsTo: last(),
			run: add(entry, mesh), sbs: mesh})
	}
	steps := make([]step, len(probes))
	runs := make([][]execRun, len(probes))
	for i := range steps {
		steps[i].Name, steps[i].AddsTo = probes[i].name, probes[i].addsTo
	}
	for i := 0; i < count; i++ {
		for j, p := range probes {
			r, err := p.run(i)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", p.name, err)
			}
			steps[j].Lat = append(steps[j].Lat, r.Wall)
			runs[j] = append(runs[j], r)
			steps[j].CPU = append(steps[j].CPU, r.CPU)
			steps[j].Faults = append(steps[j].Faults, r.MinFlt)
		}
	}
	logged := b.readLog()
	for j, p := range probes {
		for i, s := range p.sbs {
			if l, ok := logged[s.pod.Namespace+"/"+s.pod.Name]; ok {
				steps[j].InProc = append(steps[j].InProc, l.Duration)
				startup, exit := runs[j][i].phases(l)
				steps[j].Startup = append(steps[j].Startup, startup)
				steps[j].Exit = append(steps[j].Exit, exit)
			}
		}
	}
	return steps, nil
}

// procCost is what one program costs in processes and memory.
type procCost struct {
	What         string
	Runs         int
	Execs, Forks float64 // per run, the program's own exec not counted; NaN: not traced
	ForksNoExec  float64 // per run, children that never exec'd
	RSS          []int64 // KiB, per run
	Programs     string
}

// launcherSrc runs its arguments as a child, passes stdio and the exit
// code through, and writes the child's ru_maxrss (KiB) to the file named
// by its first argument. Measuring from the bench itself would not do: a
// vfork'd child inherits its parent's RSS high-water mark, and the bench
// is large; the launcher is small, and its own floor is reported.
const launcherSrc = `package main

import (
	"errors"
	"os"
	"os/exec"
	"strconv"
	"syscall"
)

func main() {
	cmd := exec.Command(os.Args[2], os.Args[3:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	err := cmd.Run()
	if cmd.ProcessState != nil {
		rss := cmd.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
		_ = os.WriteFile(os.Args[1], []byte(strconv.FormatInt(rss, 10)), 0o644)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		os.Exit(ee.ExitCode())
	} else if err != nil {
		os.Exit(127)
	}
}
`

// measureRSS runs argv under the launcher and returns the peak RSS.
func (b *bench) measureRSS(ctx context.Context, n *node, argv, env []string, stdin []byte) (int64, execRun, error) {
	f := filepath.Join(b.dir, "rss")
	_ = os.Remove(f)
	r, err := n.exec(ctx, append([]string{b.launcher, f}, argv...), env, stdin)
	if err != nil {
		return 0, r, err
	}
	raw, err := os.ReadFile(f)
	if err != nil {
		return 0, r, err
	}
	v, err := strconv.ParseInt(string(raw), 10, 64)
	return v, r, err
}

// procCosts runs a few plug-in ADDs of kind k under strace -f (execs and
// process-creating clones of the plug-in and its children) and as many
// under the launcher (peak RSS). With floor set it also measures the
// plug-in's VERSION and the no-op binary under the launcher.
func (b *bench) procCosts(ctx context.Context, n *node, k kind, floor bool) ([]procCost, error) {
	runs := b.o.procADDs
	add := procCost{What: "ADD, " + k.Name + " pod", Runs: runs, Execs: math.NaN(), Forks: math.NaN()}
	pods, err := b.createPods(ctx, 2*runs, k.Pod, benchNS, k.Name+"-s")
	defer b.deletePods(pods)
	if err != nil {
		return nil, err
	}
	sbs, err := b.sandboxes(ctx, n, pods, true)
	if err != nil {
		return nil, err
	}
	defer releaseAll(n, sbs)
	bin := installed(n, b.o.plugin)
	entry := b.pluginEntry(b.o.lookups[0])

	if strace, err := exec.LookPath("strace"); err != nil {
		add.Programs = "strace not installed (apt-get install strace)"
	} else {
		var execs, forks, noExec int
		for i, s := range sbs[:runs] {
			dir := b.dir
			if b.o.keepTraces != "" {
				dir = b.o.keepTraces
			}
			out := filepath.Join(dir, fmt.Sprintf("strace-%s-%d.txt", k.Name, i))
			wrap := []string{strace, "-f", "-qq", "-e", "trace=execve,clone,clone3,fork,vfork", "-o", out, "--"}
			if _, err := n.addPlugin(ctx, bin, entry, s, wrap...); err != nil {
				return nil, err
			}
			f, err := os.Open(out)
			if err != nil {
				return nil, err
			}
			sc, err := parseStrace(f)
			f.Close()
			if err != nil {
				return nil, err
			}
			if sc.Execs < 1 {
				return nil, fmt.Errorf("strace saw no exec in %s", out)
			}
			execs += sc.Execs - 1
			forks += sc.Forks
			noExec += sc.ForksNoExec
			if i == 0 {
				var progs []string
				for _, p := range sc.Programs[1:] {
					progs = append(progs, filepath.Base(p))
				}
				add.Programs = strings.Join(progs, ", ")
				if add.Programs == "" {
					add.Programs = "none"
				}
			}
		}
		add.Execs = float64(execs) / float64(runs)
		add.Forks = float64(forks) / float64(runs)
		add.ForksNoExec = float64(noExec) / float64(runs)
	}
	if b.launcher == "" {
		return []procCost{add}, nil
	}
	for _, s := range sbs[runs:] {
		stdin, err := n.pluginStdin(entry, s.prev)
		if err != nil {
			return nil, err
		}
		rss, r, err := b.measureRSS(ctx, n, []string{bin}, n.pluginEnv("ADD", s), stdin)
		if err != nil {
			return nil, fmt.Errorf("ADD under the launcher: %w", err)
		}
		if !bytes.Contains(r.Stdout, []byte("cniVersion")) {
			return nil, fmt.Errorf("ADD under the launcher printed no result: %q", r.Stdout)
		}
		add.RSS = append(add.RSS, rss)
	}
	out := []procCost{add}
	if !floor {
		return out, nil
	}
	version := procCost{What: "VERSION (start-up only)", Runs: runs, Execs: math.NaN(), Forks: math.NaN()}
	noop := procCost{What: "static no-op Go binary: the launcher's floor", Runs: runs, Execs: math.NaN(), Forks: math.NaN()}
	for i := 0; i < runs; i++ {
		rss, _, err := b.measureRSS(ctx, n, []string{bin}, n.pluginEnv("VERSION", nil), []byte(`{"cniVersion":"1.0.0"}`))
		if err != nil {
			return nil, err
		}
		version.RSS = append(version.RSS, rss)
		if b.static != "" {
			if rss, _, err = b.measureRSS(ctx, n, []string{b.static}, os.Environ(), nil); err != nil {
				return nil, err
			}
			noop.RSS = append(noop.RSS, rss)
		}
	}
	out = append(out, version)
	if b.static != "" {
		out = append(out, noop)
	}
	return out, nil
}

// initCost is the plug-in's package initialisation, from the Go runtime's
// own trace of VERSION runs (Go plug-ins only).
type initCost struct {
	Runs       int
	Total      time.Duration // mean per run
	TotalBytes int64
	Top        []pkgInit
}

type pkgInit struct {
	Pkg   string
	Clock time.Duration // mean per run
	Bytes int64
}

// initCosts runs VERSION with GODEBUG=inittrace=1 and averages it; nil
// when the plug-in prints no trace (not Go).
func (b *bench) initCosts(ctx context.Context, n *node, runs int) (*initCost, error) {
	bin := installed(n, b.o.plugin)
	env := append(n.pluginEnv("VERSION", nil), "GODEBUG=inittrace=1")
	clock, heap := map[string]time.Duration{}, map[string]int64{}
	for i := 0; i < runs; i++ {
		var stderr bytes.Buffer
		err := n.NS.Do(func(ns.NetNS) error {
			cmd := exec.CommandContext(ctx, bin)
			cmd.Env, cmd.Stdin, cmd.Stderr = env, strings.NewReader(`{"cniVersion":"1.0.0"}`), &stderr
			return cmd.Run()
		})
		if err != nil {
			return nil, fmt.Errorf("VERSION with inittrace: %w: %s", err, tail(stderr.String(), 5))
		}
		c, h, err := initTrace(&stderr)
		if err != nil {
			return nil, err
		}
		if len(c) == 0 {
			return nil, nil
		}
		for k, v := range c {
			clock[k] += v
			heap[k] += h[k]
		}
	}
	ic := &initCost{Runs: runs}
	for k, v := range clock {
		p := pkgInit{Pkg: k, Clock: v / time.Duration(runs), Bytes: heap[k] / int64(runs)}
		ic.Total += p.Clock
		ic.TotalBytes += p.Bytes
		ic.Top = append(ic.Top, p)
	}
	slices.SortFunc(ic.Top, func(a, b pkgInit) int { return cmp.Compare(b.Clock, a.Clock) })
	ic.Top = ic.Top[:min(len(ic.Top), 8)]
	return ic, nil
}
