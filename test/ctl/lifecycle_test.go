//go:build integration

package ctl

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/meshcni/meshcni/internal/ctl"
	"github.com/meshcni/meshcni/test/kubeharness"
)

const ns = ctl.DefaultNamespace

var agentNodes = []string{"node-a", "node-b"}

// Enable, then status through a simulated rollout, a settings change and
// its rollout, RBAC as the two identities see it, then disable.
func TestEnableStatusDisable(t *testing.T) {
	ctx := context.Background()
	kube := cluster.Client
	for _, n := range append(slices.Clone(agentNodes), "windows-node") {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
		if n == "windows-node" {
			node.Labels["kubernetes.io/os"] = "windows"
		}
		if _, err := kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = kube.CoreV1().Nodes().Delete(ctx, n, metav1.DeleteOptions{}) })
	}

	if out := mustRun(t, "status"); !strings.Contains(out, "Status: NotInstalled") {
		t.Fatalf("before enable:\n%s", out)
	}

	out := mustRun(t, "enable")
	for _, want := range []string{"namespace/meshcni-system serverside-applied", "daemonset.apps/meshcni-agent serverside-applied",
		"clusterrole.rbac.authorization.k8s.io/meshcni-plugin serverside-applied"} {
		if !strings.Contains(out, want) {
			t.Errorf("enable output lacks %q:\n%s", want, out)
		}
	}
	m, err := ctl.Render(nil)
	if err != nil {
		t.Fatal(err)
	}
	dyn, mapper := dynamicClients(t)
	for _, obj := range m.Objects {
		rc := resourceFor(t, dyn, mapper, obj.GetAPIVersion(), obj.GetKind(), obj.GetNamespace())
		got, err := rc.Get(ctx, obj.GetName(), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("after enable, %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		if !slices.ContainsFunc(got.GetManagedFields(), func(f metav1.ManagedFieldsEntry) bool {
			return f.Manager == ctl.FieldManager && f.Operation == metav1.ManagedFieldsOperationApply
		}) {
			t.Errorf("%s %s is not server-side applied by %s", obj.GetKind(), obj.GetName(), ctl.FieldManager)
		}
	}
	// Every platform's objects are accepted too, as a switch of
	// platform by a later enable (server-side dry run).
	for _, p := range ctl.Platforms {
		pm, err := ctl.Render(map[string]any{"platform": p})
		if err != nil {
			t.Fatal(err)
		}
		for _, obj := range pm.Objects {
			rc := resourceFor(t, dyn, mapper, obj.GetAPIVersion(), obj.GetKind(), obj.GetNamespace())
			if _, err := rc.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: ctl.FieldManager, Force: true, DryRun: []string{metav1.DryRunAll}}); err != nil {
				t.Errorf("platform %s: the API server rejects %s %s: %v", p, obj.GetKind(), obj.GetName(), err)
			}
		}
	}
	// Re-running changes nothing.
	gen := getDS(t).Generation
	mustRun(t, "enable")
	if g := getDS(t).Generation; g != gen {
		t.Errorf("a second identical enable bumped the DaemonSet generation %d -> %d", gen, g)
	}

	expectStatus(t, "Updating", "has not yet acted on generation 1")

	// The "controller" creates ready agent pods, but has not yet written
	// the DaemonSet's status.
	createAgentPods(t)
	expectStatus(t, "Updating", "generation 1")

	waitDone := make(chan error, 1)
	var waitOut string
	go func() {
		var err error
		waitOut, _, err = meshcnictl(ctx, "status", "--wait", "--timeout", "60s")
		waitDone <- err
	}()
	time.Sleep(2500 * time.Millisecond) // let --wait see Updating at least once
	select {
	case err := <-waitDone:
		t.Fatalf("status --wait returned before the rollout finished: %v\n%s", err, waitOut)
	default:
	}
	writeDSStatus(t)
	select {
	case err := <-waitDone:
		if err != nil {
			t.Fatalf("status --wait: %v\n%s", err, waitOut)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("status --wait did not return after the rollout finished")
	}
	for _, want := range []string{"node-a", "node-b", "current", "Status: Running: 2 of 2 agents ready"} {
		if !strings.Contains(waitOut, want) {
			t.Errorf("status --wait output lacks %q:\n%s", want, waitOut)
		}
	}
	if strings.Contains(waitOut, "windows-node") {
		t.Errorf("status lists a node the DaemonSet does not select:\n%s", waitOut)
	}

	// Changing the excluded namespaces rolls the agents.
	oldHash := getDS(t).Spec.Template.Annotations[ctl.ConfigHashAnnotation]
	mustRun(t, "enable", "--exclude-namespaces", "kube-system,istio-system,legacy-apps")
	cm, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, ctl.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := cm.Data["MESHCNI_EXCLUDE_NAMESPACES"]; got != "kube-system,istio-system,legacy-apps,meshcni-system" {
		t.Errorf("MESHCNI_EXCLUDE_NAMESPACES %q", got)
	}
	if getDS(t).Spec.Template.Annotations[ctl.ConfigHashAnnotation] == oldHash {
		t.Fatal("the settings hash did not change")
	}
	expectStatus(t, "Updating", "generation 2")
	// The controller has seen it but the pods still run the old settings.
	writeDSStatus(t)
	out = expectStatus(t, "Updating", "run older settings")
	if !strings.Contains(out, "stale") {
		t.Errorf("status does not mark the old pods stale:\n%s", out)
	}
	createAgentPods(t)
	expectStatus(t, "Running", "2 of 2 agents ready with the current settings")

	checkRBAC(t)

	// Disable: the DaemonSet goes first; the "kubelet" stops its pods, as
	// the agents uninstall themselves; then the rest goes.
	disableDone := make(chan error, 1)
	var disableOut, disableErr string
	go func() {
		var err error
		disableOut, disableErr, err = meshcnictl(ctx, "disable", "--timeout", "60s")
		disableDone <- err
	}()
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := kube.AppsV1().DaemonSets(ns).Get(ctx, ctl.DaemonSetName, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatal("disable did not delete the DaemonSet")
	}
	// RBAC must outlive the agents' shutdown.
	if _, err := kube.RbacV1().ClusterRoles().Get(ctx, "meshcni-agent", metav1.GetOptions{}); err != nil {
		t.Errorf("ClusterRole meshcni-agent deleted while agents still run: %v", err)
	}
	deleteAgentPods(t)
	if err := <-disableDone; err != nil {
		t.Fatalf("disable: %v\n%s\n%s", err, disableOut, disableErr)
	}
	for _, obj := range m.Objects {
		rc := resourceFor(t, dyn, mapper, obj.GetAPIVersion(), obj.GetKind(), obj.GetNamespace())
		got, err := rc.Get(ctx, obj.GetName(), metav1.GetOptions{})
		// No namespace controller here: a deleted namespace stays Terminating.
		if err == nil && !(obj.GetKind() == "Namespace" && got.GetDeletionTimestamp() != nil) {
			t.Errorf("after disable, %s %s still exists", obj.GetKind(), obj.GetName())
		}
	}
	if out := mustRun(t, "status"); !strings.Contains(out, "Status: NotInstalled") {
		t.Errorf("after disable:\n%s", out)
	}
	if out := mustRun(t, "disable"); strings.Contains(out, "meshcni-agent deleted") || !strings.Contains(out, "already being deleted") {
		t.Errorf("second disable:\n%s", out)
	}
}

func expectStatus(t *testing.T, state, reason string) string {
	t.Helper()
	out := mustRun(t, "status")
	if !strings.Contains(out, "Status: "+state+": ") || !strings.Contains(out, reason) {
		t.Fatalf("status: want %s (%s), got:\n%s", state, reason, out)
	}
	return out
}

func getDS(t *testing.T) *appsv1.DaemonSet {
	t.Helper()
	ds, err := cluster.Client.AppsV1().DaemonSets(ns).Get(context.Background(), ctl.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

// createAgentPods replaces the agent pods with ready ones from the current
// template, as the DaemonSet controller and kubelet would.
func createAgentPods(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	deleteAgentPods(t)
	ds := getDS(t)
	for _, node := range agentNodes {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				GenerateName: ds.Name + "-", Namespace: ns,
				Labels: ds.Spec.Template.Labels, Annotations: ds.Spec.Template.Annotations,
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(ds, appsv1.SchemeGroupVersion.WithKind("DaemonSet"))},
			},
			Spec: *ds.Spec.Template.Spec.DeepCopy(),
		}
		pod.Spec.NodeName = node
		created, err := cluster.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create agent pod from the DaemonSet's template: %v", err)
		}
		created.Status.Phase = corev1.PodRunning
		created.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
		if _, err := cluster.Client.CoreV1().Pods(ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
}

func deleteAgentPods(t *testing.T) {
	t.Helper()
	zero := int64(0)
	err := cluster.Client.CoreV1().Pods(ns).DeleteCollection(context.Background(), metav1.DeleteOptions{GracePeriodSeconds: &zero},
		metav1.ListOptions{LabelSelector: ctl.AgentSelector})
	if err != nil {
		t.Fatal(err)
	}
}

// writeDSStatus reports every node's agent updated and ready.
func writeDSStatus(t *testing.T) {
	t.Helper()
	ds := getDS(t)
	n := int32(len(agentNodes))
	ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: ds.Generation, DesiredNumberScheduled: n, CurrentNumberScheduled: n,
		UpdatedNumberScheduled: n, NumberReady: n, NumberAvailable: n}
	if _, err := cluster.Client.AppsV1().DaemonSets(ns).UpdateStatus(context.Background(), ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// checkRBAC asks the API server, with each identity's own token, what it
// may do: the plug-in may get pods and nothing else.
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
			// repairMode repair (the default): no delete, no pods/status.
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
			_ = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 10*time.Second, true, func(ctx context.Context) (bool, error) {
				res, err := client.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, review, metav1.CreateOptions{})
				if err != nil {
					return false, err
				}
				got = res.Status.Allowed
				return got == c.allowed, nil
			})
			if got != c.allowed {
				t.Errorf("%s: %s %s/%s: allowed %v, want %v", tc.sa, c.verb, c.resource, c.sub, got, c.allowed)
			}
		}
	}
	// And a real request as the plug-in, as ADD makes it.
	pod := kubeharness.NewPod("bookinfo", "rbac-probe", "node-a")
	if _, err := cluster.CreatePod(ctx, pod); err != nil {
		t.Fatal(err)
	}
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

func dynamicClients(t *testing.T) (dynamic.Interface, meta.RESTMapper) {
	t.Helper()
	dc, err := discovery.NewDiscoveryClientForConfig(cluster.Config)
	if err != nil {
		t.Fatal(err)
	}
	return dynamic.NewForConfigOrDie(cluster.Config), restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
}

func resourceFor(t *testing.T, dyn dynamic.Interface, mapper meta.RESTMapper, apiVersion, kind, namespace string) dynamic.ResourceInterface {
	t.Helper()
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mapper.RESTMapping(gv.WithKind(kind).GroupKind(), gv.Version)
	if err != nil {
		t.Fatal(err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return dyn.Resource(m.Resource).Namespace(namespace)
	}
	return dyn.Resource(m.Resource)
}

// TestNamespaceFlag: -n is honoured by enable, status and disable, not
// silently ignored.
func TestNamespaceFlag(t *testing.T) {
	ctx := context.Background()
	const other = "mesh-other"
	mustRun(t, "-n", other, "enable")
	if _, err := cluster.Client.AppsV1().DaemonSets(other).Get(ctx, ctl.DaemonSetName, metav1.GetOptions{}); err != nil {
		t.Fatalf("enable -n %s: %v", other, err)
	}
	if _, err := cluster.Client.AppsV1().DaemonSets(ns).Get(ctx, ctl.DaemonSetName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("enable -n %s also installed into %s: %v", other, ns, err)
	}
	if out := mustRun(t, "-n", "elsewhere", "status"); !strings.Contains(out, "NotInstalled") {
		t.Errorf("status -n elsewhere found the install in %s:\n%s", other, out)
	}
	if out := mustRun(t, "-n", other, "status"); !strings.Contains(out, "Status: Updating") {
		t.Errorf("status -n %s:\n%s", other, out)
	}
	mustRun(t, "-n", other, "disable", "--timeout", "30s")
	if _, err := cluster.Client.AppsV1().DaemonSets(other).Get(ctx, ctl.DaemonSetName, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after disable -n %s: %v", other, err)
	}
}
