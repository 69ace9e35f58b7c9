//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

// needRuntime fails loudly when the node (containerd, the agent, the API
// server) never came up: a suite that cannot run must not pass.
func needRuntime(t *testing.T) {
	t.Helper()
	if setupErr != nil {
		t.Fatalf("e2e: the node could not be set up, nothing was tested: %v", setupErr)
	}
}

// plainPod is a pod without a sidecar: one app container serving 8080.
func plainPod(t *testing.T, namespace, name string) *Pod {
	t.Helper()
	pod := kubeharness.NewPod(namespace, name, testbed.NodeName)
	return runPod(t, pod)
}

func addr(p *Pod, port int) string { return fmt.Sprintf("%s:%d", p.IP, port) }

func TestBookinfoProductpage(t *testing.T) {
	needRuntime(t)
	pods := map[string]*Pod{}
	for _, b := range testbed.Bookinfo {
		pods[b.Name] = runPod(t, testbed.MeshPod("bookinfo", b.Name, b.Port))
	}
	pp, details := pods["productpage"], pods["details"]
	client := plainPod(t, "istio-system", "client")

	// The operator's view: container ID from CRI, PID, nsenter, iptables.
	nat := natTable(t, "inspect", containerID(t, pp, "productpage"))
	t.Logf("productpage NAT table (crictl inspect -> pid -> nsenter -t <pid> -n iptables -L -t nat -n -v --line-numbers -x):\n%s", nat)
	target := addr(details, 9080)
	checkCaptured(t, nat, pp, "productpage", target, client, addr(pp, 9080))

	record := logs(t, pp.Containers["istio-proxy"])
	t.Logf("productpage sidecar's record (crictl logs):\n%s", record)
	for _, want := range []string{
		fmt.Sprintf("outbound %s from %s:", target, pp.IP),
		fmt.Sprintf("inbound %s from %s:", addr(pp, 9080), client.IP),
		"outbound listening on :15001 as uid 1337",
	} {
		if !strings.Contains(record, want) {
			t.Errorf("the sidecar's log lacks %q", want)
		}
	}
	if calls := cniCalls(t, pp.Sandbox); len(calls) != 1 || !strings.HasPrefix(calls[0], "ADD netns=") {
		t.Errorf("containerd's calls to meshcni for productpage: %q, want one ADD", calls)
	}
}

// The same capture over IPv6 on the dual-stack node, for pods with
// ISTIO_DUAL_STACK (as with Istio, a dual-stack pod's IPv6 is captured
// only with it): ip6tables holds the ISTIO chains, an app's IPv6
// connection lands on its own sidecar's 15001 with the original IPv6
// destination, and an IPv6 connection into the app's port lands on 15006.
func TestIPv6Capture(t *testing.T) {
	needRuntime(t)
	dualStack := func(p *corev1.Pod) *corev1.Pod {
		p.Spec.Containers[1].Env = append(p.Spec.Containers[1].Env, corev1.EnvVar{Name: "ISTIO_DUAL_STACK", Value: "true"})
		return p
	}
	reviews := runPod(t, dualStack(testbed.MeshPod("bookinfo6", "reviews", 9080)))
	ratings := runPod(t, dualStack(testbed.MeshPod("bookinfo6", "ratings", 9080)))
	client := plainPod(t, "istio-system", "client6")
	for _, p := range []*Pod{reviews, ratings, client} {
		if p.IP6 == "" {
			t.Fatalf("%s/%s has no IPv6 address on the dual-stack node", p.Namespace, p.Name)
		}
	}

	nat := natTableOf(t, "ip6tables", "inspect", containerID(t, reviews, "reviews"))
	t.Logf("reviews' IPv6 NAT table (nsenter -t <pid> -n ip6tables -L -t nat):\n%s", nat)
	checkCaptured(t, nat, reviews, "reviews", addr6(ratings, 9080), client, addr6(reviews, 9080))
}

// checkCaptured checks mesh pod p (app container app) by its NAT table
// and by traffic. Its app's connection to target, a port of another mesh
// pod, lands on its own sidecar's 15001 with the original destination
// intact; client's connection to self (p's app port) lands on 15006; the
// sidecar itself (UID 1337) reaches target uncaptured, where the other
// pod's sidecar takes it in.
func checkCaptured(t *testing.T, nat string, p *Pod, app, target string, client *Pod, self string) {
	t.Helper()
	for _, want := range []string{"Chain ISTIO_OUTPUT", "Chain ISTIO_REDIRECT", "redir ports 15001", "Chain ISTIO_IN_REDIRECT", "redir ports 15006", "owner UID match 1337"} {
		if !strings.Contains(nat, want) {
			t.Errorf("%s's NAT table lacks %q", p.Name, want)
		}
	}
	if got, want := mustAsk(t, p, app, target), "outbound "+target; got != want {
		t.Errorf("%s app -> %s answered %q, want %q", p.Name, target, got, want)
	}
	if got, want := mustAsk(t, client, "app", self), "inbound "+self; got != want {
		t.Errorf("client -> %s answered %q, want %q", self, got, want)
	}
	if got, want := mustAsk(t, p, "istio-proxy", target), "inbound "+target; got != want {
		t.Errorf("%s sidecar -> %s answered %q, want %q", p.Name, target, got, want)
	}
}

func addr6(p *Pod, port int) string { return net.JoinHostPort(p.IP6, strconv.Itoa(port)) }

// Pods that must not be captured get no rules, and their traffic flows
// directly both ways.
func TestUncapturedPodsFlowDirectly(t *testing.T) {
	needRuntime(t)
	server := plainPod(t, "istio-system", "server-direct")
	optOut := testbed.MeshPod("bookinfo", "optout", 9080)
	optOut.Annotations["sidecar.istio.io/inject"] = "false"
	for _, pod := range []*corev1.Pod{testbed.MeshPod("kube-system", "excluded", 9080), optOut} {
		t.Run(pod.Namespace+"/"+pod.Name, func(t *testing.T) {
			p := runPod(t, pod)
			nat := natTable(t, "inspect", containerID(t, p, pod.Name))
			if strings.Contains(nat, "ISTIO") {
				t.Fatalf("rules in an uncaptured pod:\n%s", nat)
			}
			if got, want := mustAsk(t, p, pod.Name, addr(server, 8080)), "app "+addr(server, 8080); got != want {
				t.Errorf("out of the pod: answered %q, want %q (direct)", got, want)
			}
			if got, want := mustAsk(t, server, "app", addr(p, 9080)), "app "+addr(p, 9080); got != want {
				t.Errorf("into the pod: answered %q, want %q (direct)", got, want)
			}
			if record := logs(t, p.Containers["istio-proxy"]); strings.Contains(record, " from ") {
				t.Errorf("the idle sidecar saw traffic:\n%s", record)
			}
		})
	}
}

// StopPodSandbox runs DEL, a second one runs it again with CNI_NETNS
// empty (the netns is gone), and RemovePodSandbox once more: each must
// succeed, or the pod can never be removed.
func TestDelTwice(t *testing.T) {
	needRuntime(t)
	p, err := runSandbox(t, createAPIPod(t, testbed.MeshPod("bookinfo", "del-twice", 9080)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, args := range [][]string{{"stopp", p.Sandbox}, {"stopp", p.Sandbox}, {"rmp", p.Sandbox}} {
		if out, err := env.rt.Crictl(ctx, args...); err != nil {
			t.Fatalf("crictl %s: %v %s", strings.Join(args, " "), err, out)
		}
	}
	calls := cniCalls(t, p.Sandbox)
	t.Logf("containerd's calls to meshcni for %s: %q", p.Sandbox[:12], calls)
	if len(calls) < 3 || !strings.HasPrefix(calls[0], "ADD netns=/") || !strings.HasPrefix(calls[1], "DEL netns=/") {
		t.Fatalf("want ADD, DEL with the netns, then DEL without; got %q", calls)
	}
	for _, c := range calls[2:] {
		if c != "DEL netns=" {
			t.Errorf("a DEL after the netns is gone must have CNI_NETNS empty, got %q", c)
		}
	}
	if out, _ := env.rt.Crictl(ctx, "pods", "-q", "--name", "^del-twice$"); strings.TrimSpace(out) != "" {
		t.Errorf("sandbox still listed: %s", out)
	}
}

// A failed ADD (a bad annotation, which meshcni rejects) fails
// RunPodSandbox with meshcni's message, and leaves no sandbox, netns,
// IP or rule behind: containerd runs DEL for the half-made sandbox.
func TestFailedAddLeavesNothing(t *testing.T) {
	needRuntime(t)
	netnsBefore := listDir(t, filepath.Join(env.rt.Dir, "state", "io.containerd.grpc.v1.cri", "netns"))
	mark := callsMark(t)
	pod := testbed.MeshPod("bookinfo", "bad-annotation", 9080)
	pod.Annotations["traffic.sidecar.istio.io/excludeOutboundIPRanges"] = "10.0.0.0/40"
	_, err := runSandbox(t, createAPIPod(t, pod))
	if err == nil {
		t.Fatal("RunPodSandbox must fail for a pod meshcni cannot capture as asked")
	}
	t.Logf("RunPodSandbox failed as it must: %v", err)
	if !strings.Contains(err.Error(), "excludeOutboundIPRanges") {
		t.Errorf("the runtime's error must carry meshcni's message naming the annotation, got %v", err)
	}
	ctx := context.Background()
	if out, _ := env.rt.Crictl(ctx, "pods", "-q", "--name", "^bad-annotation$"); strings.TrimSpace(out) != "" {
		t.Errorf("a sandbox was left behind: %s", out)
	}
	if after := listDir(t, filepath.Join(env.rt.Dir, "state", "io.containerd.grpc.v1.cri", "netns")); len(after) > len(netnsBefore) {
		t.Errorf("a netns was left behind: before %q, after %q", netnsBefore, after)
	}
	// The calls made for this pod: an ADD, then a DEL for the same
	// sandbox; host-local must hold no IP for it.
	calls := newCalls(t, mark)
	t.Logf("containerd's calls to meshcni: %q", calls)
	if len(calls) < 2 || !strings.HasPrefix(calls[0], "ADD ") {
		t.Fatalf("want ADD then DEL, got %q", calls)
	}
	id := strings.Fields(calls[0])[1]
	if last := calls[len(calls)-1]; !strings.HasPrefix(last, "DEL "+id+" ") {
		t.Errorf("the failed ADD for %s was not followed by a DEL: %q", id, calls)
	}
	if ipamOwners(t)[id] {
		t.Errorf("host-local still holds an IP for the failed sandbox %s", id)
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// ipamOwners are the container IDs host-local holds an IP for.
func ipamOwners(t *testing.T) map[string]bool {
	t.Helper()
	owners := map[string]bool{}
	files, _ := filepath.Glob(filepath.Join(env.node.Dir, "ipam", "*", "*"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(filepath.Base(f), ".") {
			continue // last_reserved_ip, lock
		}
		if id := strings.Fields(string(b)); len(id) > 0 {
			owners[id[0]] = true
		}
	}
	return owners
}

// The primary CNI rewrites its conflist (a new bridge and pod range, and
// no meshcni: it knows nothing of it). The agent puts meshcni back,
// containerd loads the result by itself, and the next pod gets both: an
// address from the new range and the redirection.
func TestConflistEditPickedUpWithoutRestart(t *testing.T) {
	needRuntime(t)
	ctx := context.Background()
	server := plainPod(t, "istio-system", "server-edit")
	const newRange = "10.250.1.0/24"
	primary := env.node.PrimaryConf()
	primary["bridge"] = "mcni1" // the bridge plug-in will not give mcni0 a second range
	ipam := primary["ipam"].(map[string]any)
	ipam["ranges"] = []any{[]any{map[string]any{"subnet": newRange}}}
	// A default route, so that the app's connection to the old range
	// finds a route before the NAT table redirects it to the sidecar.
	ipam["routes"] = []any{map[string]any{"dst": "0.0.0.0/0"}}
	edited := time.Now()
	writePrimary(t, primary)
	t.Cleanup(func() {
		writePrimary(t, env.node.PrimaryConf())
		if err := env.rt.WaitCNIConfig(ctx, "back to the first range, meshcni last", func(c string) bool {
			return !strings.Contains(c, newRange) && chainedLast(c)
		}); err != nil {
			t.Error(err)
		}
	})
	if err := env.rt.WaitCNIConfig(ctx, "with the new range and meshcni last", func(c string) bool {
		return strings.Contains(c, newRange) && chainedLast(c)
	}); err != nil {
		t.Fatalf("%v\nagent log:\n%s", err, env.agent.Tail(20))
	}
	t.Logf("the agent put meshcni back and containerd loaded it %s after the edit", time.Since(edited).Round(time.Millisecond))

	p := runPod(t, testbed.MeshPod("bookinfo", "after-edit", 9080))
	if !strings.HasPrefix(p.IP, "10.250.1.") {
		t.Errorf("the new pod got %s, not an address in %s: containerd did not reload", p.IP, newRange)
	}
	if nat := natTable(t, "inspect", containerID(t, p, "after-edit")); !strings.Contains(nat, "ISTIO_REDIRECT") {
		t.Errorf("the new pod is not captured:\n%s", nat)
	}
	target := addr(server, 8080)
	if got, want := mustAsk(t, p, "after-edit", target), "outbound "+target; got != want {
		t.Errorf("app -> %s answered %q, want %q", target, got, want)
	}
}

// writePrimary replaces the node's conflist with the primary entry alone,
// atomically, as a primary CNI's installer does.
func writePrimary(t *testing.T, primary map[string]any) {
	t.Helper()
	b, err := json.MarshalIndent(map[string]any{"cniVersion": "1.0.0", "name": "testnet", "plugins": []any{primary}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	tmp := env.node.ConflistPath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, env.node.ConflistPath()); err != nil {
		t.Fatal(err)
	}
}

// Twenty pods started at once, as kubelet does after a node restart: every
// sandbox gets its own address and exactly its rules, each ADD and DEL
// runs once per sandbox, and all go away cleanly.
func TestTwentyPodsInParallel(t *testing.T) {
	needRuntime(t)
	const count = 20
	mark := callsMark(t)
	created := make([]*corev1.Pod, count)
	for i := range count {
		created[i] = createAPIPod(t, testbed.MeshPod("bookinfo", "load-"+strconv.Itoa(i), 9080))
	}
	pods := make([]*Pod, count)
	errs := make([]error, count)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range count {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pods[i], errs[i] = runSandbox(t, created[i])
		}()
	}
	wg.Wait()
	t.Logf("%d sandboxes through the chain in parallel in %s", count, time.Since(start).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			t.Fatalf("RunPodSandbox %s: %v", created[i].Name, err)
		}
	}

	ips := map[string]string{}
	for _, p := range pods {
		if other, dup := ips[p.IP]; dup {
			t.Errorf("%s and %s share %s", p.Name, other, p.IP)
		}
		ips[p.IP] = p.Name
		nat := natTable(t, "inspectp", p.Sandbox)
		if n := strings.Count(nat, "redir ports 15001"); n != 1 {
			t.Errorf("%s: %d REDIRECT to 15001 rules, want 1:\n%s", p.Name, n, nat)
		}
	}

	for _, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := env.rt.Crictl(context.Background(), "rmp", "--force", p.Sandbox); err != nil {
				t.Errorf("remove %s: %v %s", p.Name, err, out)
			}
		}()
	}
	wg.Wait()
	perSandbox := map[string][]string{}
	for _, c := range newCalls(t, mark) {
		f := strings.Fields(c)
		perSandbox[f[1]] = append(perSandbox[f[1]], f[0])
	}
	for _, p := range pods {
		if got := strings.Join(perSandbox[p.Sandbox], ","); !strings.HasPrefix(got, "ADD,DEL") || strings.Count(got, "ADD") != 1 {
			t.Errorf("%s: calls %s, want one ADD then DELs", p.Name, got)
		}
	}
}

// The agent stops for good (SIGTERM with no DaemonSet left: an uninstall)
// while a mesh pod runs. The entry, the binary and the kubeconfig go;
// containerd loads the primary conflist alone by itself. The running pod
// keeps its capture (its rules live in its netns); a new mesh pod starts
// without meshcni and uncaptured; the old pod is torn down without the
// plug-in (DEL follows the loaded list). Started again, the agent puts
// meshcni back and the next pod is captured.
func TestUninstallWhilePodsRun(t *testing.T) {
	needRuntime(t)
	ctx := context.Background()
	before := runPod(t, testbed.MeshPod("bookinfo", "before-uninstall", 9080))
	server := plainPod(t, "istio-system", "server-uninstall")
	target := addr(server, 8080)
	if got, want := mustAsk(t, before, "before-uninstall", target), "outbound "+target; got != want {
		t.Fatalf("before the uninstall: %q, want %q", got, want)
	}

	if note := env.agent.Stop(15 * time.Second); note != "" {
		t.Fatalf("the agent did not stop cleanly: %s", note)
	}
	t.Cleanup(func() {
		a, err := StartAgent(ctx, env.agentIn)
		if err != nil {
			t.Fatalf("start the agent again: %v", err)
		}
		env.agent = a
		if err := env.rt.WaitCNIConfig(ctx, "with meshcni last again", chainedLast); err != nil {
			t.Fatal(err)
		}
		again := runPod(t, testbed.MeshPod("bookinfo", "after-reinstall", 9080))
		if got, want := mustAsk(t, again, "after-reinstall", target), "outbound "+target; got != want {
			t.Errorf("after the reinstall: %q, want %q", got, want)
		}
	})
	if err := env.rt.WaitCNIConfig(ctx, "without meshcni", func(c string) bool { return !hasMeshcni(c) }); err != nil {
		t.Fatalf("%v\nagent log:\n%s", err, env.agent.Tail(20))
	}
	for _, f := range []string{filepath.Join(env.node.BinDir, "meshcni"), filepath.Join(env.agentIn.Dir, "run", "kubeconfig")} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s after the uninstall: %v", f, err)
		}
	}

	if got, want := mustAsk(t, before, "before-uninstall", target), "outbound "+target; got != want {
		t.Errorf("the running pod after the uninstall: %q, want %q (still captured)", got, want)
	}
	after := runPod(t, testbed.MeshPod("bookinfo", "after-uninstall", 9080))
	if calls := cniCalls(t, after.Sandbox); len(calls) != 0 {
		t.Errorf("containerd called meshcni for a pod started after the uninstall: %q", calls)
	}
	if got, want := mustAsk(t, after, "after-uninstall", target), "app "+target; got != want {
		t.Errorf("a pod started after the uninstall: %q, want %q (straight to the server)", got, want)
	}
	removeSandbox(t, before)
	if calls := cniCalls(t, before.Sandbox); len(calls) != 1 || !strings.HasPrefix(calls[0], "ADD") {
		t.Errorf("containerd's calls to meshcni for the pod torn down after the uninstall: %q, want its ADD only", calls)
	}
}

// hasMeshcni: a plug-in of the conflist is meshcni.
func hasMeshcni(conflist string) bool {
	var l struct{ Plugins []struct{ Type string } }
	if json.Unmarshal([]byte(conflist), &l) != nil || len(l.Plugins) == 0 {
		return true // not a conflist we can read: not "without meshcni"
	}
	return slices.ContainsFunc(l.Plugins, func(p struct{ Type string }) bool { return p.Type == "meshcni" })
}
