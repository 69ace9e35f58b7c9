//go:build integration

package controller

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/controller"
)

const ns = "meshcni-system"

var nodes = []string{"node-a", "node-b"}

// controllerConfig applies the chart's own RBAC for meshcni-controller
// (its ClusterRole, Role, bindings and service account) and returns a
// config with that service account's token: the controller runs with
// exactly the rights the chart gives it.
func controllerConfig(t *testing.T) *rest.Config {
	t.Helper()
	ctx := context.Background()
	m, err := chart.Render(nil, ns, "test")
	if err != nil {
		t.Fatal(err)
	}
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	gvr := map[string]schema.GroupVersionResource{
		"ServiceAccount":     {Version: "v1", Resource: "serviceaccounts"},
		"ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		"ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		"Role":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
		"RoleBinding":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
	}
	n := 0
	for i, obj := range m.Objects {
		if !strings.HasSuffix(m.Sources[i], "/controller-rbac.yaml") && !strings.HasSuffix(m.Sources[i], "/controller-serviceaccount.yaml") {
			continue
		}
		var rc dynamic.ResourceInterface = dyn.Resource(gvr[obj.GetKind()])
		if obj.GetNamespace() != "" {
			rc = dyn.Resource(gvr[obj.GetKind()]).Namespace(obj.GetNamespace())
		}
		if _, err := rc.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "test", Force: true}); err != nil {
			t.Fatalf("apply %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		n++
	}
	if n != 5 {
		t.Fatalf("applied %d controller RBAC objects, want 5", n)
	}
	token, err := cluster.IssueToken(ctx, ns, "meshcni-controller", 0)
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
	// RBAC is cached by the authorizer: wait until the token may watch
	// its resource.
	eventually(t, "controller RBAC in force", func() (string, bool) {
		_, err := dynamic.NewForConfigOrDie(cfg).Resource(v1alpha1.GroupVersionResource).List(ctx, metav1.ListOptions{})
		return fmt.Sprint(err), err == nil
	})
	return cfg
}

// startController runs the controller in-process against the real API
// server, with cfg's identity, until the test ends.
func startController(t *testing.T, cfg *rest.Config) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := controller.New(cfg, controller.Options{Namespace: ns, DefaultImage: "registry.test/meshcni-agent:v1", Log: log})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller: %v", err)
		}
	})
}

func setupNodes(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if err := cluster.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	for _, name := range nodes {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
		n.Spec.Taints = []corev1.Taint{
			{Key: controller.StartupTaint, Effect: corev1.TaintEffectNoSchedule},
			{Key: "other.example/keep", Effect: corev1.TaintEffectNoSchedule},
		}
		if _, err := cluster.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, name := range nodes {
			_ = cluster.Client.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
		}
	})
}

func meshRC() dynamic.ResourceInterface {
	return dynamic.NewForConfigOrDie(cluster.Config).Resource(v1alpha1.GroupVersionResource)
}

func getMesh(t *testing.T) *v1alpha1.MeshCNI {
	t.Helper()
	u, err := meshRC().Get(context.Background(), v1alpha1.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mc := &v1alpha1.MeshCNI{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, mc); err != nil {
		t.Fatal(err)
	}
	return mc
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

func waitPhase(t *testing.T, phase string, extra func(*v1alpha1.MeshCNI) (string, bool)) *v1alpha1.MeshCNI {
	t.Helper()
	var mc *v1alpha1.MeshCNI
	eventually(t, "phase "+phase, func() (string, bool) {
		mc = getMesh(t)
		st := mc.Status
		if st.Phase != phase || st.ObservedGeneration != mc.Generation {
			return fmt.Sprintf("phase %q (%s), observed generation %d of %d", st.Phase, st.Message, st.ObservedGeneration, mc.Generation), false
		}
		if extra != nil {
			return extra(mc)
		}
		return "", true
	})
	return mc
}

func getDS(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	ds, err := cluster.Client.AppsV1().DaemonSets(ns).Get(context.Background(), chart.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// playDaemonSet does what the DaemonSet controller and the kubelets would:
// an agent pod per node from template (ready or not) and the DaemonSet's
// status. template may be an older DaemonSet's, to play stale agents.
func playDaemonSet(t *testing.T, template *appsv1.DaemonSet, ready bool) {
	t.Helper()
	ctx := context.Background()
	zero := int64(0)
	if err := cluster.Client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero},
		metav1.ListOptions{LabelSelector: controller.AgentSelector}); err != nil {
		t.Fatal(err)
	}
	for _, node := range nodes {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{GenerateName: template.Name + "-", Namespace: ns,
				Labels: template.Spec.Template.Labels, Annotations: template.Spec.Template.Annotations},
			Spec: *template.Spec.Template.Spec.DeepCopy(),
		}
		pod.Spec.NodeName = node
		created, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
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
	// The DaemonSet controller's view: it counts every pod as updated.
	ds := getDS(t)
	n := int32(len(nodes))
	r := n
	if !ready {
		r = 0
	}
	ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: ds.Generation, DesiredNumberScheduled: n, CurrentNumberScheduled: n,
		UpdatedNumberScheduled: n, NumberReady: r, NumberAvailable: r}
	if _, err := cluster.Client.AppsV1().DaemonSets(ns).UpdateStatus(ctx, ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func patchSpec(t *testing.T, patch string) {
	t.Helper()
	if _, err := meshRC().Patch(context.Background(), v1alpha1.Name, types.MergePatchType, []byte(`{"spec":`+patch+`}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func taints(t *testing.T, node string) []string {
	n, err := cluster.Client.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, tt := range n.Spec.Taints {
		keys = append(keys, tt.Key)
	}
	return keys
}

// TestLifecycle, as the chart's RBAC allows: create → node side and Updating; agents ready → Running;
// a settings change → Updating (even while the DaemonSet's own counters
// say all is updated and ready) → Running; enabled: false → the node side
// and the startup taints gone, Disabled; delete → the resource is gone.
func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	setupNodes(t)
	startController(t, controllerConfig(t))

	obj := meshcni(t, "metadata: {name: default}\nspec: {excludeNamespaces: [kube-system, team-a]}\n")
	if _, err := meshRC().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = meshRC().Delete(context.Background(), v1alpha1.Name, metav1.DeleteOptions{})
	})

	mc := waitPhase(t, v1alpha1.PhaseUpdating, nil)
	if len(mc.Finalizers) != 1 || mc.Finalizers[0] != controller.Finalizer {
		t.Errorf("finalizers %v, want [%s]", mc.Finalizers, controller.Finalizer)
	}
	ds := getDS(t)
	hash1 := ds.Spec.Template.Annotations[chart.ConfigHashAnnotation]
	if mc.Status.SettingsHash != hash1 || hash1 == "" {
		t.Errorf("status.settingsHash %q, DaemonSet's %q", mc.Status.SettingsHash, hash1)
	}
	if img := ds.Spec.Template.Spec.Containers[0].Image; img != "registry.test/meshcni-agent:v1" {
		t.Errorf("agent image %q, want the controller's default", img)
	}
	if refs := ds.OwnerReferences; len(refs) != 1 || refs[0].UID != mc.UID {
		t.Errorf("DaemonSet owner references %+v, want the MeshCNI", refs)
	}
	cm, err := cluster.Client.CoreV1().ConfigMaps(ns).Get(ctx, chart.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Data["MESHCNI_EXCLUDE_NAMESPACES"]; got != "kube-system,team-a,"+ns {
		t.Errorf("ConfigMap excludes %q", got)
	}
	for _, name := range []string{"meshcni-agent", "meshcni-plugin"} {
		if _, err := cluster.Client.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Errorf("ClusterRole %s: %v", name, err)
		}
	}

	// Agents scheduled, not ready yet: still Updating, counted.
	playDaemonSet(t, ds, false)
	waitPhase(t, v1alpha1.PhaseUpdating, func(mc *v1alpha1.MeshCNI) (string, bool) {
		n := mc.Status.Nodes
		return fmt.Sprintf("nodes %+v", n), n.Desired == 2 && n.Ready == 0
	})
	playDaemonSet(t, ds, true)
	mc = waitPhase(t, v1alpha1.PhaseRunning, nil)
	if n := mc.Status.Nodes; n != (v1alpha1.NodeCounts{Desired: 2, Ready: 2, Updated: 2}) || mc.Status.ReadyNodes != "2/2" {
		t.Errorf("nodes %+v %q, want 2/2/2", n, mc.Status.ReadyNodes)
	}
	if !hasCondition(mc, v1alpha1.ConditionReady, metav1.ConditionTrue) || !hasCondition(mc, v1alpha1.ConditionProgressing, metav1.ConditionFalse) {
		t.Errorf("conditions %+v", mc.Status.Conditions)
	}

	// A settings change: new hash, Updating; agents that are ready but run
	// the old hash (and a DaemonSet status that counts them updated) do
	// not make it Running.
	patchSpec(t, `{"logLevel":"debug"}`)
	mc = waitPhase(t, v1alpha1.PhaseUpdating, nil)
	if mc.Status.SettingsHash == hash1 {
		t.Fatal("the settings hash did not change with logLevel")
	}
	playDaemonSet(t, ds, true) // the old template: stale agents
	waitPhase(t, v1alpha1.PhaseUpdating, func(mc *v1alpha1.MeshCNI) (string, bool) {
		n := mc.Status.Nodes
		return fmt.Sprintf("nodes %+v: %s", n, mc.Status.Message), n.Ready == 2 && n.Updated == 0 && strings.Contains(mc.Status.Message, "older settings")
	})
	playDaemonSet(t, getDS(t), true)
	waitPhase(t, v1alpha1.PhaseRunning, nil)

	// Disable: the DaemonSet goes first; the rest waits for the agents.
	patchSpec(t, `{"enabled":false}`)
	eventually(t, "DaemonSet deleted", func() (string, bool) {
		_, err := cluster.Client.AppsV1().DaemonSets(ns).Get(ctx, chart.DaemonSetName, metav1.GetOptions{})
		return fmt.Sprint(err), apierrors.IsNotFound(err)
	})
	waitPhase(t, v1alpha1.PhaseUpdating, func(mc *v1alpha1.MeshCNI) (string, bool) {
		return mc.Status.Message, strings.Contains(mc.Status.Message, "agent pod")
	})
	if _, err := cluster.Client.CoreV1().ConfigMaps(ns).Get(ctx, chart.ConfigMapName, metav1.GetOptions{}); err != nil {
		t.Errorf("the ConfigMap went before the agents exited: %v", err)
	}
	zero := int64(0)
	if err := cluster.Client.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &zero},
		metav1.ListOptions{LabelSelector: controller.AgentSelector}); err != nil {
		t.Fatal(err)
	}
	waitPhase(t, v1alpha1.PhaseDisabled, nil)
	for _, node := range nodes {
		// The API server adds node.kubernetes.io/not-ready to a new node.
		if got := taints(t, node); slices.Contains(got, controller.StartupTaint) || !slices.Contains(got, "other.example/keep") {
			t.Errorf("node %s taints %v, want other.example/keep without %s", node, got, controller.StartupTaint)
		}
	}
	if _, err := cluster.Client.CoreV1().ConfigMaps(ns).Get(ctx, chart.ConfigMapName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("ConfigMap after disable: %v", err)
	}
	for _, name := range []string{"meshcni-agent", "meshcni-plugin"} {
		if _, err := cluster.Client.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("ClusterRole %s after disable: %v", name, err)
		}
	}
	// Events: one per phase change, on the MeshCNI.
	var reasons map[string]bool
	eventually(t, "events", func() (string, bool) {
		events, _ := cluster.Client.CoreV1().Events("").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.kind=MeshCNI"})
		reasons = map[string]bool{}
		for _, e := range events.Items {
			reasons[e.Reason] = true
		}
		return fmt.Sprint(reasons), reasons[v1alpha1.PhaseUpdating] && reasons[v1alpha1.PhaseRunning] && reasons[v1alpha1.PhaseDisabled]
	})

	// Deleting the resource: the finalizer lets it go (nothing left).
	if err := meshRC().Delete(ctx, v1alpha1.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "MeshCNI deleted", func() (string, bool) {
		_, err := meshRC().Get(ctx, v1alpha1.Name, metav1.GetOptions{})
		return fmt.Sprint(err), apierrors.IsNotFound(err)
	})
}

func hasCondition(mc *v1alpha1.MeshCNI, typ string, st metav1.ConditionStatus) bool {
	for _, c := range mc.Status.Conditions {
		if c.Type == typ {
			return c.Status == st
		}
	}
	return false
}
