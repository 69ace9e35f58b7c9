// Command plugin (make demo-plugin) runs the plug-in alone on a simulated
// node: a real kube-apiserver, the Bookinfo pods, the node's CNI chain
// (Debian's bridge + host-local, then meshcni) run for each pod from
// inside a node network namespace, and a look into productpage's netns the
// way an operator would. Root only; everything it creates lives in
// namespaces it removes on exit. make demo is the whole journey on a real
// cluster (test/cluster).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

func step(format string, a ...any) { fmt.Printf("\n==> "+format+"\n", a...) }

func run(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("run as root: the demo creates network namespaces")
	}
	dir, err := os.MkdirTemp("", "meshcni-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step("building the meshcni plug-in")
	bin, err := testbed.BuildPlugin(dir)
	if err != nil {
		return err
	}

	step("starting kube-apiserver and etcd on 127.0.0.1")
	start := time.Now()
	cluster, err := kubeharness.Start(ctx, kubeharness.Options{})
	if err != nil {
		return err
	}
	defer cluster.Stop()
	fmt.Printf("    ready at %s in %v\n", cluster.URL, time.Since(start).Round(time.Millisecond))
	kubeconfig, _, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni",
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}, time.Hour)
	if err != nil {
		return err
	}

	step("creating a node network namespace with the CNI chain bridge -> meshcni")
	logFile := filepath.Join(dir, "meshcni.log")
	node, err := testbed.NewNode(testbed.Options{
		PluginBinary: bin,
		PluginConf: map[string]any{"type": "meshcni", "kubeconfig": kubeconfig, "log_file": logFile,
			"exclude_namespaces": []string{"kube-system", "istio-system"}},
		ForwardPorts: []int{cluster.Port},
	})
	if err != nil {
		return err
	}
	defer node.Close()
	conf, _ := os.ReadFile(node.ConflistPath())
	fmt.Printf("    %s:\n%s\n", node.ConflistPath(), indent(string(conf)))

	step("creating pods in the API, then running the chain for each, as kubelet and containerd would")
	pods := map[string]*testbed.Pod{}
	var specs []*corev1.Pod
	for _, b := range testbed.Bookinfo {
		specs = append(specs, testbed.MeshPod("bookinfo", b.Name, b.Port))
	}
	dns := kubeharness.NewPod("kube-system", "coredns", testbed.NodeName)
	optOut := testbed.MeshPod("bookinfo", "batch-job", 8080)
	optOut.Annotations["sidecar.istio.io/inject"] = "false"
	specs = append(specs, dns, optOut)
	for _, spec := range specs {
		created, err := cluster.CreatePod(ctx, spec)
		if err != nil {
			return err
		}
		p, err := node.AddPod(ctx, created.Namespace, created.Name, string(created.UID))
		if err != nil {
			return fmt.Errorf("pod %s/%s: %w", spec.Namespace, spec.Name, err)
		}
		pods[spec.Name] = p
	}
	if err := printDecisions(logFile, pods); err != nil {
		return err
	}

	pp, ratings := pods["productpage"], pods["ratings"]
	step("productpage's NAT table, read from inside its netns as an operator would")
	cmd := []string{"nsenter", "--net=" + pp.NS.Path(), "iptables", "-L", "-t", "nat", "-n", "-v", "--line-numbers", "-x"}
	fmt.Println("    $ " + strings.Join(cmd, " "))
	out, err := exec.CommandContext(ctx, cmd[0], cmd[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w", out, err)
	}
	fmt.Println(indent(string(out)))

	step("one connection: productpage's app calls ratings:9080")
	rec := testbed.NewRecorder()
	defer rec.Close()
	if err := rec.Serve(pp.NS, "sidecar:15001", ":15001"); err != nil {
		return err
	}
	target := fmt.Sprintf("%s:9080", ratings.IP(false))
	answer, err := testbed.Ask(pp.NS, target)
	if err != nil {
		return err
	}
	a := <-rec.Arrivals
	fmt.Printf("    app dialed %s; it arrived at productpage's %s, original destination %s\n", target, a.Listener, a.Original)
	if !strings.HasPrefix(answer, "sidecar:15001 "+target) {
		return fmt.Errorf("connection was not redirected: %q", answer)
	}
	step("done; removing pods, the node namespace and the API server")
	return nil
}

// printDecisions shows the plug-in's one line per ADD.
func printDecisions(logFile string, pods map[string]*testbed.Pod) error {
	f, err := os.Open(logFile)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Printf("    %-26s %-9s %-10s %s\n", "POD", "DECISION", "DURATION", "REASON")
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec["msg"] != "ADD" {
			continue
		}
		fmt.Printf("    %-26v %-9v %-10v %v\n", rec["pod"], rec["decision"], rec["duration"], rec["reason"])
	}
	return sc.Err()
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}
