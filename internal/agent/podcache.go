package agent

import (
	"context"
	"net"
	"path/filepath"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/internal/podspec"
)

// PodCacheSocketPath is where the agent serves its watch of the node's
// pods to the plug-in (with --node-name).
func (o *Options) PodCacheSocketPath() string { return filepath.Join(o.RunDir, "pods.sock") }

// NodePods is the agent's one watch of its node's pods: the pod cache
// answers from it (it is a podcache.Store) and the repair controller
// reacts to it, so the node costs the API server one LIST and one watch.
type NodePods struct {
	Informer coreinformers.PodInformer
	synced   func() bool

	mu sync.RWMutex
	// entries is the pods' view for the plug-in, encoded when the watch
	// delivers a pod: a lookup then does no JSON work (podcache.Entry).
	entries map[string]*podcache.Entry
}

// Pod returns meshcni's view of the pod, the fields the plug-in reads.
func (s *NodePods) Pod(namespace, name string) *podcache.Entry {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.entries[namespace+"/"+name]
}

// Synced reports whether the view holds every pod of the first LIST.
func (s *NodePods) Synced() bool { return s.synced() }

// set encodes a pod the watch delivered. One that cannot be encoded is
// dropped: the plug-in then asks the API, which decides.
func (s *NodePods) set(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := p.Namespace + "/" + p.Name
	var e *podcache.Entry
	if v, err := podspec.Of(p); err == nil {
		e, _ = podcache.NewEntry(v)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e == nil {
		delete(s.entries, key)
		return
	}
	s.entries[key] = e
}

func (s *NodePods) forget(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.entries, key)
}

// WatchNodePods starts an informer on the pods bound to node; it stops
// when ctx ends, and the returned channel closes once it has. The objects
// are kept without managedFields, which the plug-in never reads and which
// are a large part of a pod.
func WatchNodePods(ctx context.Context, cs kubernetes.Interface, node string) (*NodePods, <-chan struct{}) {
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=" + node }),
		informers.WithTransform(func(obj any) (any, error) {
			if p, ok := obj.(*corev1.Pod); ok {
				p.ManagedFields = nil
			}
			return obj, nil
		}))
	inf := factory.Core().V1().Pods()
	s := &NodePods{Informer: inf, entries: map[string]*podcache.Entry{}}
	reg, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    s.set,
		UpdateFunc: func(_, cur any) { s.set(cur) },
		DeleteFunc: s.forget,
	})
	if err != nil {
		// Only a stopped informer refuses a handler, and this one has not
		// started: never synced, the plug-in asks the API.
		s.synced = func() bool { return false }
	} else {
		s.synced = reg.HasSynced
	}
	factory.Start(ctx.Done())
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-ctx.Done()
		factory.Shutdown()
	}()
	return s, done
}

// startPodCache serves this node's pods on PodCacheSocketPath until ctx
// ends; the returned channel closes once the socket is gone. Without the
// socket the plug-in asks the API, so a failure here is logged, not
// fatal.
func (a *Agent) startPodCache(ctx context.Context, store *NodePods) <-chan struct{} {
	done := make(chan struct{})
	path := a.opts.PodCacheSocketPath()
	sock, err := listenUnix("pod cache socket", path)
	if err != nil {
		a.log.Error("pod cache not served; the plug-in asks the API for every pod", "error", err)
		close(done)
		return done
	}
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshcni_agent_pod_cache_lookups_total",
		Help: "Pod lookups on the agent's cache, by result (hit; not_found, stale, not_synced: the plug-in asked the API; refused: the peer was not root)."},
		[]string{"result"})
	for _, r := range []string{podcache.ResultHit, podcache.ResultNotFound, podcache.ResultStale, podcache.ResultNotSynced, resultRefused} {
		lookups.WithLabelValues(r)
	}
	if err := a.metrics.reg.Register(lookups); err != nil {
		a.log.Warn("pod cache metrics not registered", "error", err)
	}
	h := &podcache.Handler{Store: store, Observe: func(r string) { lookups.WithLabelValues(r).Inc() }}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := h.Serve(rootOnly{sock.l, func() { lookups.WithLabelValues(resultRefused).Inc() }}); err != nil {
			a.log.Error("pod cache socket stopped serving", "error", err)
		}
	}()
	go func() {
		defer close(done)
		if cache.WaitForCacheSync(ctx.Done(), store.Synced) {
			a.log.Info("serving this node's pods to the plug-in", "socket", path, "node", a.opts.NodeName)
		}
		<-ctx.Done()
		// Serve returns once the lookups in flight are answered.
		_ = sock.l.Close()
		<-served
		sock.close()
	}()
	return done
}

const resultRefused = "refused"

// rootOnly accepts only connections from root (SO_PEERCRED), as the log
// socket does: the pods of the node are for the plug-in, even if the
// socket file is made reachable by mistake.
type rootOnly struct {
	*net.UnixListener
	refused func()
}

func (l rootOnly) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		if cred, err := peerCred(c); err == nil && cred.Uid == 0 {
			return c, nil
		}
		_ = c.Close()
		l.refused()
	}
}
