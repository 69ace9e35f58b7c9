package agent

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/internal/podspec"
	"github.com/meshcni/meshcni/test/testbed"
)

// The agent serves its watch on pods.sock: a pod as the API has it
// (less managedFields), a recreated pod under its new UID, and the socket
// is gone once the agent's context ends.
func TestPodCacheServesTheWatch(t *testing.T) {
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	o := n.options()
	o.NodeName = "node-1"
	a, err := New(o, slog.New(slog.NewJSONHandler(&testbed.SyncBuffer{}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(a.entry), `"podCacheSocket":"`+o.PodCacheSocketPath()+`"`) {
		t.Fatalf("entry without the pod cache socket: %s", a.entry)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "reviews", UID: "uid-1",
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "app"}, {Name: "istio-proxy"}}},
	}
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil { // Run makes it
		t.Fatal(err)
	}
	cs := fake.NewClientset(pod.DeepCopy())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pods, watchDone := WatchNodePods(ctx, cs, o.NodeName)
	done := a.startPodCache(ctx, pods)

	if fi, err := os.Stat(o.PodCacheSocketPath()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v; want mode 0600", err, fi)
	}
	c := podcache.NewClient(o.PodCacheSocketPath())
	ask := func(uid string) (*podspec.Pod, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.Pod(ctx, "bookinfo", "reviews", uid)
	}
	var got *podspec.Pod
	waitUntil(t, "the cache to sync", func() bool { got, err = ask("uid-1"); return err == nil })
	if len(got.Spec.Containers) != 2 || got.Spec.Containers[1].Name != "istio-proxy" {
		t.Fatalf("cached pod %+v; want its two containers", got)
	}

	// An update reaches the view: it is re-encoded when the watch
	// delivers it, not at the lookup.
	updated := pod.DeepCopy()
	updated.Annotations = map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"}
	if _, err := cs.CoreV1().Pods("bookinfo").Update(ctx, updated, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the update to reach the cache", func() bool {
		got, err = ask("uid-1")
		return err == nil && got.Annotations["sidecar.istio.io/interceptionMode"] == "TPROXY"
	})

	if err := cs.CoreV1().Pods("bookinfo").Delete(ctx, "reviews", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the delete to reach the cache", func() bool { _, err = ask("uid-1"); return errors.Is(err, podcache.ErrNotFound) })
	pod.UID = "uid-2"
	if _, err := cs.CoreV1().Pods("bookinfo").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err = ask("uid-2"); err != nil || got.UID != "uid-2" {
		t.Fatalf("recreated pod: %v, %v", got, err)
	}
	if _, err = ask("uid-1"); !errors.Is(err, podcache.ErrStale) {
		t.Fatalf("the old UID: %v, want ErrStale", err)
	}
	lookups, _ := testutil.GatherAndCount(a.metrics.reg, "meshcni_agent_pod_cache_lookups_total")
	if lookups == 0 {
		t.Error("no meshcni_agent_pod_cache_lookups_total series")
	}

	cancel()
	for _, c := range []<-chan struct{}{done, watchDone} {
		select {
		case <-c:
		case <-time.After(10 * time.Second):
			t.Fatal("the pod cache or its watch did not stop")
		}
	}
	if _, err := os.Lstat(o.PodCacheSocketPath()); !os.IsNotExist(err) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// Without --node-name there is no watch and the entry names no socket.
func TestNoPodCacheWithoutNodeName(t *testing.T) {
	o := DefaultOptions()
	e, err := o.Entry()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(e), "podCacheSocket") {
		t.Fatalf("entry %s", e)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
