//go:build cluster

package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// logWriter sends the journey's output to the test log, line by line.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

const (
	captured = "bookinfo"        // meshcni captures its pods
	excluded = "bookinfo-legacy" // excluded: its pods keep istio-init
)

// TestJourney is the user's journey (docs/e2e.md), in order; a step that
// fails ends it, since the next ones build on it.
func TestJourney(t *testing.T) {
	c := need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	j := &Journey{C: c, Out: logWriter{t}}
	before, err := j.Conflists()
	if err != nil {
		t.Fatal(err)
	}
	var without, with time.Duration
	var productpage, details PodView
	var release []string // the release's pods before the settings change

	steps := []struct {
		name string
		f    func(t *testing.T)
	}{
		{"StartTimeWithoutMeshcni", func(t *testing.T) {
			without = startTimes(ctx, t, c, "timing-before")
		}},
		{"Install", func(t *testing.T) {
			seen, err := j.Install(ctx, "kube-system", "istio-system", excluded)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("kubectl get meshcni: %s", strings.Join(seen, " -> "))
			checkAgents(ctx, t, c)
			checkConflists(t, j, "bridge", "portmap", "meshcni")
		}},
		{"StartTimeWithMeshcni", func(t *testing.T) {
			with = startTimes(ctx, t, c, "timing-after")
			t.Logf("pod start (create -> Ready, median of 6, one at a time): %v without meshcni, %v with: ratio %.2f",
				without.Round(time.Millisecond), with.Round(time.Millisecond), float64(with)/float64(without))
		}},
		{"ApplyStockBookinfo", func(t *testing.T) {
			// Captured: the webhook turns istio-init into Istio's CNI-mode
			// istio-validation, and meshcni programs the rules.
			if err := j.Namespace(ctx, captured); err != nil {
				t.Fatal(err)
			}
			if err := j.WaitWebhook(ctx, captured, false); err != nil {
				t.Fatal(err)
			}
			if err := j.ApplyBookinfo(ctx, captured, Placement{"productpage-v1": "node-a", "details-v1": "node-b"}); err != nil {
				t.Fatal(err)
			}
			checkInits(ctx, t, j, captured, false)
			// Excluded: the pods keep istio-init and program their own rules.
			if err := j.Namespace(ctx, excluded); err != nil {
				t.Fatal(err)
			}
			if err := j.WaitWebhook(ctx, excluded, true); err != nil {
				t.Fatal(err)
			}
			if err := j.ApplyBookinfo(ctx, excluded, nil); err != nil {
				t.Fatal(err)
			}
			checkInits(ctx, t, j, excluded, true)
		}},
		{"VerifyAsAnOperator", func(t *testing.T) {
			var err error
			if productpage, err = j.Inspect(ctx, captured, "productpage"); err != nil {
				t.Fatal(err)
			}
			if details, err = j.Inspect(ctx, captured, "details"); err != nil {
				t.Fatal(err)
			}
			for _, v := range []PodView{productpage, details} {
				checkCaptured(t, v)
				if !slices.Equal(v.InitContainers, []string{"istio-validation"}) {
					t.Errorf("%s: init containers %v, want istio-validation only", v.Name, v.InitContainers)
				}
			}
			if productpage.Node == details.Node {
				t.Fatalf("productpage and details both on %s; the placement should put them on two nodes", details.Node)
			}
			legacy, err := j.Inspect(ctx, excluded, "productpage")
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(legacy.InitContainers, []string{"istio-init"}) {
				t.Errorf("%s/%s: init containers %v, want istio-init (excluded namespace)", excluded, legacy.Name, legacy.InitContainers)
			}
			// Not asserted: meshcnictl verify on this pod (docs/e2e.md, "Found
			// by this suite"). Its istio-init's rules are checked by traffic.
		}},
		{"TrafficAcrossNodes", func(t *testing.T) {
			ip, err := j.ServiceIP(ctx, captured, "details")
			if err != nil {
				t.Fatal(err)
			}
			answer, err := j.Ask(ctx, captured, "productpage-v1", "productpage", ip+":9080")
			if err != nil {
				t.Fatal(err)
			}
			hops := strings.Split(answer, " | ")
			want := []string{
				"outbound " + ip + ":9080 at " + productpage.Name + " (uid 1337)",
				"inbound " + details.IP + ":9080 at " + details.Name + " (uid 1337)",
				"app " + details.Name,
			}
			if !slices.Equal(hops, want) {
				t.Fatalf("productpage -> details:9080 answered\n  %q\nwant\n  %q\n(productpage on %s, details on %s)", hops, want, productpage.Node, details.Node)
			}
			// The excluded namespace's pods redirect with their own istio-init.
			lip, err := j.ServiceIP(ctx, excluded, "details")
			if err != nil {
				t.Fatal(err)
			}
			answer, err = j.Ask(ctx, excluded, "productpage-v1", "productpage", lip+":9080")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(answer, "outbound "+lip+":9080 at productpage-v1-") {
				t.Errorf("%s: productpage -> details answered %q, want its sidecar's outbound (istio-init's rules)", excluded, answer)
			}
		}},
		{"AgentKilledAndRestarted", func(t *testing.T) { agentKilled(ctx, t, j) }},
		{"SettingsChangeRollsNodeByNode", func(t *testing.T) {
			var err error
			if release, err = j.ReleasePods(ctx); err != nil {
				t.Fatal(err)
			}
			settingsChange(ctx, t, j)
		}},
		// The next steps do not build on this one: a failure here does not
		// end the journey.
		{"WebhookFollowsTheResource", func(t *testing.T) { webhookFollows(ctx, t, j, release) }},
		{"UpgradeKeepsThePlugin", func(t *testing.T) { upgrade(ctx, t, j) }},
		{"NodeRebootTaintHoldsMeshPods", func(t *testing.T) { reboot(ctx, t, j, details.Node) }},
		{"Disable", func(t *testing.T) {
			seen, err := j.Change(ctx, `[{"op": "replace", "path": "/spec/enabled", "value": false}]`, "Disabled")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("kubectl get meshcni: %s", strings.Join(seen, " -> "))
			// Disabled means done: each of these holds the moment the phase
			// says so.
			agents, err := j.Agents(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(agents) > 0 {
				t.Errorf("agents left after Disabled: %v", agents)
			}
			after, err := j.Conflists()
			if err != nil {
				t.Fatal(err)
			}
			for node, b := range before {
				if !bytes.Equal(after[node], b) {
					t.Errorf("%s: conflist after disable differs from before the install:\n%s\nwant\n%s", node, after[node], b)
				}
			}
			if left := j.Leftovers(); len(left) > 0 {
				t.Errorf("meshcni left on the nodes: %v", left)
			}
			taints, err := j.Taints(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for node, ts := range taints {
				for _, taint := range ts {
					if strings.HasPrefix(taint, "meshcni.io/") {
						t.Errorf("%s still tainted %s after Disabled: no pod without a toleration can schedule there", node, taint)
					}
				}
			}
			var pods []map[string]any
			for _, n := range c.Nodes {
				pods = append(pods, PlainPod("default", "after-disable-"+n.Name, n.Name))
			}
			if err := c.CreateAllAndWait(ctx, pods, 60*time.Second); err != nil {
				t.Errorf("new pods after disable: %v", err)
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.f) && s.name != "WebhookFollowsTheResource" {
			t.Fatalf("step %s failed; the journey stops here", s.name)
		}
	}
}

// checkCaptured asserts an operator's reading of a captured pod: Istio's
// chains and redirects in its NAT table, and verify's verdict.
func checkCaptured(t *testing.T, v PodView) {
	t.Helper()
	for _, want := range []string{"ISTIO_INBOUND", "ISTIO_OUTPUT", "ISTIO_REDIRECT", "ISTIO_IN_REDIRECT", "redir ports 15001", "redir ports 15006", "owner UID match 1337"} {
		if !strings.Contains(v.NAT, want) {
			t.Errorf("%s on %s: NAT table has no %q:\n%s", v.Name, v.Node, want, v.NAT)
		}
	}
	if v.VerifyErr != nil || !strings.Contains(v.Verify, "Result:  OK: the rules match") {
		t.Errorf("%s: meshcnictl verify: %v\n%s", v.Name, v.VerifyErr, v.Verify)
	}
}

// checkAgents asserts one ready agent on every node.
func checkAgents(ctx context.Context, t *testing.T, c *Cluster) {
	t.Helper()
	agents, err := agentPods(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if a := agents[n.Name]; len(a) < 2 || a[1] != "true" {
			t.Errorf("no ready agent on %s: %v", n.Name, agents)
		}
	}
}

// checkConflists asserts each node's conflist plug-ins.
func checkConflists(t *testing.T, j *Journey, want ...string) {
	t.Helper()
	lists, err := j.Conflists()
	if err != nil {
		t.Fatal(err)
	}
	for node, l := range lists {
		if types, err := PluginTypes(l); err != nil || !slices.Equal(types, want) {
			t.Errorf("%s: conflist plug-ins %v (%v), want %v", node, types, err, want)
		}
	}
}

// checkInits asserts what the webhook made of every pod of ns: in an
// excluded namespace Istio's istio-init (NET_ADMIN, NET_RAW) is kept; in
// a captured one it became istio-validation and no container adds a
// capability.
func checkInits(ctx context.Context, t *testing.T, j *Journey, ns string, excluded bool) {
	t.Helper()
	pods, err := j.PodInits(ctx, ns)
	if err != nil {
		t.Fatal(err)
	}
	if len(pods) == 0 {
		t.Fatalf("no pods in %s", ns)
	}
	for name, p := range pods {
		switch {
		case excluded && (!slices.Equal(p.Init, []string{"istio-init"}) || !slices.Contains(p.Caps, "NET_ADMIN")):
			t.Errorf("%s/%s (excluded): init containers %v, added capabilities %v; want Istio's istio-init with NET_ADMIN", ns, name, p.Init, p.Caps)
		case !excluded && (!slices.Equal(p.Init, []string{"istio-validation"}) || len(p.Caps) > 0):
			t.Errorf("%s/%s (captured): init containers %v, added capabilities %v; want istio-validation only and none (the webhook converts istio-init)", ns, name, p.Init, p.Caps)
		}
	}
	j.Say("%s: %d pods, each with init containers %v", ns, len(pods), pods[slices.Sorted(maps.Keys(pods))[0]].Init)
}

// startTimes measures six mesh pods' create-to-Ready, one at a time, in a
// new namespace, and returns the median.
func startTimes(ctx context.Context, t *testing.T, c *Cluster, ns string) time.Duration {
	t.Helper()
	if _, err := c.Kubectl(ctx, "create", "namespace", ns); err != nil {
		t.Fatal(err)
	}
	times, err := c.StartTimes(ctx, 6, func(i int, node string) map[string]any {
		// Before the install the nodes carry the startup taint; the same
		// toleration both times keeps the two runs alike.
		return Tolerating(MeshPod(ns, fmt.Sprintf("pod-%d", i), node))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: create -> Ready %v", ns, times)
	if _, err := c.Kubectl(ctx, "delete", "namespace", ns, "--wait=false"); err != nil {
		t.Fatal(err)
	}
	return Median(times)
}

// agentKilled kills node-a's agent container by PID, as an OOM kill
// would. While the kubelet restarts it, the node's conflist must stay
// valid with meshcni in it, and a mesh pod started meanwhile must be
// captured.
func agentKilled(ctx context.Context, t *testing.T, j *Journey) {
	c := j.C
	n := c.Nodes[0]
	agents, err := agentPods(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	a := agents[n.Name]
	if len(a) < 4 {
		t.Fatalf("no agent on %s: %v", n.Name, agents)
	}
	id := strings.TrimPrefix(a[3], "containerd://")
	pid, err := n.Crictl(ctx, "inspect", "-o", "go-template", "--template", "{{.info.pid}}", id)
	if err != nil {
		t.Fatal(err)
	}
	pid = strings.TrimSpace(pid)
	// Watch the conflist from the kill until the agent is back.
	done := watchConflist(n)
	j.Title("kill %s's agent (pid %s) as an OOM kill would", n.Name, pid)
	if _, err := run(ctx, nil, "kill", "-KILL", pid); err != nil {
		done()
		t.Fatal(err)
	}
	// A mesh pod started now, before or after the agent is back: it must
	// be captured either way.
	ns := "after-kill"
	if _, err := c.Kubectl(ctx, "create", "namespace", ns); err != nil {
		done()
		t.Fatal(err)
	}
	_, podErr := c.CreateAndWait(ctx, MeshPod(ns, "mesh", n.Name), 90*time.Second)
	err = waitFor(ctx, "the kubelet restarts the agent", 90*time.Second, func() error {
		now, err := agentPods(ctx, c)
		if err != nil {
			return err
		}
		if p := now[n.Name]; len(p) < 3 || p[0] != a[0] || p[1] != "true" || p[2] == a[2] {
			return fmt.Errorf("agent on %s: %v (before the kill: %v)", n.Name, p, a)
		}
		return nil
	})
	if msg := done(); msg != "" {
		t.Errorf("%s's conflist while its agent restarted: %s", n.Name, msg)
	}
	if err != nil {
		t.Fatal(err)
	}
	if podErr != nil {
		t.Fatalf("a mesh pod on %s while the agent restarted: %v", n.Name, podErr)
	}
	v, err := j.Inspect(ctx, ns, "mesh")
	if err != nil {
		t.Fatal(err)
	}
	checkCaptured(t, v)
}

func readConflist(n *Node) ([]byte, error) {
	return os.ReadFile(n.path("cni", "net.d", n.c.Conflist))
}

// settingsChange excludes one more namespace, batch, through the
// resource: Updating then Running again, every node's agent replaced one
// node at a time, each node's entry excludes batch. A stock pod in batch
// is converted before the change (webhookFollows checks after it).
func settingsChange(ctx context.Context, t *testing.T, j *Journey) {
	j.Title("exclude one more namespace through the resource")
	const ns = "batch"
	if err := j.Namespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	if err := j.WaitWebhook(ctx, ns, false); err != nil {
		t.Fatal(err)
	}
	if err := j.ApplyBookinfo(ctx, ns, nil, "bookinfo-details", "details-v1"); err != nil {
		t.Fatal(err)
	}
	checkInits(ctx, t, j, ns, false)
	seen, err := whileRolling(ctx, t, j, func() ([]string, error) {
		return j.Change(ctx, `[{"op": "add", "path": "/spec/excludeNamespaces/-", "value": "`+ns+`"}]`, "Updating", "Running")
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl get meshcni: %s", strings.Join(seen, " -> "))
	err = waitFor(ctx, "each node's entry excludes "+ns, 30*time.Second, func() error {
		lists, err := j.Conflists()
		if err != nil {
			return err
		}
		for node, l := range lists {
			var cl struct{ Plugins []map[string]any }
			if err := json.Unmarshal(l, &cl); err != nil {
				return err
			}
			last := cl.Plugins[len(cl.Plugins)-1]
			ex, _ := json.Marshal(last["excludeNamespaces"])
			if last["type"] != "meshcni" || !strings.Contains(string(ex), `"`+ns+`"`) {
				return fmt.Errorf("%s: last plug-in %v", node, last)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// webhookFollows checks that the webhook follows the resource, after
// settingsChange excluded batch, without anything of the release
// restarting (release: its pods before the change): a bounded wait until
// a dry run in batch keeps istio-init, then a new real pod keeps it.
func webhookFollows(ctx context.Context, t *testing.T, j *Journey, release []string) {
	const ns = "batch"
	if err := j.WaitWebhook(ctx, ns, true); err != nil {
		t.Fatal(err)
	}
	if _, err := j.kubectl(ctx, "-n", ns, "rollout", "restart", "deployment/details-v1"); err != nil {
		t.Fatal(err)
	}
	if _, err := j.kubectl(ctx, "-n", ns, "rollout", "status", "deployment/details-v1", "--timeout=120s"); err != nil {
		t.Fatal(err)
	}
	checkInits(ctx, t, j, ns, true)
	now, err := j.ReleasePods(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(now, release) {
		t.Errorf("the release's pods (name, restarts) changed with a setting: %q, before %q", now, release)
	}
}

// whileRolling runs change (which ends when the resource is Running
// again) while it checks that every agent is replaced, one node at a
// time.
func whileRolling(ctx context.Context, t *testing.T, j *Journey, change func() ([]string, error)) ([]string, error) {
	old, err := agentPods(ctx, j.C)
	if err != nil {
		return nil, err
	}
	rolled := make(chan error, 1)
	go func() { rolled <- waitRolled(ctx, t, j.C, old) }()
	seen, err := change()
	if rerr := <-rolled; err == nil {
		err = rerr
	}
	return seen, err
}

// reboot replaces a node the way a cloud does: its workloads stop, its
// Node object goes (and, as the pod GC would do, the pods bound to it),
// and it boots again. It registers with the startup taint, so the mesh
// pod that belongs there (details, pinned to it) must stay unscheduled
// until the node's agent is ready and lifts the taint, and then start
// captured.
func reboot(ctx context.Context, t *testing.T, j *Journey, node string) {
	c := j.C
	n := c.Node(node)
	j.Title("reboot %s as a new node", node)
	// details comes back once the node is gone and the webhook answers
	// again: created while the API server cannot reach the webhook (its
	// replicas on the lost node), the pod would keep istio-init, which the
	// webhook's failurePolicy Ignore allows.
	if _, err := j.kubectl(ctx, "-n", captured, "scale", "deployment/details-v1", "--replicas=0"); err != nil {
		t.Fatal(err)
	}
	if err := n.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := j.kubectl(ctx, "delete", "node", node); err != nil {
		t.Fatal(err)
	}
	if _, err := j.kubectl(ctx, "delete", "pods", "-A", "--field-selector", "spec.nodeName="+node, "--force", "--grace-period=0"); err != nil {
		t.Fatal(err)
	}
	if err := j.WaitWebhook(ctx, captured, false); err != nil {
		t.Fatal(err)
	}
	if _, err := j.kubectl(ctx, "-n", captured, "scale", "deployment/details-v1", "--replicas=1"); err != nil {
		t.Fatal(err)
	}
	if err := n.Boot(ctx); err != nil {
		t.Fatal(err)
	}
	var taintSeen bool
	var early []string
	err := waitFor(ctx, "details scheduled on "+node+" and Ready", 3*time.Minute, func() error {
		// Pods first, then the taint: a pod bound to the node while the
		// taint is still there afterwards was bound while it was there
		// (the taint is only ever lifted here).
		pods, err := c.Kubectl(ctx, "-n", captured, "get", "pods", "-l", "app=details", "-o",
			`jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		if err != nil {
			return err
		}
		taints, err := c.Kubectl(ctx, "get", "node", node, "-o", "jsonpath={.spec.taints[*].key}")
		if err != nil {
			return fmt.Errorf("%s not registered yet: %w", node, err)
		}
		tainted := strings.Contains(taints, StartupTaint)
		taintSeen = taintSeen || tainted
		for _, line := range strings.Split(strings.TrimSpace(pods), "\n") {
			f := strings.Fields(line)
			if len(f) >= 2 && f[1] == node && tainted {
				early = append(early, f[0])
			}
			if len(f) == 3 && f[1] == node && f[2] == "True" && !tainted {
				return nil
			}
		}
		return fmt.Errorf("taints %q, details pods %q", taints, pods)
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, n.Logs(20))
	}
	if !taintSeen {
		t.Errorf("%s never showed the startup taint %s after it registered", node, StartupTaint)
	}
	if len(early) > 0 {
		t.Errorf("mesh pod(s) %v were scheduled on %s while it still carried the startup taint", early, node)
	}
	v, err := j.Inspect(ctx, captured, "details")
	if err != nil {
		t.Fatal(err)
	}
	checkCaptured(t, v)
}

// watchConflist reads n's conflist every 20 ms until the returned func is
// called, which says what was wrong the first time it was not a valid
// conflist with meshcni in it ("" if it always was).
func watchConflist(n *Node) func() string {
	stop := make(chan struct{})
	bad := make(chan string, 1)
	go func() {
		defer close(bad)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			b, err := readConflist(n)
			if err != nil {
				bad <- err.Error()
				return
			}
			if types, err := PluginTypes(b); err != nil || !slices.Contains(types, "meshcni") {
				bad <- fmt.Sprintf("plug-ins %v (%v):\n%s", types, err, b)
				return
			}
		}
	}()
	return func() string {
		close(stop)
		return <-bad
	}
}

// upgrade rolls the agents to a new image tag through the resource (the
// same image, retagged on each node): a rolling upgrade keeps the plug-in
// installed (the stopping agent sees its DaemonSet still there), so each
// node's conflist keeps meshcni throughout.
func upgrade(ctx context.Context, t *testing.T, j *Journey) {
	c := j.C
	const next = "ghcr.io/meshcni/meshcni-agent:0.1.1"
	for _, n := range c.Nodes {
		if _, err := n.Ctr(ctx, "images", "tag", "--force", "ghcr.io/meshcni/meshcni-agent:0.1.0", next); err != nil {
			t.Fatal(err)
		}
	}
	var done []func() string
	for _, n := range c.Nodes {
		done = append(done, watchConflist(n))
	}
	seen, err := whileRolling(ctx, t, j, func() ([]string, error) {
		return j.Change(ctx, `[{"op": "replace", "path": "/spec/image", "value": "`+next+`"}]`, "Updating", "Running")
	})
	for i, d := range done {
		if msg := d(); msg != "" {
			t.Errorf("%s's conflist during the upgrade: %s", c.Nodes[i].Name, msg)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kubectl get meshcni: %s", strings.Join(seen, " -> "))
	images, err := c.Kubectl(ctx, "-n", ReleaseNamespace, "get", "pods", "-l", AgentSelector, "-o", "jsonpath={.items[*].spec.containers[0].image}")
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(images); len(f) != len(c.Nodes) || slices.IndexFunc(f, func(s string) bool { return s != next }) >= 0 {
		t.Fatalf("agent images after the upgrade: %v, want %s on each node", f, next)
	}
}

// waitRolled waits until every agent pod has been replaced (old: before)
// and is ready, and checks that the roll went one node at a time (never
// fewer than all but one ready).
func waitRolled(ctx context.Context, t *testing.T, c *Cluster, old map[string][]string) error {
	t.Helper()
	minReady := len(c.Nodes)
	var seen []string
	err := waitFor(ctx, "every agent replaced and ready", 3*time.Minute, func() error {
		now, err := agentPods(ctx, c)
		if err != nil {
			return err
		}
		ready, replaced := 0, 0
		for node, p := range now {
			if len(p) >= 2 && p[1] == "true" {
				ready++
			}
			if len(p) >= 1 && len(old[node]) >= 1 && p[0] != old[node][0] {
				replaced++
			}
		}
		minReady = min(minReady, ready)
		if s := fmt.Sprintf("%d ready, %d replaced", ready, replaced); len(seen) == 0 || seen[len(seen)-1] != s {
			seen = append(seen, s)
		}
		if replaced < len(c.Nodes) || ready < len(c.Nodes) {
			return fmt.Errorf("%v", now)
		}
		return nil
	})
	t.Logf("agents during the roll: %s", strings.Join(seen, " -> "))
	if err != nil {
		return err
	}
	if minReady < len(c.Nodes)-1 {
		t.Errorf("at one point only %d of %d agents were ready: the roll did not go node by node", minReady, len(c.Nodes))
	}
	return nil
}
