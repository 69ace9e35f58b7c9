// Command demo (make demo) is the user's journey with meshcni on a real
// two-node Kubernetes cluster brought up on this machine (test/cluster):
// install from the chart and a MeshCNI resource, Bookinfo as a stock
// Istio injects it, the operator's checks, traffic across the nodes, a
// settings change, uninstall. Root only; everything it
// creates lives in namespaces it removes on exit, even on failure.
// make e2e-cluster runs the same journey as assertions.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/meshcni/meshcni/test/cluster"
)

func main() {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: run as root (it creates network namespaces, cgroups and a private mount namespace per node)")
		os.Exit(1)
	}
	for _, s := range cluster.SweepStale() {
		fmt.Println("swept:", s)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "\ndemo failed:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) (err error) {
	root, err := filepath.Abs(".")
	if err != nil {
		return err
	}
	cache := os.Getenv("MESHCNI_CACHE")
	if cache == "" {
		cache = "/var/cache/meshcni"
	}
	t0 := time.Now()
	fmt.Println("=== A two-node Kubernetes cluster on this machine, in network namespaces of its own")
	c, err := cluster.Start(ctx, cluster.Options{
		KubeBinDir: filepath.Join(cache, "bin"), Crictl: filepath.Join(cache, "bin", "crictl"),
		AgentImage: filepath.Join(root, "dist", "meshcni-agent.oci.tar"), ModuleDir: root, Log: os.Stdout,
	}, "node-a", "node-b")
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\n=== Tear the cluster down (every process by PID; no netns, mount, cgroup or file left)")
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		} else {
			fmt.Println("    done; the whole demo took", time.Since(t0).Round(time.Second))
		}
	}()
	fmt.Printf("    up in %s\n", time.Since(t0).Round(100*time.Millisecond))
	j := &cluster.Journey{C: c, Out: os.Stdout}
	before, err := j.Conflists()
	if err != nil {
		return err
	}
	var step time.Time
	took := func() { j.Say("(%s)", time.Since(step).Round(100*time.Millisecond)) }

	step = time.Now()
	j.Title("1. Install meshcni as the chart installs it, then ask for the agents with a MeshCNI resource")
	j.Say("The chart with its default values holds the MeshCNI CRD, meshcni-controller and the injection webhook; no agent.")
	j.Say("The MeshCNI \"default\" says what the cluster wants: enabled, and bookinfo-legacy left alone.")
	j.Say("The controller installs an agent on every node; `kubectl get meshcni` shows the rollout: Updating, then Running.")
	seen, err := j.Install(ctx, "kube-system", "istio-system", "bookinfo-legacy")
	if err != nil {
		return err
	}
	j.Say("the MeshCNI went %s", strings.Join(seen, " -> "))
	took()

	step = time.Now()
	j.Title("2. Deploy Bookinfo exactly as a stock Istio injects it (istio-init with NET_ADMIN)")
	j.Say("bookinfo is captured: meshcni's webhook turns istio-init into Istio's CNI-mode istio-validation")
	j.Say("(no NET_ADMIN), and the plug-in programs the rules before the pod's containers start.")
	j.Say("productpage goes to node-a and details to node-b, so that their traffic crosses nodes.")
	if err := j.Namespace(ctx, "bookinfo"); err != nil {
		return err
	}
	if err := j.WaitWebhook(ctx, "bookinfo", false); err != nil {
		return err
	}
	if err := j.ApplyBookinfo(ctx, "bookinfo", cluster.Placement{"productpage-v1": "node-a", "details-v1": "node-b"}); err != nil {
		return err
	}
	j.Say("bookinfo-legacy is excluded: the webhook leaves istio-init there, and it programs its own rules.")
	if err := j.Namespace(ctx, "bookinfo-legacy"); err != nil {
		return err
	}
	if err := j.WaitWebhook(ctx, "bookinfo-legacy", true); err != nil {
		return err
	}
	if err := j.ApplyBookinfo(ctx, "bookinfo-legacy", nil); err != nil {
		return err
	}
	for _, ns := range []string{"bookinfo", "bookinfo-legacy"} {
		if err := showInits(ctx, c, ns); err != nil {
			return err
		}
	}
	took()

	step = time.Now()
	j.Title("3. Check productpage and details the way an operator does")
	pp, err := j.Inspect(ctx, "bookinfo", "productpage")
	if err != nil {
		return err
	}
	details, err := j.Inspect(ctx, "bookinfo", "details")
	if err != nil {
		return err
	}
	j.Say("In the excluded namespace the rules are istio-init's own:")
	if v, err := j.Inspect(ctx, "bookinfo-legacy", "productpage"); err != nil {
		return err
	} else if v.VerifyErr != nil {
		j.Say("(known: verify does not yet accept meshcni-iptables' own tables in an istio-init pod; docs/e2e.md, \"Found by this suite\")")
	}
	took()

	step = time.Now()
	j.Title("4. Real traffic: productpage (%s) -> details (%s)", pp.Node, details.Node)
	ip, err := j.ServiceIP(ctx, "bookinfo", "details")
	if err != nil {
		return err
	}
	j.Say("Each hop answers: productpage's sidecar on 15001 with the original destination, then details' sidecar on 15006, then the app.")
	if _, err := j.Ask(ctx, "bookinfo", "productpage-v1", "productpage", ip+":9080"); err != nil {
		return err
	}
	took()

	step = time.Now()
	j.Title("5. Change a setting through the resource: exclude the namespace batch too")
	j.Say("The agents roll node by node (Updating, then Running); the webhook follows the resource at once.")
	seen, err = j.Change(ctx, `[{"op": "add", "path": "/spec/excludeNamespaces/-", "value": "batch"}]`, "Updating", "Running")
	if err != nil {
		return err
	}
	j.Say("the MeshCNI went %s", strings.Join(seen, " -> "))
	if err := j.Namespace(ctx, "batch"); err != nil {
		return err
	}
	j.Say("A stock-injected pod in batch now keeps istio-init (a server-side dry run: nothing is created):")
	if err := j.WaitWebhook(ctx, "batch", true); err != nil {
		// Not the end of the demo: what follows does not depend on it.
		j.Say("the webhook did not follow the resource: %v", firstLine(err))
	}
	took()

	step = time.Now()
	j.Title("6. Uninstall: enabled: false")
	j.Say("The controller removes the agents (each takes meshcni out of its node's conflist) and every node's startup taint.")
	seen, err = j.Change(ctx, `[{"op": "replace", "path": "/spec/enabled", "value": false}]`, "Disabled")
	if err != nil {
		return err
	}
	j.Say("the MeshCNI went %s", strings.Join(seen, " -> "))
	after, err := j.Conflists()
	if err != nil {
		return err
	}
	for _, n := range c.Nodes {
		types, _ := cluster.PluginTypes(after[n.Name])
		same := string(after[n.Name]) == string(before[n.Name])
		j.Say("%s: conflist %v, byte for byte as before the install: %v", n.Name, types, same)
	}
	if left := j.Leftovers(); len(left) > 0 {
		j.Say("left on the nodes: %v", left)
	} else {
		j.Say("no meshcni binary or kubeconfig left on any node")
	}
	taints, err := j.Taints(ctx)
	if err != nil {
		return err
	}
	for node, ts := range taints {
		if i := slices.IndexFunc(ts, func(s string) bool { return strings.HasPrefix(s, "meshcni.io/") }); i >= 0 {
			j.Say("%s still carries %s", node, ts[i])
		}
	}
	var pods []map[string]any
	for _, n := range c.Nodes {
		pods = append(pods, cluster.PlainPod("default", "after-uninstall-"+n.Name, n.Name))
	}
	if err := c.CreateAllAndWait(ctx, pods, 60*time.Second); err != nil {
		j.Say("new pods (one per node) do not start: %v", firstLine(err))
	} else {
		j.Say("no meshcni taint on any node; new pods, one per node, scheduled and started")
	}
	took()
	return nil
}

// showInits prints each pod's init containers and added capabilities.
func showInits(ctx context.Context, c *cluster.Cluster, ns string) error {
	args := []string{"-n", ns, "get", "pods", "-o", "custom-columns=POD:.metadata.name,NODE:.spec.nodeName,INIT:.spec.initContainers[*].name,CAPS:.spec.initContainers[*].securityContext.capabilities.add"}
	out, err := c.Kubectl(ctx, args...)
	fmt.Printf("$ kubectl %s\n%s", strings.Join(args, " "), out)
	return err
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
