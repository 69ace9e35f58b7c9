package repair

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	listerv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podspec"
)

// Options configure a Controller.
type Options struct {
	Client   kubernetes.Interface
	NodeName string
	// Pods is a started informer on the node's pods (the agent's one
	// watch, agent.WatchNodePods).
	Pods coreinformers.PodInformer
	Mode Mode
	// Finder and Rules are used in InPlace mode.
	Finder Finder
	Rules  netfilter.Interface
	// Judge decides about pods as the plug-in does: built from the same
	// entry (netconf.Entry.Judge), never from the agent's own flags.
	Judge podspec.Judge
	// MaxAttempts bounds the tries for one failure (default 5).
	MaxAttempts int
	// Registerer receives the controller's metrics; nil: not registered.
	Registerer prometheus.Registerer
	Log        *slog.Logger
}

// Controller repairs the pods of one node. Build it with New, run it with
// Run.
type Controller struct {
	opts     Options
	queue    workqueue.TypedRateLimitingInterface[string]
	pods     listerv1.PodLister
	recorder record.EventRecorder
	actions  *prometheus.CounterVec

	mu   sync.Mutex
	done map[failure]bool // acted on (or given up), never again
}

// New checks the options and builds a controller.
func New(opts Options) (*Controller, error) {
	if opts.Client == nil || opts.NodeName == "" || opts.Pods == nil {
		return nil, errors.New("repair: a client, a node name and a watch of the node's pods are required")
	}
	if opts.Mode == "" {
		opts.Mode = InPlace
	}
	if opts.Mode == InPlace && (opts.Finder == nil || opts.Rules == nil) {
		return nil, errors.New("repair: in-place mode needs a netns finder and a rule programmer")
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 5
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		opts: opts,
		done: map[failure]bool{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, 30*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "meshcni-repair"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshcni_repair_actions_total",
			Help: "Actions on pods found uncaptured, by mode and result (success, failure, gave_up).",
		}, []string{"mode", "result"}),
	}
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(c.actions); err != nil {
			return nil, fmt.Errorf("register repair metrics: %w", err)
		}
	}
	return c, nil
}

// Run watches this node's pods until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.opts.Client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	c.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "meshcni-agent", Host: c.opts.NodeName})

	informer := c.opts.Pods
	c.pods = informer.Lister()
	reg, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: func(_, obj any) { c.enqueue(obj) },
	})
	if err != nil {
		return fmt.Errorf("watch pods: %w", err)
	}
	defer func() { _ = informer.Informer().RemoveEventHandler(reg) }()
	if !cache.WaitForCacheSync(ctx.Done(), reg.HasSynced) {
		return fmt.Errorf("pods of node %s never synced", c.opts.NodeName)
	}
	go func() {
		<-ctx.Done()
		c.queue.ShutDown()
	}()
	for c.next(ctx) {
	}
	return nil
}

func (c *Controller) enqueue(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if f, broken := brokenBy(pod, c.opts.Judge); broken && !c.isDone(f) {
		c.queue.Add(pod.Namespace + "/" + pod.Name)
	}
}

func (c *Controller) isDone(f failure) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done[f]
}

func (c *Controller) markDone(f failure) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done[f] = true
}

func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	ns, name, _ := cache.SplitMetaNamespaceKey(key)
	pod, err := c.pods.Pods(ns).Get(name)
	if err != nil {
		c.queue.Forget(key) // gone
		return true
	}
	f, broken := brokenBy(pod, c.opts.Judge)
	if !broken || c.isDone(f) {
		c.queue.Forget(key)
		return true
	}
	err = c.act(ctx, pod)
	switch {
	case err == nil:
		c.markDone(f)
		c.queue.Forget(key)
		c.actions.WithLabelValues(string(c.opts.Mode), "success").Inc()
	case c.queue.NumRequeues(key)+1 >= c.opts.MaxAttempts:
		c.markDone(f)
		c.queue.Forget(key)
		c.actions.WithLabelValues(string(c.opts.Mode), "gave_up").Inc()
		c.recorder.Eventf(pod, corev1.EventTypeWarning, "RepairFailed",
			"meshcni gave up after %d attempts: %v; delete the pod to recreate it captured", c.opts.MaxAttempts, err)
		c.opts.Log.Error("repair gave up", "pod", key, "mode", c.opts.Mode, "error", err)
	default:
		c.actions.WithLabelValues(string(c.opts.Mode), "failure").Inc()
		c.opts.Log.Warn("repair failed, will retry", "pod", key, "mode", c.opts.Mode, "error", err)
		c.queue.AddRateLimited(key)
	}
	return true
}

// act applies the controller's mode to one broken pod.
func (c *Controller) act(ctx context.Context, pod *corev1.Pod) error {
	key := pod.Namespace + "/" + pod.Name
	switch c.opts.Mode {
	case Delete:
		uid, rv := pod.UID, pod.ResourceVersion
		// Preconditions: a newer pod under the same name is never deleted.
		err := c.opts.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
			Preconditions: &metav1.Preconditions{UID: &uid, ResourceVersion: &rv},
		})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // changed or gone: nothing of this failure left to act on
		}
		if err != nil {
			return fmt.Errorf("delete pod %s: %w", key, err)
		}
		c.recorder.Event(pod, corev1.EventTypeNormal, "RepairDeleted",
			"meshcni deleted the pod: it started before its traffic could be captured; its controller recreates it")
	case Label:
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:"true"}}}`, LabelKey)
		// Through the status subresource, as Istio does: the agent's role
		// may patch pods/status but not pods.
		if _, err := c.opts.Client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}, "status"); err != nil {
			return fmt.Errorf("label pod %s: %w", key, err)
		}
		c.recorder.Eventf(pod, corev1.EventTypeWarning, "Uncaptured",
			"meshcni labeled the pod %s=true: it started before its traffic could be captured", LabelKey)
	default:
		path, err := c.opts.Finder.Find(ctx, pod)
		if err != nil {
			return err
		}
		view, err := podspec.Of(pod)
		if err != nil {
			return fmt.Errorf("pod %s: %w", key, err)
		}
		v, err := c.opts.Judge.Pod(view, podspec.Addrs(view))
		if err != nil {
			c.recorder.Eventf(pod, corev1.EventTypeWarning, "RepairFailed", "meshcni cannot derive the capture spec: %v", err)
			return err
		}
		if !v.Capture {
			return nil // no longer ours (brokenBy judged it a moment ago)
		}
		spec := v.Spec
		if err := c.opts.Rules.Apply(ctx, path, spec); err != nil {
			return fmt.Errorf("program pod %s in %s: %w", key, path, err)
		}
		c.recorder.Eventf(pod, corev1.EventTypeNormal, "Repaired",
			"meshcni programmed the pod's traffic capture in place (%s mode); its validation container passes on restart", spec.Mode)
	}
	c.opts.Log.Info("repaired pod", "pod", key, "mode", c.opts.Mode)
	return nil
}
