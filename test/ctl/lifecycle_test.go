//go:build integration

package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/controller"
	clustercmd "github.com/meshcni/meshcni/internal/ctl/cluster"
	"github.com/meshcni/meshcni/test/kubeharness"
)

// ns is the release namespace of the running test: the chart's default
// the first time, a fresh one when -count runs it again, since the
// harness has no namespace controller and a deleted namespace stays
// Terminating.
var (
	ns   string
	runs = map[string]int{}
)

func releaseNamespace(base string) string {
	runs[base]++
	if runs[base] == 1 {
		return base
	}
	return fmt.Sprintf("%s-%d", base, runs[base])
}

var agentNodes = []string{"node-a", "node-b"}

// TestEnableStatusDisable: enable on an empty cluster installs the CRD and
// the controller's release and writes the MeshCNI; the real controller,
// run in-process with the release's own RBAC, rolls out the agents that
// the test plays (the DaemonSet controller and the kubelets), and
// enable --wait follows Updating then Running. Then: status and -o json,
// a console user's setting surviving enable, --dry-run changing nothing,
// a Degraded node explained, disable → Disabled, --purge → nothing left.
func TestEnableStatusDisable(t *testing.T) {
	ctx := context.Background()
	kube := cluster.Client
	ns = releaseNamespace(chart.DefaultNamespace)
	t.Cleanup(func() { removeRelease(t, ns) }) // when the test fails before its purge
	createNodes(t)

	if out := mustRun(t, "-n", ns, "status"); !strings.Contains(out, "Status: NotInstalled") {
		t.Fatalf("before enable:\n%s", out)
	}

	// --dry-run on an empty cluster prints the release and the resource
	// and creates nothing.
	out := mustRun(t, "-n", ns, "enable", "--dry-run", "--exclude-namespaces", "kube-system,team-a")
	for _, want := range []string{"kind: CustomResourceDefinition", "kind: Deployment", "name: meshcni-controller", "kind: MeshCNI", "- team-a"} {
		if !strings.Contains(out, want) {
			t.Errorf("enable --dry-run output lacks %q:\n%s", want, out)
		}
	}
	if _, err := dyn().Resource(crdGVR).Get(ctx, clustercmd.CRDName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("enable --dry-run created the CRD: %v", err)
	}
	if _, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Fatalf("enable --dry-run created namespace %s: %v", ns, err)
	}

	// enable --wait, while the release's controller starts (as its
	// Deployment's pod would) and the test plays the agents.
	var waitOut syncBuffer
	done := make(chan error, 1)
	go func() {
		_, err := meshcnictlTo(ctx, &waitOut, "-n", ns, "enable", "--exclude-namespaces", "kube-system,team-a", "--wait=60s")
		done <- err
	}()
	eventually(t, "enable applies the controller's Deployment", func() (string, bool) {
		_, err := kube.AppsV1().Deployments(ns).Get(ctx, clustercmd.ControllerName, metav1.GetOptions{})
		return fmt.Sprint(err) + "\n" + waitOut.String(), err == nil
	})
	startController(t, ns)
	eventually(t, "enable --wait prints Updating", func() (string, bool) {
		return waitOut.String(), strings.Contains(waitOut.String(), "phase Updating")
	})
	select {
	case err := <-done:
		t.Fatalf("enable --wait returned before the agents were ready: %v\n%s", err, waitOut.String())
	default:
	}
	playAgents(t, getDS(t), true)
	if err := <-done; err != nil {
		t.Fatalf("enable --wait: %v\n%s", err, waitOut.String())
	}
	out = waitOut.String()
	if u, r := strings.Index(out, "phase Updating"), strings.Index(out, "phase Running"); u < 0 || r < u || !strings.Contains(out, "meshcni is Running") {
		t.Errorf("enable --wait should print Updating, then Running:\n%s", out)
	}

	// What enable wrote: the CRD and the release, server-side applied by
	// meshcnictl; the resource with the settings given.
	crd, err := dyn().Resource(crdGVR).Get(ctx, clustercmd.CRDName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !appliedBy(crd, clustercmd.FieldManager) {
		t.Errorf("the CRD is not server-side applied by %s", clustercmd.FieldManager)
	}
	_, release, err := clustercmd.Release(nil, ns)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range release.Objects {
		got, err := resourceFor(t, obj).Get(ctx, obj.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("after enable, %s: %v", describe(obj), err)
		}
		if !appliedBy(got, clustercmd.FieldManager) {
			t.Errorf("%s is not server-side applied by %s", describe(obj), clustercmd.FieldManager)
		}
	}
	mc := getMesh(t)
	if !mc.Spec.IsEnabled() || !slices.Equal(mc.Spec.ExcludeNamespaces, []string{"kube-system", "team-a"}) {
		t.Errorf("MeshCNI spec %+v", mc.Spec)
	}
	cm, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, chart.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Data["MESHCNI_EXCLUDE_NAMESPACES"]; got != "kube-system,team-a,"+ns {
		t.Errorf("the controller's ConfigMap excludes %q", got)
	}

	out = mustRun(t, "-n", ns, "status")
	for _, want := range []string{"MeshCNI default: enabled, excluded namespaces kube-system,team-a", "Nodes: 2 desired, 2 ready, 2 updated",
		"node-a", "node-b", "current", "Conditions: ", "Ready=True", "Status: Running"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "windows-node") {
		t.Errorf("status lists a node the DaemonSet does not select:\n%s", out)
	}
	var st v1alpha1.MeshCNIStatus
	if err := json.Unmarshal([]byte(mustRun(t, "-n", ns, "status", "-o", "json")), &st); err != nil {
		t.Fatalf("status -o json does not parse: %v", err)
	}
	if st.Phase != v1alpha1.PhaseRunning || st.ObservedGeneration != mc.Generation || st.ReadyNodes != "2/2" || len(st.Conditions) != 3 {
		t.Errorf("status -o json: %+v (generation %d)", st, mc.Generation)
	}
	if out := mustRun(t, "-n", ns, "status", "-o", "yaml"); !strings.Contains(out, "phase: Running") {
		t.Errorf("status -o yaml:\n%s", out)
	}

	checkRBAC(t)

	// Every platform's node side is accepted by the API server, as the
	// controller would apply it after a platform change: its field manager,
	// so the fields a platform leaves out go (server-side dry run).
	for _, p := range clustercmd.Platforms {
		pm, err := clustercmd.RenderIn(map[string]any{"platform": p}, ns)
		if err != nil {
			t.Fatal(err)
		}
		for i, obj := range pm.Objects {
			if !chart.IsNodeSide(pm.Sources[i]) {
				continue
			}
			if _, err := resourceFor(t, obj).Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: controller.FieldManager, Force: true, DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("platform %s: the API server rejects %s: %v", p, describe(obj), err)
			}
		}
	}

	// version: the controller's pod (played from its Deployment's template)
	// and the agents, by image.
	playController(t)
	var info clustercmd.VersionInfo
	if err := json.Unmarshal([]byte(mustRun(t, "-n", ns, "version", "-o", "json")), &info); err != nil {
		t.Fatal(err)
	}
	if len(info.Controller) != 1 || info.Controller[0].Pods != 1 || len(info.Agents) != 1 || info.Agents[0].Image != "registry.test/meshcni-agent:v1" || info.Agents[0].Pods != 2 {
		t.Errorf("version: %+v", info)
	}

	// A console user's setting survives enable: the console writes
	// excludeNamespaces (field manager meshcni-console); enable
	// --log-level writes only the log level; a plain enable resets nothing.
	if _, err := meshRC().Patch(ctx, v1alpha1.Name, types.MergePatchType, []byte(`{"spec":{"excludeNamespaces":["kube-system","team-b"]}}`),
		metav1.PatchOptions{FieldManager: "meshcni-console"}); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "-n", ns, "enable", "--log-level", "debug")
	mustRun(t, "-n", ns, "enable")
	u, err := meshRC().Get(ctx, v1alpha1.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mc = toMesh(t, u)
	if !slices.Equal(mc.Spec.ExcludeNamespaces, []string{"kube-system", "team-b"}) || mc.Spec.LogLevel != "debug" {
		t.Errorf("after the console and enable --log-level debug: spec %+v", mc.Spec)
	}
	if owner := fieldOwner(u, "excludeNamespaces"); owner != "meshcni-console" {
		t.Errorf("spec.excludeNamespaces is managed by %q, want meshcni-console", owner)
	}
	if owner := fieldOwner(u, "logLevel"); owner != clustercmd.FieldManager {
		t.Errorf("spec.logLevel is managed by %q, want %s", owner, clustercmd.FieldManager)
	}
	// The controller applies the new DaemonSet before it writes the status
	// of the new generation: only then are there new agents to play.
	waitObserved(t)
	playAgents(t, getDS(t), true)
	waitPhase(t, v1alpha1.PhaseRunning)

	// --dry-run with the release installed: the resource as the server
	// would store it, and no resourceVersion moves.
	before := resourceVersions(t)
	out = mustRun(t, "-n", ns, "enable", "--dry-run", "--log-level", "warn", "--backend", "nftables")
	for _, want := range []string{"kind: MeshCNI", "logLevel: warn", "iptablesBackend: nftables", "- team-b"} {
		if !strings.Contains(out, want) {
			t.Errorf("enable --dry-run lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "kind: Deployment") {
		t.Errorf("enable --dry-run prints the release although it is installed:\n%s", out)
	}
	if after := resourceVersions(t); !maps(before, after) {
		t.Errorf("enable --dry-run changed resourceVersions:\n before %v\n after  %v", before, after)
	}

	// A failing agent: Degraded, and status says which node, which pod, why.
	failAgent(t, "node-a")
	waitPhase(t, v1alpha1.PhaseDegraded)
	out = mustRun(t, "-n", ns, "status")
	for _, want := range []string{"Node node-a:", "agent pod meshcni-agent-", "CrashLoopBackOff", "condition Ready=False", "event BackOff: Back-off restarting failed container", "Status: Degraded: node node-a"} {
		if !strings.Contains(out, want) {
			t.Errorf("status of a Degraded node lacks %q:\n%s", want, out)
		}
	}
	playAgents(t, getDS(t), true)
	waitPhase(t, v1alpha1.PhaseRunning)

	// disable: the controller deletes the DaemonSet; the "kubelets" stop
	// its pods as the agents uninstall themselves; Disabled.
	var disableOut syncBuffer
	go func() {
		_, err := meshcnictlTo(ctx, &disableOut, "-n", ns, "disable", "--timeout", "60s")
		done <- err
	}()
	eventually(t, "the controller deletes the DaemonSet", func() (string, bool) {
		_, err := kube.AppsV1().DaemonSets(ns).Get(ctx, chart.DaemonSetName, metav1.GetOptions{})
		return fmt.Sprint(err), apierrors.IsNotFound(err)
	})
	deleteAgentPods(t)
	if err := <-done; err != nil {
		t.Fatalf("disable: %v\n%s", err, disableOut.String())
	}
	if out := disableOut.String(); !strings.Contains(out, "enabled=false") || !strings.Contains(out, "meshcni is Disabled") {
		t.Errorf("disable output:\n%s", out)
	}
	if mc := getMesh(t); mc.Spec.IsEnabled() || mc.Status.Phase != v1alpha1.PhaseDisabled {
		t.Errorf("after disable: enabled %v, phase %s", mc.Spec.IsEnabled(), mc.Status.Phase)
	}
	if _, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, chart.ConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the node side's ConfigMap after disable: %v", err)
	}
	if _, err := kube.AppsV1().Deployments(ns).Get(ctx, clustercmd.ControllerName, metav1.GetOptions{}); err != nil {
		t.Errorf("disable without --purge removed the controller: %v", err)
	}
	// status --wait of a disabled MeshCNI waits for Disabled, not Running.
	if out := mustRun(t, "-n", ns, "status", "--wait", "--timeout", "20s"); !strings.Contains(out, "MeshCNI default: disabled") || !strings.Contains(out, "Status: Disabled") {
		t.Errorf("status --wait after disable:\n%s", out)
	}

	// --purge: the resource, the release and the CRD go.
	out = mustRun(t, "-n", ns, "disable", "--purge", "--timeout", "60s")
	if !strings.Contains(out, "purged") {
		t.Errorf("disable --purge output:\n%s", out)
	}
	for _, obj := range release.Objects {
		got, err := resourceFor(t, obj).Get(ctx, obj.GetName(), metav1.GetOptions{})
		// No namespace controller here: a deleted namespace stays Terminating.
		if err == nil && !(obj.GetKind() == "Namespace" && got.GetDeletionTimestamp() != nil) {
			t.Errorf("after disable --purge, %s still exists", describe(obj))
		}
	}
	if _, err := dyn().Resource(crdGVR).Get(ctx, clustercmd.CRDName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the CRD after disable --purge: %v", err)
	}
}

// TestNamespaceFlag: -n is the release namespace: enable installs the
// controller there, refuses a second one elsewhere, and the dry run and
// status look there.
func TestNamespaceFlag(t *testing.T) {
	ctx := context.Background()
	other := releaseNamespace("mesh-other")
	t.Cleanup(func() { removeRelease(t, other) })
	mustRun(t, "-n", other, "enable")
	if _, err := cluster.Client.AppsV1().Deployments(other).Get(ctx, clustercmd.ControllerName, metav1.GetOptions{}); err != nil {
		t.Fatalf("enable -n %s: %v", other, err)
	}
	if _, err := cluster.Client.AppsV1().Deployments(ns).Get(ctx, clustercmd.ControllerName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("enable -n %s also installed into %s: %v", other, ns, err)
	}
	_, _, err := meshcnictl(ctx, "-n", "elsewhere", "enable")
	if err == nil || !strings.Contains(err.Error(), "installed in namespace "+other+", not elsewhere: pass -n "+other) {
		t.Errorf("enable -n elsewhere with the controller in %s: %v", other, err)
	}
	if _, err := cluster.Client.CoreV1().Namespaces().Get(ctx, "elsewhere", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the refused enable created namespace elsewhere: %v", err)
	}
	// No controller runs here: the resource has no status yet, and status
	// says so rather than guessing.
	if out := mustRun(t, "-n", other, "status"); !strings.Contains(out, "Status: Pending: meshcni-controller has not written a status yet") {
		t.Errorf("status -n %s:\n%s", other, out)
	}
}

// removeRelease deletes what enable -n namespace made, as the API allows
// without a controller: the MeshCNI has no finalizer then.
func removeRelease(t *testing.T, namespace string) {
	ctx := context.Background()
	_ = meshRC().Delete(ctx, v1alpha1.Name, metav1.DeleteOptions{})
	// The controller has stopped: let go of its finalizer.
	_, _ = meshRC().Patch(ctx, v1alpha1.Name, types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	crd, m, err := clustercmd.Release(nil, namespace)
	if err != nil {
		t.Error(err)
		return
	}
	for _, obj := range m.Objects {
		_ = resourceFor(t, obj).Delete(ctx, obj.GetName(), metav1.DeleteOptions{})
	}
	_ = dyn().Resource(crdGVR).Delete(ctx, crd.GetName(), metav1.DeleteOptions{})
	eventually(t, "CRD gone", func() (string, bool) {
		_, err := dyn().Resource(crdGVR).Get(ctx, crd.GetName(), metav1.GetOptions{})
		return fmt.Sprint(err), apierrors.IsNotFound(err)
	})
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func createNodes(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, n := range append(slices.Clone(agentNodes), "windows-node") {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
		if n == "windows-node" {
			node.Labels["kubernetes.io/os"] = "windows"
		}
		if _, err := cluster.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cluster.Client.CoreV1().Nodes().Delete(ctx, n, metav1.DeleteOptions{}) })
	}
}

// startController runs the real controller in-process, as its
// Deployment's pod would: with the service account and RBAC that enable
// installed, until the test ends.
func startController(t *testing.T, namespace string) {
	t.Helper()
	ctx := context.Background()
	token, err := cluster.IssueToken(ctx, namespace, clustercmd.ControllerName, 0)
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/controller.kubeconfig"
	if err := cluster.WriteTokenKubeconfig(path, token); err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	// The authorizer caches RBAC: wait until the token may list its resource.
	eventually(t, "the controller's RBAC in force", func() (string, bool) {
		_, err := dynamic.NewForConfigOrDie(cfg).Resource(v1alpha1.GroupVersionResource).List(ctx, metav1.ListOptions{})
		return fmt.Sprint(err), err == nil
	})
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError + 1}))
	c, err := controller.New(cfg, controller.Options{Namespace: namespace, DefaultImage: "registry.test/meshcni-agent:v1", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- c.Run(cctx) }()
	t.Cleanup(func() {
		cancel()
		<-stopped // an error here is the purge removing its RBAC and CRD
	})
}

// playAgents does what the DaemonSet controller and the kubelets would:
// an agent pod per node from ds's template, ready or not, and the
// DaemonSet's status.
func playAgents(t *testing.T, ds *appsv1.DaemonSet, ready bool) {
	t.Helper()
	ctx := context.Background()
	deleteAgentPods(t)
	for _, node := range agentNodes {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: ds.Name + "-", Namespace: ns,
				Labels: ds.Spec.Template.Labels, Annotations: ds.Spec.Template.Annotations,
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(ds, appsv1.SchemeGroupVersion.WithKind("DaemonSet"))}},
			Spec: *ds.Spec.Template.Spec.DeepCopy(),
		}
		pod.Spec.NodeName = node
		created, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create an agent pod from the DaemonSet's template: %v", err)
		}
		st := corev1.ConditionFalse
		if ready {
			st = corev1.ConditionTrue
		}
		created.Status.Phase = corev1.PodRunning
		created.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st, LastTransitionTime: metav1.Now()}}
		if _, err := cluster.Client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ds = getDS(t)
	n, r := int32(len(agentNodes)), int32(0)
	if ready {
		r = n
	}
	ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: ds.Generation, DesiredNumberScheduled: n, CurrentNumberScheduled: n,
		UpdatedNumberScheduled: n, NumberReady: r, NumberAvailable: r}
	if _, err := cluster.Client.AppsV1().DaemonSets(ns).UpdateStatus(ctx, ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// playController creates a pod from the controller Deployment's template,
// as the ReplicaSet controller would.
func playController(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	d, err := cluster.Client.AppsV1().Deployments(ns).Get(ctx, clustercmd.ControllerName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: d.Name + "-", Namespace: ns, Labels: d.Spec.Template.Labels},
		Spec:       *d.Spec.Template.Spec.DeepCopy(),
	}
	pod.Spec.NodeName = agentNodes[0]
	if _, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create a controller pod from the Deployment's template: %v", err)
	}
}

// failAgent puts node's agent into CrashLoopBackOff, with the kubelet's
// BackOff event.
func failAgent(t *testing.T, node string) {
	t.Helper()
	ctx := context.Background()
	pods, err := cluster.Client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: chart.AgentSelector, FieldSelector: "spec.nodeName=" + node})
	if err != nil || len(pods.Items) != 1 {
		t.Fatalf("agent pods on %s: %v %v", node, pods, err)
	}
	p := &pods.Items[0]
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady",
		Message: "containers with unready status: [meshcni-agent]", LastTransitionTime: metav1.Now()}}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "meshcni-agent", RestartCount: 4,
		State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "back-off 40s restarting failed container"}}}}
	if _, err := cluster.Client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: p.Name + ".", Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: p.Name, UID: p.UID},
		Type:           corev1.EventTypeWarning, Reason: "BackOff", Message: "Back-off restarting failed container meshcni-agent",
		Count: 5, FirstTimestamp: now, LastTimestamp: now, Source: corev1.EventSource{Component: "kubelet", Host: node},
	}
	if _, err := cluster.Client.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func deleteAgentPods(t *testing.T) {
	t.Helper()
	zero := int64(0)
	if err := cluster.Client.CoreV1().Pods(ns).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: &zero},
		metav1.ListOptions{LabelSelector: chart.AgentSelector}); err != nil {
		t.Fatal(err)
	}
}

func getDS(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	ds, err := cluster.Client.AppsV1().DaemonSets(ns).Get(context.Background(), chart.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func dyn() dynamic.Interface { return dynamic.NewForConfigOrDie(cluster.Config) }

func meshRC() dynamic.ResourceInterface { return dyn().Resource(v1alpha1.GroupVersionResource) }

func toMesh(t *testing.T, u *unstructured.Unstructured) *v1alpha1.MeshCNI {
	t.Helper()
	mc := &v1alpha1.MeshCNI{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, mc); err != nil {
		t.Fatal(err)
	}
	return mc
}

func getMesh(t *testing.T) *v1alpha1.MeshCNI {
	t.Helper()
	u, err := meshRC().Get(context.Background(), v1alpha1.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return toMesh(t, u)
}

// waitObserved waits until the status describes the current generation.
func waitObserved(t *testing.T) {
	t.Helper()
	eventually(t, "status of the current generation", func() (string, bool) {
		mc := getMesh(t)
		return fmt.Sprintf("observed %d of %d", mc.Status.ObservedGeneration, mc.Generation), mc.Status.ObservedGeneration == mc.Generation
	})
}

func waitPhase(t *testing.T, phase string) {
	t.Helper()
	eventually(t, "phase "+phase, func() (string, bool) {
		mc := getMesh(t)
		return fmt.Sprintf("%+v (generation %d)", mc.Status, mc.Generation), mc.Status.Phase == phase && mc.Status.ObservedGeneration == mc.Generation
	})
}

// eventually polls cond until it holds, failing with its last complaint
// after 30 s (the controller acts on watch events, within milliseconds).
func eventually(t *testing.T, what string, cond func() (string, bool)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		why, ok := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s", what, why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// appliedBy tells whether manager server-side applied obj.
func appliedBy(obj *unstructured.Unstructured, manager string) bool {
	return slices.ContainsFunc(obj.GetManagedFields(), func(f metav1.ManagedFieldsEntry) bool {
		return f.Manager == manager && f.Operation == metav1.ManagedFieldsOperationApply
	})
}

// fieldOwner is the manager of spec.field, from the managed fields.
func fieldOwner(obj *unstructured.Unstructured, field string) string {
	for _, f := range obj.GetManagedFields() {
		if f.FieldsV1 == nil {
			continue
		}
		var set map[string]map[string]any
		if json.Unmarshal(f.FieldsV1.Raw, &set) != nil {
			continue
		}
		if _, ok := set["f:spec"]["f:"+field]; ok {
			return f.Manager
		}
	}
	return ""
}

// resourceVersions of what enable writes: the CRD, the namespace, the
// controller's Deployment, the MeshCNI.
func resourceVersions(t *testing.T) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	for name, rc := range map[string]dynamic.ResourceInterface{
		clustercmd.CRDName:        dyn().Resource(crdGVR),
		v1alpha1.Name:             meshRC(),
		ns:                        dyn().Resource(corev1.SchemeGroupVersion.WithResource("namespaces")),
		clustercmd.ControllerName: dyn().Resource(appsv1.SchemeGroupVersion.WithResource("deployments")).Namespace(ns),
	} {
		got, err := rc.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out[name] = got.GetResourceVersion()
	}
	return out
}

func maps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func describe(obj *unstructured.Unstructured) string {
	return obj.GetKind() + " " + obj.GetNamespace() + "/" + obj.GetName()
}

var (
	mapperOnce sync.Once
	mapper     meta.RESTMapper
)

func resourceFor(t *testing.T, obj *unstructured.Unstructured) dynamic.ResourceInterface {
	t.Helper()
	mapperOnce.Do(func() {
		dc := discovery.NewDiscoveryClientForConfigOrDie(cluster.Config)
		mapper = restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
	})
	gvk := obj.GroupVersionKind()
	m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		t.Fatal(err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return dyn().Resource(m.Resource).Namespace(obj.GetNamespace())
	}
	return dyn().Resource(m.Resource)
}

// syncBuffer is a bytes.Buffer a command writes while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// checkRBAC asks the API server, with each identity's own token, what it
// may do: the plug-in may get pods and nothing else; the agent what its
// default repair mode needs.
func checkRBAC(t *testing.T) {
	ctx := context.Background()
	type access struct {
		verb, resource, sub, group string
		allowed                    bool
	}
	for _, tc := range []struct {
		sa     string
		checks []access
	}{
		{"meshcni-plugin", []access{
			{"get", "pods", "", "", true},
			{"list", "pods", "", "", false}, {"watch", "pods", "", "", false}, {"delete", "pods", "", "", false},
			{"update", "pods", "status", "", false}, {"get", "secrets", "", "", false}, {"get", "configmaps", "", "", false},
			{"get", "nodes", "", "", false}, {"create", "events", "", "", false}, {"get", "daemonsets", "", "apps", false},
		}},
		{"meshcni-agent", []access{
			{"get", "pods", "", "", true}, {"list", "pods", "", "", true}, {"watch", "pods", "", "", true},
			{"delete", "pods", "", "", false}, {"update", "pods", "status", "", false}, {"patch", "nodes", "", "", true},
			{"create", "events", "", "", true},
			{"create", "pods", "", "", false}, {"update", "pods", "", "", false}, {"get", "secrets", "", "", false},
			{"list", "nodes", "", "", false}, {"delete", "nodes", "", "", false},
		}},
	} {
		token, err := cluster.IssueToken(ctx, ns, tc.sa, 0)
		if err != nil {
			t.Fatal(err)
		}
		cfg := rest.AnonymousClientConfig(cluster.Config)
		cfg.BearerToken = token
		client := kubernetes.NewForConfigOrDie(cfg)
		for _, c := range tc.checks {
			review := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
				ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: "bookinfo", Verb: c.verb, Resource: c.resource, Subresource: c.sub, Group: c.group},
			}}
			var got bool
			// The RBAC authorizer reads bindings from an informer: allow it to catch up.
			eventually(t, fmt.Sprintf("%s: %s %s/%s allowed %v", tc.sa, c.verb, c.resource, c.sub, c.allowed), func() (string, bool) {
				res, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
				if err != nil {
					return err.Error(), false
				}
				got = res.Status.Allowed
				return fmt.Sprint("allowed ", got), got == c.allowed
			})
		}
	}
	pod := kubeharness.NewPod("bookinfo", "rbac-probe", "node-a")
	if _, err := cluster.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		zero := int64(0)
		_ = cluster.Client.CoreV1().Pods("bookinfo").Delete(context.Background(), "rbac-probe", metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	token, err := cluster.IssueToken(ctx, ns, "meshcni-plugin", 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(cluster.Config)
	cfg.BearerToken = token
	client := kubernetes.NewForConfigOrDie(cfg)
	if _, err := client.CoreV1().Pods("bookinfo").Get(ctx, "rbac-probe", metav1.GetOptions{}); err != nil {
		t.Errorf("the plug-in's identity cannot get a pod: %v", err)
	}
	if _, err := client.CoreV1().Pods("bookinfo").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("the plug-in's identity may list pods (err %v)", err)
	}
}
