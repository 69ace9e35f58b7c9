// Command demo (make demo) is the user's journey with meshcni on a real
// two-node Kubernetes cluster brought up on this machine (test/cluster):
// install, Istio-injected Bookinfo, the operator's checks, traffic across
// the nodes, a settings change, uninstall. Root only; everything it
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

	j.Title("1. Install meshcni, leaving the namespace bookinfo-legacy alone")
	j.Say("meshcnictl renders the chart and applies it; `status --wait` follows the agents from Updating to Running.")
	seen, err := j.Enable(ctx, "bookinfo-legacy")
	if err != nil {
		return err
	}
	j.Say("status went %s", strings.Join(seen, " -> "))

	j.Title("2. Deploy Istio-injected Bookinfo")
	j.Say("bookinfo: Istio's CNI-mode injection (istio-validation init container, no NET_ADMIN); meshcni captures it.")
	j.Say("productpage goes to node-a and details to node-b, so that their traffic crosses nodes.")
	if err := j.ApplyStockInjected(ctx, "bookinfo", cluster.Placement{"productpage-v1": "node-a", "details-v1": "node-b"}); err != nil {
		return err
	}
	j.Say("bookinfo-legacy: stock injection (istio-init with NET_ADMIN); meshcni leaves it alone.")
	if err := j.ApplyBookinfo(ctx, "bookinfo-legacy", "bookinfo-injected-default.yaml", nil); err != nil {
		return err
	}

	j.Title("3. Check productpage the way an operator does")
	pp, err := j.Inspect(ctx, "bookinfo", "productpage")
	if err != nil {
		return err
	}
	details, err := j.Inspect(ctx, "bookinfo", "details")
	if err != nil {
		return err
	}
	j.Say("In the excluded namespace the pods program their own rules (istio-init runs meshcni-iptables):")
	out, err := c.Kubectl(ctx, "-n", "bookinfo-legacy", "get", "pods", "-o", "custom-columns=POD:.metadata.name,NODE:.spec.nodeName,INIT:.spec.initContainers[*].name")
	if err != nil {
		return err
	}
	fmt.Print(out)
	j.Say("init containers: bookinfo %v (meshcni programmed the rules before it ran), bookinfo-legacy istio-init", pp.InitContainers)

	j.Title("4. Real traffic: productpage (%s) -> details (%s)", pp.Node, details.Node)
	ip, err := j.ServiceIP(ctx, "bookinfo", "details")
	if err != nil {
		return err
	}
	j.Say("Each hop answers: productpage's sidecar on 15001 with the original destination, then details' sidecar on 15006, then the app.")
	if _, err := j.Ask(ctx, "bookinfo", "productpage-v1", "productpage", ip+":9080"); err != nil {
		return err
	}

	j.Title("5. Change a setting: exclude one more namespace; the agents roll node by node")
	args := append([]string{"enable", "--exclude-namespaces", "bookinfo-legacy,batch"}, j.InstallFlags()...)
	if _, err := j.Meshcnictl(ctx, args...); err != nil {
		return err
	}
	if _, err := j.Meshcnictl(ctx, "status", "--wait", "--timeout", "3m"); err != nil {
		return err
	}

	j.Title("6. Uninstall")
	if _, err := j.Meshcnictl(ctx, "disable", "--wait", "--timeout", "2m"); err != nil {
		return err
	}
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
			j.Say("%s still carries %s (known: the agent puts its startup taint back on uninstall)", node, ts[i])
		}
	}
	var pods []map[string]any
	for _, n := range c.Nodes {
		pods = append(pods, cluster.PlainPod("default", "after-uninstall-"+n.Name, n.Name))
	}
	if err := c.CreateAllAndWait(ctx, pods, 30*time.Second); err != nil {
		j.Say("new pods (one per node) do not start: %v", firstLine(err))
	} else {
		j.Say("new pods, one per node, scheduled and started")
	}
	return nil
}

func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}
