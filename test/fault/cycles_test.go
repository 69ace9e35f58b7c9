//go:build integration

package fault

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/meshcni/meshcni/test/testbed"
)

// resources is what a long-lived process (the agent's repair controller,
// the init mode, a test) must not accumulate per pod.
type resources struct {
	fds map[string]string // fd -> target
	// mounts other than the netns bind mounts under /run/netns, which
	// tests in other packages create and remove concurrently.
	mounts     []string
	netnsMnts  map[string]bool // netns bind mounts, by mount point
	goroutines int
	threads    int
}

func measure(t testing.TB) resources {
	t.Helper()
	r := resources{fds: map[string]string{}, netnsMnts: map[string]bool{}, goroutines: runtime.NumGoroutine()}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		r.fds[e.Name()] = target
	}
	info, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(info), "\n") {
		f := strings.Fields(l)
		if len(f) < 5 {
			continue
		}
		if point := f[4]; strings.HasPrefix(point+"/", "/run/netns/") || strings.HasPrefix(point+"/", "/var/run/netns/") {
			r.netnsMnts[point] = true
		} else {
			r.mounts = append(r.mounts, strings.Join(f[3:], " "))
		}
	}
	sort.Strings(r.mounts)
	status, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			fmt.Sscan(strings.TrimSpace(v), &r.threads)
		}
	}
	return r
}

// fdDiff lists the descriptors open now that were not before.
func fdDiff(before, after map[string]string) []string {
	var out []string
	for fd, target := range after {
		if before[fd] != target {
			out = append(out, fd+" -> "+target)
		}
	}
	sort.Strings(out)
	return out
}

// TestCyclesLeakNothing runs -cycles (default 1,000) ADD, CHECK and DEL
// rounds through the plug-in, in process, each on a fresh pod netns,
// rotating over the three backends and the nftables backend's netlink
// path (production's: no Runner), for a dual-stack pod whose rules
// span three tables. Every command succeeds; afterwards the process holds
// the same file descriptors, netns mounts and goroutines as before, and
// the lock dirs are empty.
func TestCyclesLeakNothing(t *testing.T) {
	if *cycles < 1 {
		t.Skip("-cycles=0")
	}
	// Each backend as these tests drive it (commands through the guard),
	// and nftables as production runs it (netlink, no Runner).
	var variants []string
	plugins := map[string]*inproc{}
	for _, b := range backends {
		variants = append(variants, string(b))
		plugins[string(b)] = newInproc(t, b, nil)
	}
	variants = append(variants, "nftables-netlink")
	plugins["nftables-netlink"] = newInprocNetlink(t)
	pod := richMeshPod("fault-cycles", "pod")
	var created []string // every netns path the cycles made
	for _, ip := range plugins {
		ip.pods.add(pod)
	}
	cycle := func(i int) {
		b := variants[i%len(variants)]
		ip := plugins[b]
		n, err := testutils.NewNS()
		if err != nil {
			t.Fatalf("cycle %d: create netns: %v", i, err)
		}
		defer testbed.CloseNS(n)
		created = append(created, n.Path())
		a := ip.args(t, pod, n.Path(), true)
		a.ContainerID = fmt.Sprintf("cycle-%d", i)
		for _, step := range []struct {
			name string
			run  func() (any, error)
		}{
			{"ADD", func() (any, error) { e, err := ip.add(a); return nilIfNil(e), err }},
			{"CHECK", func() (any, error) { e, err := ip.check(a); return nilIfNil(e), err }},
			{"DEL", func() (any, error) { e, err := ip.del(a); return nilIfNil(e), err }},
		} {
			if cniErr, err := step.run(); cniErr != nil || err != nil {
				t.Fatalf("cycle %d (%s): %s: %v %v\nlog:\n%s", i, b, step.name, cniErr, err, ip.log)
			}
		}
		ip.log.Reset()
	}

	// Warm up: lazily started runtime and library state is not a leak.
	for i := range 8 {
		cycle(i)
	}
	runtime.GC()
	before := measure(t)
	start := time.Now()
	for i := range *cycles {
		cycle(i)
	}
	elapsed := time.Since(start)

	var after resources
	settle := time.Now().Add(3 * time.Second)
	for {
		runtime.GC()
		after = measure(t)
		if (len(after.fds) <= len(before.fds) && after.goroutines <= before.goroutines) || time.Now().After(settle) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%d cycles in %v (%v per ADD+CHECK+DEL); fds %d -> %d, mounts %d -> %d, goroutines %d -> %d, threads %d -> %d",
		*cycles, elapsed.Round(time.Millisecond), (elapsed / time.Duration(*cycles)).Round(time.Microsecond),
		len(before.fds), len(after.fds), len(before.mounts), len(after.mounts), before.goroutines, after.goroutines, before.threads, after.threads)
	if d := fdDiff(before.fds, after.fds); len(after.fds) > len(before.fds) {
		t.Errorf("file descriptors leaked: %d -> %d; new: %v", len(before.fds), len(after.fds), d)
	}
	if !slices.Equal(after.mounts, before.mounts) {
		t.Errorf("mounts changed:\n%s\n---\n%s", strings.Join(before.mounts, "\n"), strings.Join(after.mounts, "\n"))
	}
	var stale []string
	for _, p := range created {
		if after.netnsMnts[p] || after.netnsMnts[strings.TrimPrefix(p, "/var")] {
			stale = append(stale, p)
		}
	}
	if len(stale) > 0 {
		t.Errorf("%d of the cycles' netns are still mounted, e.g. %s", len(stale), stale[0])
	}
	if after.goroutines > before.goroutines {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines: %d -> %d\n%s", before.goroutines, after.goroutines, buf[:runtime.Stack(buf, true)])
	}
	for b, ip := range plugins {
		if ents, _ := os.ReadDir(ip.lockDir); len(ents) > 0 {
			t.Errorf("%s: lock dir holds %d files, e.g. %s", b, len(ents), ents[0].Name())
		}
	}
}

// nilIfNil keeps a nil *types.Error a nil interface.
func nilIfNil[T any](p *T) any {
	if p == nil {
		return nil
	}
	return p
}
