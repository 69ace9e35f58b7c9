// Package controller is meshcni-controller: it keeps the node side (the
// agent DaemonSet, its ConfigMap, identities and RBAC) in line with the
// MeshCNI resource "default", and reports the rollout in its status.
//
// Built on client-go informers and a work queue rather than
// controller-runtime: one resource, one key, five informers; the module
// graph already has client-go at the release the rest of meshcni uses,
// while controller-runtime's releases served here (v0.23+) require newer
// k8s.io modules than the whole project builds against.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	clientscheme "k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/rollout"
)

// FieldManager owns every field the controller applies.
const FieldManager = "meshcni-controller"

// Finalizer holds a deleted MeshCNI until the node side is removed and
// every node's startup taint is lifted.
const Finalizer = "meshcni.io/uninstall"

// StartupTaint is the taint nodes register with; each agent removes its
// own when ready, the controller removes all of them when disabled.
const StartupTaint = "meshcni.io/agent-not-ready"

// AgentSelector selects the agent pods.
const AgentSelector = chart.AgentSelector

// Options configure a Controller.
type Options struct {
	// Namespace holds the node side: the controller's own.
	Namespace string
	// DefaultImage is the agent image when the spec leaves it empty: the
	// controller's own version.
	DefaultImage string
	// Log is where the controller logs; nil: slog.Default().
	Log *slog.Logger
}

// Controller reconciles the one MeshCNI.
type Controller struct {
	opts Options
	log  *slog.Logger
	kube kubernetes.Interface
	dyn  dynamic.Interface

	meshInf  cache.SharedIndexInformer
	nsInf    informers.SharedInformerFactory
	nodeInf  informers.SharedInformerFactory
	dynInf   dynamicinformer.DynamicSharedInformerFactory
	dsList   appslisters.DaemonSetLister
	cmList   corelisters.ConfigMapLister
	podList  corelisters.PodLister
	nodeList corelisters.NodeLister

	queue    workqueue.TypedRateLimitingInterface[string]
	events   record.EventBroadcaster
	recorder record.EventRecorder
}

// New builds a controller from cfg; Run starts it.
func New(cfg *rest.Config, opts Options) (*Controller, error) {
	if opts.Namespace == "" {
		return nil, errors.New("controller: no namespace (set POD_NAMESPACE or --namespace)")
	}
	c := &Controller{opts: opts, log: opts.Log}
	if c.log == nil {
		c.log = slog.Default()
	}
	var err error
	if c.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if c.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		return nil, err
	}
	// Informers: the resource (only "default"), the node side's
	// namespace, and the nodes (the agents' coverage and the taints).
	c.dynInf = dynamicinformer.NewFilteredDynamicSharedInformerFactory(c.dyn, 0, "", func(o *metav1.ListOptions) {
		o.FieldSelector = "metadata.name=" + v1alpha1.Name
	})
	c.meshInf = c.dynInf.ForResource(v1alpha1.GroupVersionResource).Informer()
	c.nsInf = informers.NewSharedInformerFactoryWithOptions(c.kube, 0, informers.WithNamespace(opts.Namespace),
		informers.WithTransform(noManagedFields))
	c.nodeInf = informers.NewSharedInformerFactoryWithOptions(c.kube, 0, informers.WithTransform(slimNode))
	c.dsList = c.nsInf.Apps().V1().DaemonSets().Lister()
	c.cmList = c.nsInf.Core().V1().ConfigMaps().Lister()
	c.podList = c.nsInf.Core().V1().Pods().Lister()
	c.nodeList = c.nodeInf.Core().V1().Nodes().Lister()

	// One key: every event asks for one reconcile of "default"; the
	// queue folds bursts (a rollout's pod updates) into one.
	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "meshcni"})
	enqueue := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.queue.Add(v1alpha1.Name) },
		UpdateFunc: func(any, any) { c.queue.Add(v1alpha1.Name) },
		DeleteFunc: func(any) { c.queue.Add(v1alpha1.Name) },
	}
	for _, inf := range []cache.SharedIndexInformer{
		c.meshInf,
		c.nsInf.Apps().V1().DaemonSets().Informer(),
		c.nsInf.Core().V1().ConfigMaps().Informer(),
		c.nsInf.Core().V1().Pods().Informer(),
	} {
		if _, err := inf.AddEventHandler(enqueue); err != nil {
			return nil, err
		}
	}
	// Not every kubelet heartbeat: only a Node update that can change a
	// reconcile (nodeMatters).
	nodeEvents := enqueue
	nodeEvents.UpdateFunc = func(old, cur any) {
		if nodeMatters(old, cur) {
			c.queue.Add(v1alpha1.Name)
		}
	}
	if _, err := c.nodeInf.Core().V1().Nodes().Informer().AddEventHandler(nodeEvents); err != nil {
		return nil, err
	}

	scheme := runtime.NewScheme()
	if err := clientscheme.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c.events = record.NewBroadcaster()
	c.recorder = c.events.NewRecorder(scheme, corev1.EventSource{Component: FieldManager})
	return c, nil
}

// Run starts the informers and reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	c.events.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.kube.CoreV1().Events("")})
	defer c.events.Shutdown()
	defer c.queue.ShutDown()
	c.dynInf.Start(ctx.Done())
	c.nsInf.Start(ctx.Done())
	c.nodeInf.Start(ctx.Done())
	for _, synced := range []func(<-chan struct{}) bool{
		func(stop <-chan struct{}) bool { return cache.WaitForCacheSync(stop, c.meshInf.HasSynced) },
		func(stop <-chan struct{}) bool { return allSynced(c.nsInf.WaitForCacheSync(stop)) },
		func(stop <-chan struct{}) bool { return allSynced(c.nodeInf.WaitForCacheSync(stop)) },
	} {
		if !synced(ctx.Done()) {
			return fmt.Errorf("informers did not sync: %w", context.Cause(ctx))
		}
	}
	c.log.Info("controller started", "namespace", c.opts.Namespace)
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	c.queue.Add(v1alpha1.Name)
	for c.next(ctx) {
	}
	defer c.dynInf.Shutdown()
	defer c.nsInf.Shutdown()
	defer c.nodeInf.Shutdown()
	return nil
}

func allSynced[K comparable](m map[K]bool) bool {
	for _, ok := range m {
		if !ok {
			return false
		}
	}
	return true
}

func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	again, err := c.observedReconcile(ctx)
	switch {
	case apierrors.IsConflict(err):
		// Our cache was behind a write; the watch event is on its way.
		c.log.Debug("reconcile: conflict, retrying", "err", err)
		c.queue.AddRateLimited(key)
	case err != nil:
		c.log.Error("reconcile", "err", err)
		c.queue.AddRateLimited(key)
	case again:
		// Waiting on something no informer here watches (the objects
		// just deleted): look again shortly.
		c.queue.AddAfter(key, time.Second)
	default:
		c.queue.Forget(key)
	}
	return true
}

// reconcile brings the node side to the spec and writes the status. It
// returns again=true to be called once more without an error.
func (c *Controller) reconcile(ctx context.Context) (again bool, err error) {
	obj, exists, err := c.meshInf.GetStore().GetByKey(v1alpha1.Name)
	if err != nil || !exists {
		return false, err
	}
	mc := &v1alpha1.MeshCNI{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.(*unstructured.Unstructured).Object, mc); err != nil {
		return false, fmt.Errorf("decode MeshCNI %s: %w", v1alpha1.Name, err)
	}
	mc.SetGroupVersionKind(v1alpha1.SchemeGroupVersion.WithKind(v1alpha1.Kind))

	if mc.DeletionTimestamp != nil {
		left, err := c.uninstall(ctx)
		if err != nil || len(left) > 0 {
			return len(left) > 0, err
		}
		return false, c.setFinalizer(ctx, mc, false)
	}
	if !slices.Contains(mc.Finalizers, Finalizer) {
		// The update comes back through the informer as a new event.
		return false, c.setFinalizer(ctx, mc, true)
	}

	o := Observed{Generation: mc.Generation, Enabled: mc.Spec.IsEnabled()}
	if o.Enabled {
		var applied *appsv1.DaemonSet
		o.SettingsHash, applied, o.Err = c.install(ctx, mc)
		if o.Err == nil {
			o.Report, o.Err = c.assess(applied)
		}
	} else {
		o.Leftovers, o.Err = c.uninstall(ctx)
		again = len(o.Leftovers) > 0
	}
	if o.Err != nil {
		c.log.Error("reconcile", "err", o.Err)
	}
	st := Status(o, mc.Status.Conditions)
	return again, c.writeStatus(ctx, mc, st)
}

// install renders the node side from the spec and applies it; it returns
// the settings hash the agents must run and the DaemonSet as the API
// server holds it after the apply.
func (c *Controller) install(ctx context.Context, mc *v1alpha1.MeshCNI) (string, *appsv1.DaemonSet, error) {
	vals, err := Values(mc.Spec, c.opts.Namespace, c.opts.DefaultImage)
	if err != nil {
		return "", nil, err
	}
	m, err := chart.Render(vals, c.opts.Namespace, FieldManager)
	if err != nil {
		return "", nil, err
	}
	var applied *appsv1.DaemonSet
	owner := metav1.OwnerReference{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: v1alpha1.Kind, Name: mc.Name, UID: mc.UID, Controller: ptr(true)}
	hash := ""
	for i, obj := range m.Objects {
		if !chart.IsNodeSide(m.Sources[i]) {
			continue
		}
		if obj.GetKind() == "DaemonSet" {
			hash, _, _ = unstructured.NestedString(obj.Object, "spec", "template", "metadata", "annotations", chart.ConfigHashAnnotation)
		}
		// Deleting the MeshCNI lets the garbage collector take what the
		// finalizer did not (it runs first, in order).
		obj.SetOwnerReferences([]metav1.OwnerReference{owner})
		rc, err := c.resource(obj)
		if err != nil {
			return "", nil, err
		}
		// Force: the controller owns these objects; it takes back a field
		// someone edited, as it would re-create an object someone deleted.
		got, err := rc.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
		if err != nil {
			return "", nil, fmt.Errorf("apply %s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		if obj.GetKind() == "DaemonSet" {
			applied = &appsv1.DaemonSet{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(got.Object, applied); err != nil {
				return "", nil, fmt.Errorf("decode DaemonSet %s: %w", obj.GetName(), err)
			}
		}
	}
	return hash, applied, nil
}

// assess judges the rollout from the informers' caches, and from applied,
// the DaemonSet the apply just returned, when the cache has not caught up
// with it: right after a settings or image change the cache still holds
// the old, fully rolled DaemonSet, and judging that would report Running
// for the new generation before any agent rolled.
func (c *Controller) assess(applied *appsv1.DaemonSet) (rollout.Report, error) {
	ds, err := c.dsList.DaemonSets(c.opts.Namespace).Get(chart.DaemonSetName)
	switch {
	case applied != nil && (err != nil || applied.Generation > ds.Generation):
		ds, err = applied, nil
	case apierrors.IsNotFound(err):
		return rollout.Assess(nil, false, nil, nil), nil
	case err != nil:
		return rollout.Report{}, err
	}
	_, err = c.cmList.ConfigMaps(c.opts.Namespace).Get(chart.ConfigMapName)
	cmFound := err == nil
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		return rollout.Report{}, fmt.Errorf("DaemonSet %s: selector: %w", ds.Name, err)
	}
	pods, err := c.podList.Pods(c.opts.Namespace).List(sel)
	if err != nil {
		return rollout.Report{}, err
	}
	nodes, err := c.nodeList.List(labels.Everything())
	if err != nil {
		return rollout.Report{}, err
	}
	return rollout.Assess(ds, cmFound, deref(pods), deref(nodes)), nil
}

func deref[T any](l []*T) []T {
	out := make([]T, len(l))
	for i, p := range l {
		out[i] = *p
	}
	return out
}

// uninstall removes the node side in order: the DaemonSet, then (once
// every agent pod is gone, so each could still read its DaemonSet and
// uninstall the plug-in from its node) the rest, then the nodes' startup
// taints. It returns what is still left.
func (c *Controller) uninstall(ctx context.Context) (left []string, err error) {
	ns := c.opts.Namespace
	if _, err := c.dsList.DaemonSets(ns).Get(chart.DaemonSetName); err == nil {
		err := c.kube.AppsV1().DaemonSets(ns).Delete(ctx, chart.DaemonSetName, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("delete DaemonSet %s: %w", chart.DaemonSetName, err)
		}
		return []string{"DaemonSet " + chart.DaemonSetName}, nil
	}
	sel, _ := labels.Parse(AgentSelector)
	pods, err := c.podList.Pods(ns).List(sel)
	if err != nil {
		return nil, err
	}
	if len(pods) > 0 {
		for _, p := range pods {
			left = append(left, fmt.Sprintf("agent pod %s on %s", p.Name, p.Spec.NodeName))
		}
		slices.Sort(left)
		return left, nil
	}
	// The rest, as every platform renders it (gke adds the quota).
	m, err := chart.Render(map[string]any{"nodeSide": true, "platform": "gke"}, ns, FieldManager)
	if err != nil {
		return nil, err
	}
	for i, obj := range m.Objects {
		if !chart.IsNodeSide(m.Sources[i]) || obj.GetKind() == "DaemonSet" {
			continue
		}
		rc, err := c.resource(obj)
		if err != nil {
			return nil, err
		}
		if _, err := rc.Get(ctx, obj.GetName(), metav1.GetOptions{}); apierrors.IsNotFound(err) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("get %s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		if err := rc.Delete(ctx, obj.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("delete %s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
	}
	nodes, err := c.nodeList.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	for _, n := range nodes {
		if !hasTaint(n) {
			continue
		}
		if err := c.untaint(ctx, n.Name); err != nil {
			return nil, err
		}
		// The informer shows the node untainted soon; until then it is left.
		left = append(left, "the startup taint of node "+n.Name)
	}
	return left, nil
}

func hasTaint(n *corev1.Node) bool {
	return slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == StartupTaint })
}

// untaint removes the startup taint, read-modify-write with the
// resourceVersion so that a concurrent change to other taints is kept.
func (c *Controller) untaint(ctx context.Context, name string) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := c.kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if !hasTaint(n) {
			return nil
		}
		n.Spec.Taints = slices.DeleteFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == StartupTaint })
		if _, err := c.kube.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
			return err
		}
		c.log.Info("removed the startup taint", "node", name)
		return nil
	})
}

func (c *Controller) setFinalizer(ctx context.Context, mc *v1alpha1.MeshCNI, on bool) error {
	fin := slices.DeleteFunc(slices.Clone(mc.Finalizers), func(f string) bool { return f == Finalizer })
	if on {
		fin = append(fin, Finalizer)
	}
	u := &unstructured.Unstructured{}
	u.SetGroupVersionKind(mc.GroupVersionKind())
	u.SetName(mc.Name)
	u.SetResourceVersion(mc.ResourceVersion)
	u.SetFinalizers(fin)
	// A merge patch carrying the resourceVersion: it fails on a
	// conflict instead of dropping someone else's finalizer.
	data, err := u.MarshalJSON()
	if err != nil {
		return err
	}
	_, err = c.dyn.Resource(v1alpha1.GroupVersionResource).Patch(ctx, mc.Name, "application/merge-patch+json", data, metav1.PatchOptions{FieldManager: FieldManager})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// writeStatus updates the status subresource when it changed, and records
// an Event on every phase change.
func (c *Controller) writeStatus(ctx context.Context, mc *v1alpha1.MeshCNI, st v1alpha1.MeshCNIStatus) error {
	if equality.Semantic.DeepEqual(mc.Status, st) {
		return nil
	}
	prev := mc.Status.Phase
	next := mc.DeepCopy()
	next.Status = st
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(next)
	if err != nil {
		return err
	}
	if _, err := c.dyn.Resource(v1alpha1.GroupVersionResource).UpdateStatus(ctx, &unstructured.Unstructured{Object: u}, metav1.UpdateOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	if prev != st.Phase {
		typ := corev1.EventTypeNormal
		if st.Phase == v1alpha1.PhaseDegraded {
			typ = corev1.EventTypeWarning
		}
		msg := st.Phase
		if st.Message != "" {
			msg += ": " + st.Message
		}
		c.recorder.Event(mc, typ, st.Phase, msg)
		c.log.Info("phase", "from", prev, "to", st.Phase, "message", st.Message)
	}
	return nil
}

// kinds maps the node side's kinds to their resources; a kind the chart
// gains must be added here (and to the controller's RBAC).
var kinds = map[string]schema.GroupVersionResource{
	"ServiceAccount":     {Version: "v1", Resource: "serviceaccounts"},
	"Secret":             {Version: "v1", Resource: "secrets"},
	"ConfigMap":          {Version: "v1", Resource: "configmaps"},
	"ResourceQuota":      {Version: "v1", Resource: "resourcequotas"},
	"DaemonSet":          {Group: "apps", Version: "v1", Resource: "daemonsets"},
	"ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"Role":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"RoleBinding":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
}

func (c *Controller) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvr, ok := kinds[obj.GetKind()]
	if !ok || gvr.GroupVersion().String() != obj.GetAPIVersion() {
		return nil, fmt.Errorf("the chart renders %s %s, which meshcni-controller does not manage", obj.GetAPIVersion(), obj.GetKind())
	}
	if obj.GetNamespace() != "" {
		return c.dyn.Resource(gvr).Namespace(obj.GetNamespace()), nil
	}
	return c.dyn.Resource(gvr), nil
}

func ptr[T any](v T) *T { return &v }
