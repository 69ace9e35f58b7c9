package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Journey is what a user does with meshcni on the cluster, step by step:
// the demo prints it, the test asserts on what each step returns. Every
// step shows the commands it runs and what they print, as an operator
// would see them.
type Journey struct {
	C   *Cluster
	Out io.Writer
}

// Title prints a step's title.
func (j *Journey) Title(format string, args ...any) {
	fmt.Fprintf(j.Out, "\n=== "+format+"\n", args...)
}

// Say prints an explanation.
func (j *Journey) Say(format string, args ...any) {
	fmt.Fprintf(j.Out, "    "+format+"\n", args...)
}

func (j *Journey) show(cmd, out string) {
	fmt.Fprintf(j.Out, "$ %s\n", cmd)
	if out = strings.TrimRight(out, "\n"); out != "" {
		fmt.Fprintln(j.Out, out)
	}
}

// kubectl runs and shows a kubectl command.
func (j *Journey) kubectl(ctx context.Context, args ...string) (string, error) {
	out, err := j.C.Kubectl(ctx, args...)
	j.show("kubectl "+strings.Join(args, " "), out)
	return out, err
}

// Meshcnictl runs and shows a meshcnictl command (its progress lines
// included).
func (j *Journey) Meshcnictl(ctx context.Context, args ...string) (string, error) {
	out, err := j.C.MeshcnictlCombined(ctx, args...)
	j.show("meshcnictl "+strings.Join(args, " "), out)
	return out, err
}

// InstallFlags are the flags meshcnictl enable gets here besides the
// excluded namespaces: the node dirs this cluster's nodes use.
func (j *Journey) InstallFlags() []string {
	c := j.C
	return []string{"--set", "cniBinDir=" + c.CNIBinDir, "--set", "cniConfDir=" + c.CNIConfDir, "--set", "runDir=" + c.RunDir}
}

// Enable installs meshcni excluding the given namespaces and waits for
// Running; it returns the states meshcnictl status went through.
func (j *Journey) Enable(ctx context.Context, exclude ...string) ([]string, error) {
	args := append([]string{"enable", "--exclude-namespaces", strings.Join(exclude, ",")}, j.InstallFlags()...)
	if _, err := j.Meshcnictl(ctx, args...); err != nil {
		return nil, err
	}
	out, err := j.Meshcnictl(ctx, "status", "--wait", "--timeout", "2m")
	return states(out), err
}

// states lists the states a status --wait run printed, in order.
func states(out string) []string {
	var seen []string
	for _, line := range strings.Split(out, "\n") {
		for _, s := range []string{"NotInstalled", "Updating", "Degraded", "Running"} {
			if strings.HasPrefix(line, s+":") || strings.HasPrefix(line, "Status: "+s) || strings.HasPrefix(line, "State: "+s) {
				if len(seen) == 0 || seen[len(seen)-1] != s {
					seen = append(seen, s)
				}
			}
		}
	}
	return seen
}

// Placement pins two Bookinfo services to two nodes, so that the traffic
// between them crosses nodes.
type Placement map[string]string // Deployment → node

// ApplyBookinfo applies a Bookinfo fixture (testdata) to namespace ns, as
// kubectl apply -f, and waits for every Deployment to be available. The
// proxy image is retagged (see ProxyImage) and the Deployments in place
// get a nodeSelector; nothing else changes.
func (j *Journey) ApplyBookinfo(ctx context.Context, ns, fixture string, place Placement) error {
	src, err := os.ReadFile(filepath.Join(j.C.moduleDir, "test", "cluster", "testdata", fixture))
	if err != nil {
		return err
	}
	manifest, err := prepare(src, place)
	if err != nil {
		return fmt.Errorf("%s: %w", fixture, err)
	}
	if _, err := j.kubectl(ctx, "create", "namespace", ns); err != nil {
		return err
	}
	// istiod publishes its root certificate into every namespace; the
	// injected pods mount it.
	if _, err := j.kubectl(ctx, "-n", ns, "create", "configmap", "istio-ca-root-cert", "--from-file=root-cert.pem="+j.C.pki.path("ca.crt")); err != nil {
		return err
	}
	j.Say("(%s, with the proxy image tagged %q and %s)", fixture, ProxyImage, place)
	out, err := j.C.KubectlIn(ctx, manifest, "apply", "-n", ns, "-f", "-")
	j.show("kubectl apply -n "+ns+" -f "+fixture, out)
	if err != nil {
		return err
	}
	_, err = j.kubectl(ctx, "-n", ns, "wait", "deployment", "--all", "--for=condition=Available", "--timeout=180s")
	if err != nil {
		pods, _ := j.C.Kubectl(ctx, "-n", ns, "get", "pods", "-o", "wide")
		events, _ := j.C.Kubectl(ctx, "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
		return fmt.Errorf("%w\npods:\n%s\nevents:\n%s", err, pods, events)
	}
	_, err = j.kubectl(ctx, "-n", ns, "get", "pods", "-o", "wide")
	return err
}

// prepare rewrites the fixture's documents: the proxy image's tag, and
// a nodeSelector for the placed Deployments.
func prepare(src []byte, place Placement) ([]byte, error) {
	var out bytes.Buffer
	placed := map[string]bool{}
	for _, doc := range strings.Split(string(src), "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			return nil, err
		}
		if obj == nil {
			continue
		}
		meta, _ := obj["metadata"].(map[string]any)
		name, _ := meta["name"].(string)
		if node, ok := place[name]; ok && obj["kind"] == "Deployment" {
			spec, _ := obj["spec"].(map[string]any)
			tmpl, _ := spec["template"].(map[string]any)
			podSpec, _ := tmpl["spec"].(map[string]any)
			if podSpec == nil {
				return nil, fmt.Errorf("deployment %s has no pod template", name)
			}
			podSpec["nodeSelector"] = map[string]any{"kubernetes.io/hostname": node}
			placed[name] = true
		}
		b, err := yaml.Marshal(obj)
		if err != nil {
			return nil, err
		}
		out.WriteString("---\n")
		out.Write(bytes.ReplaceAll(b, []byte("registry.istio.io/testing/proxyv2:latest"), []byte(ProxyImage)))
	}
	for name := range place {
		if !placed[name] {
			return nil, fmt.Errorf("no Deployment %s to place", name)
		}
	}
	return out.Bytes(), nil
}

// ApplyStockInjected is where the stock-injected Bookinfo goes into the
// captured namespace once meshcni's injection webhook exists (issue
// "Works with an unchanged Istio"): stock pods there lose istio-init.
// Until then the captured namespace gets Istio's CNI-mode injection.
func (j *Journey) ApplyStockInjected(ctx context.Context, ns string, place Placement) error {
	return j.ApplyBookinfo(ctx, ns, "bookinfo-injected-cni.yaml", place)
}

// PodView is what an operator reads about one pod.
type PodView struct {
	Name, Node, IP  string
	ProxyID         string // istio-proxy's container ID
	PID             string // its process, from crictl inspect
	InitContainers  []string
	NAT             string // iptables -L -t nat of its netns
	Verify          string // meshcnictl verify
	VerifyErr       error
	InspectDuration time.Duration
}

// Inspect reads app's pod in ns exactly as an operator would: kubectl for
// the istio-proxy container ID and the node, crictl inspect on that node
// for the PID, nsenter into its netns for the NAT table; then meshcnictl
// verify on that node.
func (j *Journey) Inspect(ctx context.Context, ns, app string) (PodView, error) {
	var v PodView
	out, err := j.kubectl(ctx, "-n", ns, "get", "pod", "-l", "app="+app, "-o",
		`jsonpath={.items[0].metadata.name} {.items[0].spec.nodeName} {.items[0].status.podIP} {.items[0].status.containerStatuses[?(@.name=="istio-proxy")].containerID} {.items[0].spec.initContainers[*].name}`)
	if err != nil {
		return v, err
	}
	f := strings.Fields(out)
	if len(f) < 4 {
		return v, fmt.Errorf("kubectl printed %q", out)
	}
	v.Name, v.Node, v.IP, v.ProxyID, v.InitContainers = f[0], f[1], f[2], strings.TrimPrefix(f[3], "containerd://"), f[4:]
	n := j.C.Node(v.Node)
	if n == nil {
		return v, fmt.Errorf("pod %s is on node %q, not one of the cluster's", v.Name, v.Node)
	}
	j.Say("on %s:", v.Node)
	if v.PID, err = n.Crictl(ctx, "inspect", "-o", "go-template", "--template", "{{.info.pid}}", v.ProxyID); err != nil {
		return v, err
	}
	v.PID = strings.TrimSpace(v.PID)
	j.show("crictl inspect -o go-template --template '{{.info.pid}}' "+short(v.ProxyID), v.PID)
	if v.NAT, err = run(ctx, nil, "nsenter", "-t", v.PID, "-n", "iptables", "-L", "-t", "nat", "-n", "-v", "--line-numbers", "-x"); err != nil {
		return v, err
	}
	j.show("nsenter -t "+v.PID+" -n iptables -L -t nat -n -v --line-numbers -x", v.NAT)
	v.Verify, v.VerifyErr = n.Exec(ctx, j.C.Tool("meshcnictl"), "--kubeconfig", j.C.Admin, "verify", v.Name, "-n", ns,
		"--runtime-endpoint", "unix://"+n.Sock, "--cni-conf-dir", j.C.CNIConfDir)
	j.show("meshcnictl verify "+v.Name+" -n "+ns, v.Verify+errText(v.VerifyErr))
	return v, nil
}

func short(id string) string {
	if len(id) > 13 {
		return id[:13]
	}
	return id
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return "\n" + err.Error()
}

// Ask runs `standin ask ADDR` in the from Deployment's app container and
// returns the answer: each hop that answered, as "|"-separated parts.
func (j *Journey) Ask(ctx context.Context, ns, from, container, addr string) (string, error) {
	out, err := j.kubectl(ctx, "-n", ns, "exec", "deploy/"+from, "-c", container, "--", "/standin", "ask", addr)
	return strings.TrimSpace(out), err
}

// ServiceIP returns a Service's ClusterIP.
func (j *Journey) ServiceIP(ctx context.Context, ns, svc string) (string, error) {
	out, err := j.kubectl(ctx, "-n", ns, "get", "service", svc, "-o", "jsonpath={.spec.clusterIP}")
	return strings.TrimSpace(out), err
}

// Conflists returns each node's primary conflist, as the node sees it.
func (j *Journey) Conflists() (map[string][]byte, error) {
	m := map[string][]byte{}
	for _, n := range j.C.Nodes {
		b, err := os.ReadFile(n.path("cni", "net.d", j.C.Conflist))
		if err != nil {
			return nil, err
		}
		m[n.Name] = b
	}
	return m, nil
}

// PluginTypes lists the types of a conflist's plug-ins, in order.
func PluginTypes(conflist []byte) ([]string, error) {
	var l struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(conflist, &l); err != nil {
		return nil, err
	}
	var types []string
	for _, p := range l.Plugins {
		types = append(types, p.Type)
	}
	return types, nil
}

// Leftovers lists, per node, what meshcni left in the node's CNI bin dir
// and run dir.
func (j *Journey) Leftovers() []string {
	var left []string
	for _, n := range j.C.Nodes {
		for _, f := range []string{"cni/bin/meshcni", "cni/bin/meshcni-lookup", "run-meshcni/kubeconfig"} {
			if _, err := os.Stat(n.path(f)); err == nil {
				left = append(left, n.Name+": "+f)
			}
		}
	}
	sort.Strings(left)
	return left
}

// Taints returns each node's taints as "key:effect".
func (j *Journey) Taints(ctx context.Context) (map[string][]string, error) {
	out, err := j.kubectl(ctx, "get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name}{range .spec.taints[*]} {.key}:{.effect}{end}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 {
			m[f[0]] = f[1:]
		}
	}
	return m, nil
}
