package cluster

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
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

// ReleaseNamespace is where the controller release goes, as the chart's
// instructions install it (helm install -n meshcni-system).
const ReleaseNamespace = "meshcni-system"

// AgentSelector selects the agent pods (the chart's DaemonSet selector).
const AgentSelector = "app.kubernetes.io/name=meshcni,app.kubernetes.io/component=agent"

// InstallController installs meshcni as a user of the chart does without
// Helm: the release namespace with the privileged Pod Security level (the
// agents need hostPath, hostNetwork, NET_ADMIN), then the chart rendered
// with its default values (`meshcnictl render`, byte for byte `helm
// template --include-crds`: the MeshCNI CRD, the controller, the
// injection webhook; no agents) applied server-side; then it waits for the
// CRD to be established. Nothing runs on the nodes yet.
func (j *Journey) InstallController(ctx context.Context) error {
	if _, err := j.kubectl(ctx, "create", "namespace", ReleaseNamespace); err != nil {
		return err
	}
	if _, err := j.kubectl(ctx, "label", "namespace", ReleaseNamespace, "pod-security.kubernetes.io/enforce=privileged"); err != nil {
		return err
	}
	manifest, err := run(ctx, nil, j.C.Tool("meshcnictl"), "render", "-n", ReleaseNamespace)
	if err != nil {
		return err
	}
	out, err := j.C.KubectlIn(ctx, []byte(manifest), "apply", "--server-side", "-f", "-")
	j.show("meshcnictl render -n "+ReleaseNamespace+" | kubectl apply --server-side -f -", out)
	if err != nil {
		return err
	}
	_, err = j.kubectl(ctx, "wait", "--for=condition=Established", "crd/meshcnis.meshcni.io", "--timeout=60s")
	return err
}

// ApplyMeshCNI applies the MeshCNI resource "default", enabled, with the
// given excluded namespaces, as kubectl apply -f.
func (j *Journey) ApplyMeshCNI(ctx context.Context, exclude ...string) error {
	quoted := make([]string, len(exclude))
	for i, ns := range exclude {
		quoted[i] = strconv.Quote(ns)
	}
	doc := "apiVersion: meshcni.io/v1alpha1\nkind: MeshCNI\nmetadata:\n  name: default\nspec:\n  enabled: true\n" +
		"  excludeNamespaces: [" + strings.Join(quoted, ", ") + "]\n"
	j.show("cat meshcni.yaml", doc)
	out, err := j.C.KubectlIn(ctx, []byte(doc), "apply", "-f", "-")
	j.show("kubectl apply -f meshcni.yaml", out)
	return err
}

// PatchMeshCNI changes the resource with a JSON patch, as kubectl patch.
func (j *Journey) PatchMeshCNI(ctx context.Context, patch string) error {
	_, err := j.kubectl(ctx, "patch", "meshcni", "default", "--type=json", "-p", patch)
	return err
}

// Phases follows `kubectl get meshcni --watch` (the resource's printer
// columns: ENABLED, EXCLUDED, STATUS, READY NODES), printing each row that
// changes. A watch, not a poll: no phase the controller writes is missed.
type Phases struct {
	j      *Journey
	rows   chan string
	cancel context.CancelFunc
	done   chan error
	last   string
	seen   []string // phases, each change once
}

// WatchMeshCNI starts following the resource; Close ends it.
func (j *Journey) WatchMeshCNI(ctx context.Context) (*Phases, error) {
	ctx, cancel := context.WithCancel(ctx)
	argv := j.C.inLan(filepath.Join(j.C.bin, "kubectl"), "--kubeconfig", j.C.Admin, "get", "meshcni", "--watch")
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, err
	}
	j.show("kubectl get meshcni --watch &   # its rows below, as they change", "")
	p := &Phases{j: j, rows: make(chan string, 64), cancel: cancel, done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.rows <- sc.Text()
		}
		close(p.rows)
		err := cmd.Wait()
		if ctx.Err() == nil {
			err = fmt.Errorf("kubectl get meshcni --watch ended: %v %s", err, stderr.String())
		}
		p.done <- err
	}()
	return p, nil
}

// Close stops the watch.
func (p *Phases) Close() {
	p.cancel()
	for range p.rows {
	}
}

// meshcniPhases are the values of the STATUS column.
var meshcniPhases = []string{"Updating", "Running", "Degraded", "Disabled"}

// Await reads rows until the phases seen since the watch began contain
// want in order (other phases may come between), or timeout. It returns
// every phase seen, in order.
func (p *Phases) Await(ctx context.Context, timeout time.Duration, want ...string) ([]string, error) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		if isSubsequence(want, p.seen) {
			return p.seen, nil
		}
		select {
		case row, ok := <-p.rows:
			if !ok {
				return p.seen, <-p.done
			}
			// Each event repeats the row; AGE (the last column) alone
			// changing is no change.
			f := strings.Fields(row)
			if key := strings.Join(f[:max(len(f)-1, 0)], " "); key != p.last {
				p.last = key
				fmt.Fprintln(p.j.Out, row)
			}
			for _, phase := range meshcniPhases {
				if slices.Contains(f, phase) && (len(p.seen) == 0 || p.seen[len(p.seen)-1] != phase) {
					p.seen = append(p.seen, phase)
				}
			}
		case <-timer.C:
			return p.seen, fmt.Errorf("timed out after %v waiting for the MeshCNI to go %s; it went %v (last row %q)",
				timeout, strings.Join(want, " -> "), p.seen, p.last)
		case <-ctx.Done():
			return p.seen, ctx.Err()
		}
	}
}

// isSubsequence says whether want appears in seen in order.
func isSubsequence(want, seen []string) bool {
	i := 0
	for _, s := range seen {
		if i < len(want) && s == want[i] {
			i++
		}
	}
	return i == len(want)
}

// Observed checks that the controller has acted on the resource's latest
// generation (status.observedGeneration == metadata.generation) and
// returns its phase.
func (j *Journey) Observed(ctx context.Context) (string, error) {
	out, err := j.C.Kubectl(ctx, "get", "meshcni", "default", "-o", "jsonpath={.metadata.generation} {.status.observedGeneration} {.status.phase}")
	if err != nil {
		return "", err
	}
	f := strings.Fields(out)
	if len(f) != 3 || f[0] != f[1] {
		return "", fmt.Errorf("MeshCNI generation, observedGeneration, phase: %q: the status is not about the latest spec", out)
	}
	return f[2], nil
}

// ReleaseAvailable waits until every Deployment of the release is
// Available, whichever Deployments the chart renders.
func (j *Journey) ReleaseAvailable(ctx context.Context) error {
	_, err := j.kubectl(ctx, "-n", ReleaseNamespace, "wait", "deployment", "--all", "--for=condition=Available", "--timeout=120s")
	if err != nil {
		pods, _ := j.C.Kubectl(ctx, "-n", ReleaseNamespace, "get", "pods", "-o", "wide")
		return fmt.Errorf("%w\n%s", err, pods)
	}
	return nil
}

// Agents shows the agent pods and returns them (node → "name ready
// restarts containerID").
func (j *Journey) Agents(ctx context.Context) (map[string][]string, error) {
	if _, err := j.kubectl(ctx, "-n", ReleaseNamespace, "get", "pods", "-l", AgentSelector, "-o", "wide"); err != nil {
		return nil, err
	}
	return agentPods(ctx, j.C)
}

// agentPods returns node → "pod-name ready restartCount containerID" of
// the meshcni agents.
func agentPods(ctx context.Context, c *Cluster) (map[string][]string, error) {
	out, err := c.Kubectl(ctx, "-n", ReleaseNamespace, "get", "pods", "-l", AgentSelector, "-o",
		`jsonpath={range .items[*]}{.spec.nodeName} {.metadata.name} {.status.containerStatuses[0].ready} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].containerID}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	m := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 1 {
			m[f[0]] = f[1:]
		}
	}
	return m, nil
}

// ReleasePods returns "name restarts" of every pod of the release that is
// not an agent (the controller and the webhook, however the chart splits
// them), to show that a settings change restarts none of them.
func (j *Journey) ReleasePods(ctx context.Context) ([]string, error) {
	out, err := j.C.Kubectl(ctx, "-n", ReleaseNamespace, "get", "pods", "-l", "app.kubernetes.io/component!=agent", "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.status.containerStatuses[*].restartCount}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	pods := strings.Split(strings.TrimSpace(out), "\n")
	sort.Strings(pods)
	return pods, nil
}

// Placement pins two Bookinfo services to two nodes, so that the traffic
// between them crosses nodes.
type Placement map[string]string // Deployment → node

// StockFixture is Istio's stock injection output for Bookinfo
// (testdata/README.md): istio-init with NET_ADMIN and NET_RAW.
const StockFixture = "bookinfo-injected-default.yaml"

// ApplyBookinfo applies Istio's stock-injected Bookinfo (StockFixture) to
// namespace ns (made with Namespace), as kubectl apply -f, and waits for every Deployment to be
// available. The proxy image is retagged (see ProxyImage) and the
// Deployments in place get a nodeSelector; only the objects named in only
// are applied, when it is not empty; nothing else changes. The webhook
// decides what each pod becomes.
func (j *Journey) ApplyBookinfo(ctx context.Context, ns string, place Placement, only ...string) error {
	manifest, err := j.fixture(place, only)
	if err != nil {
		return err
	}
	what := "all of it"
	if len(only) > 0 {
		what = strings.Join(only, ", ")
	}
	j.Say("(%s: %s, with the proxy image tagged %q and %s)", StockFixture, what, ProxyImage, place)
	out, err := j.C.KubectlIn(ctx, manifest, "apply", "-n", ns, "-f", "-")
	j.show("kubectl apply -n "+ns+" -f "+StockFixture, out)
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

// Namespace creates ns with what istiod would have put there: its root
// certificate, which the injected pods mount.
func (j *Journey) Namespace(ctx context.Context, ns string) error {
	if _, err := j.kubectl(ctx, "create", "namespace", ns); err != nil {
		return err
	}
	_, err := j.kubectl(ctx, "-n", ns, "create", "configmap", "istio-ca-root-cert", "--from-file=root-cert.pem="+j.C.pki.path("ca.crt"))
	return err
}

func (j *Journey) fixture(place Placement, only []string) ([]byte, error) {
	src, err := os.ReadFile(filepath.Join(j.C.moduleDir, "test", "cluster", "testdata", StockFixture))
	if err != nil {
		return nil, err
	}
	manifest, err := prepare(src, place, only)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", StockFixture, err)
	}
	return manifest, nil
}

// prepare rewrites the fixture's documents: the proxy image's tag, and
// a nodeSelector for the placed Deployments; it keeps only the objects
// named in only, if any.
func prepare(src []byte, place Placement, only []string) ([]byte, error) {
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
		if len(only) > 0 && !slices.Contains(only, name) {
			continue
		}
		if node, ok := place[name]; ok && obj["kind"] == "Deployment" {
			podSpec := podTemplateSpec(obj)
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

func podTemplateSpec(deployment map[string]any) map[string]any {
	spec, _ := deployment["spec"].(map[string]any)
	tmpl, _ := spec["template"].(map[string]any)
	podSpec, _ := tmpl["spec"].(map[string]any)
	return podSpec
}

// probePod is a stock-injected pod (details' template in the fixture) in
// ns, for server-side dry runs.
func (j *Journey) probePod(ns string) ([]byte, error) {
	manifest, err := j.fixture(nil, []string{"details-v1"})
	if err != nil {
		return nil, err
	}
	var d map[string]any
	if err := yaml.Unmarshal(bytes.TrimPrefix(manifest, []byte("---\n")), &d); err != nil {
		return nil, err
	}
	tmpl := d["spec"].(map[string]any)["template"].(map[string]any)
	meta, _ := tmpl["metadata"].(map[string]any)
	meta["name"], meta["namespace"] = "webhook-probe", ns
	spec := podTemplateSpec(d)
	// The namespace's default service account: the fixture's is not there.
	delete(spec, "serviceAccountName")
	return yaml.Marshal(map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
}

// WebhookConfiguration is the chart's MutatingWebhookConfiguration.
const WebhookConfiguration = "meshcni-webhook"

// WaitWebhook waits until meshcni's injection webhook answers for pods of
// namespace ns as it should: a server-side dry run (admission runs,
// nothing is stored) of a stock-injected pod comes back with istio-init
// when ns is excluded, and without it (converted) when ns is captured.
// Its failurePolicy is Ignore, so a pod created while the API server
// cannot reach it keeps istio-init: waiting for this first makes the next
// creates deterministic. Every ready endpoint of the Service the
// configuration names must also be a Ready pod: after a node is lost a
// stale endpoint would fail some calls.
func (j *Journey) WaitWebhook(ctx context.Context, ns string, excluded bool) error {
	pod, err := j.probePod(ns)
	if err != nil {
		return err
	}
	want := "converted (no istio-init)"
	if excluded {
		want = "istio-init kept"
	}
	var last string
	err = waitFor(ctx, "the webhook answers for "+ns+": "+want, 90*time.Second, func() error {
		svc, err := j.C.Kubectl(ctx, "get", "mutatingwebhookconfiguration", WebhookConfiguration, "-o",
			"jsonpath={.webhooks[0].clientConfig.service.namespace} {.webhooks[0].clientConfig.service.name}")
		if err != nil {
			return err
		}
		f := strings.Fields(svc)
		if len(f) != 2 {
			return fmt.Errorf("webhook service %q", svc)
		}
		eps, err := j.C.Kubectl(ctx, "-n", f[0], "get", "endpointslices", "-l", "kubernetes.io/service-name="+f[1], "-o",
			`jsonpath={range .items[*].endpoints[?(@.conditions.ready==true)]}{.targetRef.name}{"\n"}{end}`)
		if err != nil {
			return err
		}
		pods, err := j.C.Kubectl(ctx, "-n", f[0], "get", "pods", "-o",
			`jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		if err != nil {
			return err
		}
		ready := strings.Fields(eps)
		if len(ready) == 0 {
			return fmt.Errorf("service %s/%s has no ready endpoint", f[0], f[1])
		}
		for _, name := range ready {
			if !slices.Contains(strings.Fields(pods), name+"=True") {
				return fmt.Errorf("service %s/%s: endpoint %s is not a ready pod (pods: %s)", f[0], f[1], name, strings.Fields(pods))
			}
		}
		out, err := j.C.KubectlIn(ctx, pod, "create", "--dry-run=server", "-f", "-", "-o", "jsonpath={.spec.initContainers[*].name}")
		if err != nil {
			return err
		}
		last = out
		if slices.Contains(strings.Fields(out), "istio-init") != excluded {
			return fmt.Errorf("a dry-run pod in %s gets init containers %q", ns, out)
		}
		return nil
	})
	j.show("kubectl create --dry-run=server -n "+ns+" -f stock-injected-pod.yaml -o jsonpath='{.spec.initContainers[*].name}'", last)
	return err
}

// PodInit is what the webhook decides for a pod: its init containers and
// the capabilities any of its containers add.
type PodInit struct {
	Init []string
	Caps []string
}

// PodInits returns each pod of ns (that is not terminating) by name.
func (j *Journey) PodInits(ctx context.Context, ns string) (map[string]PodInit, error) {
	out, err := j.C.Kubectl(ctx, "-n", ns, "get", "pods", "-o", "json")
	if err != nil {
		return nil, err
	}
	type container struct {
		Name            string `json:"name"`
		SecurityContext struct {
			Capabilities struct {
				Add []string `json:"add"`
			} `json:"capabilities"`
		} `json:"securityContext"`
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string  `json:"name"`
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
			Spec struct {
				InitContainers []container `json:"initContainers"`
				Containers     []container `json:"containers"`
			} `json:"spec"`
		} `json:"items"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		return nil, err
	}
	m := map[string]PodInit{}
	for _, p := range list.Items {
		if p.Metadata.DeletionTimestamp != nil {
			continue
		}
		var pi PodInit
		for _, c := range p.Spec.InitContainers {
			pi.Init = append(pi.Init, c.Name)
		}
		for _, c := range append(p.Spec.InitContainers, p.Spec.Containers...) {
			pi.Caps = append(pi.Caps, c.SecurityContext.Capabilities.Add...)
		}
		m[p.Metadata.Name] = pi
	}
	return m, nil
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
		"--runtime-endpoint", "unix://"+n.Sock, "--cni-conf-dir", CNIConfDir)
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

// Install is the user's install: the controller release, then the
// MeshCNI resource (enabled, excluding the given namespaces); it follows
// `kubectl get meshcni` until Running, checks that the status is about
// this spec, waits for the release's Deployments and shows the agents. It
// returns the phases the resource went through.
func (j *Journey) Install(ctx context.Context, exclude ...string) ([]string, error) {
	if err := j.InstallController(ctx); err != nil {
		return nil, err
	}
	w, err := j.WatchMeshCNI(ctx)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	if err := j.ApplyMeshCNI(ctx, exclude...); err != nil {
		return nil, err
	}
	return j.awaitRunning(ctx, w, "Updating", "Running")
}

// Change changes the resource with a JSON patch and follows it to want
// (Running or Disabled) through Updating when updating.
func (j *Journey) Change(ctx context.Context, patch string, want ...string) ([]string, error) {
	w, err := j.WatchMeshCNI(ctx)
	if err != nil {
		return nil, err
	}
	defer w.Close()
	// The watch's first row is the state before the patch.
	if _, err := w.Await(ctx, 30*time.Second, "Running"); err != nil {
		return nil, err
	}
	w.seen = nil
	if err := j.PatchMeshCNI(ctx, patch); err != nil {
		return nil, err
	}
	return j.awaitRunning(ctx, w, want...)
}

func (j *Journey) awaitRunning(ctx context.Context, w *Phases, want ...string) ([]string, error) {
	seen, err := w.Await(ctx, 3*time.Minute, want...)
	if err != nil {
		return seen, err
	}
	phase, err := j.Observed(ctx)
	if err != nil {
		return seen, err
	}
	if phase != want[len(want)-1] {
		return seen, fmt.Errorf("MeshCNI phase %s after it went %v", phase, seen)
	}
	if phase == "Disabled" {
		return seen, nil
	}
	if err := j.ReleaseAvailable(ctx); err != nil {
		return seen, err
	}
	_, err = j.Agents(ctx)
	return seen, err
}
