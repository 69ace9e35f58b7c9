//go:build integration

package podcache

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/test/testbed"
)

const hits = `meshcni_agent_pod_cache_lookups_total{result="hit"}`

// createPods creates mesh pods ns/app-0.. bound to the testbed node and
// deletes them when the test ends.
func createPods(t testing.TB, ns string, n int) []*corev1.Pod {
	t.Helper()
	var pods []*corev1.Pod
	for i := range n {
		p, err := cluster.CreatePod(context.Background(), testbed.MeshPod(ns, fmt.Sprintf("app-%d", i), 9080))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deletePod(p) })
		pods = append(pods, p)
	}
	return pods
}

func deletePod(p *corev1.Pod) {
	_ = cluster.Client.CoreV1().Pods(p.Namespace).Delete(context.Background(), p.Name,
		metav1.DeleteOptions{GracePeriodSeconds: new(int64), Preconditions: metav1.NewUIDPreconditions(string(p.UID))})
}

// With the agent's watch warm, ADDing mesh pods through the node's chain
// makes no pod GET on the API server, and every pod is captured from
// the cached pod. A pod bound to another node is not in the cache.
func TestWarmCacheMakesNoPodGETs(t *testing.T) {
	e := start(t, false)
	ctx := context.Background()
	const n = 10
	pods := createPods(t, "pc-warm", n)
	elsewhere := testbed.MeshPod("pc-warm", "elsewhere", 9080)
	elsewhere.Spec.NodeName = "node-2"
	elsewhere, err := cluster.CreatePod(ctx, elsewhere)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(elsewhere) })
	for _, p := range pods {
		e.warm(t, p.Namespace, p.Name, p.UID)
	}
	c := podcache.NewClient(e.opts.PodCacheSocketPath())
	if _, err := c.Pod(ctx, "pc-warm", "elsewhere", string(elsewhere.UID)); !errors.Is(err, podcache.ErrNotFound) {
		t.Fatalf("a pod of node-2 in node-1's cache: %v", err)
	}

	hitsBefore := e.agentMetric(t, hits)
	before := podGETs(t)
	began := time.Now()
	var sandboxes []*testbed.Pod
	for _, p := range pods {
		sb, err := e.node.AddPod(ctx, p.Namespace, p.Name, string(p.UID))
		if err != nil {
			t.Fatalf("ADD %s: %v", p.Name, err)
		}
		sandboxes = append(sandboxes, sb)
	}
	took := time.Since(began)
	time.Sleep(100 * time.Millisecond) // a late GET would be counted
	if gets := podGETs(t) - before; gets != 0 {
		t.Fatalf("%d ADDs with a warm cache made %v pod GETs, want 0", n, gets)
	}
	for _, sb := range sandboxes {
		assertCaptured(t, sb)
		if rec := e.decision(t, sb.Namespace+"/"+sb.Name); rec["decision"] != "captured" || rec["pod_source"] != "cache" {
			t.Fatalf("decision %v; want captured from the cache", rec)
		}
	}
	after := e.agentMetric(t, hits)
	t.Logf("%d ADDs through the chain in %v, 0 pod GETs; agent cache hits %s -> %s", n, took.Round(time.Millisecond), hitsBefore, after)
}

// A pod deleted and recreated under the same name while the agent's watch
// lags: the cache still holds the old pod (no sidecar), the sandbox
// carries the new UID (a mesh pod). The plug-in must not take the stale
// entry; it asks the API, once, and captures the pod.
func TestRecreatedPodIsNotConfused(t *testing.T) {
	e := start(t, false)
	ctx := context.Background()
	old := testbed.MeshPod("pc-recreate", "reviews", 9080)
	old.Spec.Containers = old.Spec.Containers[:1] // plain: would be skipped
	old, err := cluster.CreatePod(ctx, old)
	if err != nil {
		t.Fatal(err)
	}
	e.warm(t, old.Namespace, old.Name, old.UID)

	e.proxy.freeze() // the agent's watch stops delivering
	thawed := false
	defer func() {
		if !thawed {
			e.proxy.thaw()
		}
	}()
	deletePod(old)
	recreated, err := cluster.CreatePod(ctx, testbed.MeshPod("pc-recreate", "reviews", 9080))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deletePod(recreated) })
	c := podcache.NewClient(e.opts.PodCacheSocketPath())
	if _, err := c.Pod(ctx, "pc-recreate", "reviews", string(recreated.UID)); !errors.Is(err, podcache.ErrStale) {
		t.Fatalf("the frozen cache answered %v; want ErrStale (it holds %s)", err, old.UID)
	}

	before := podGETs(t)
	sb, err := e.node.AddPod(ctx, recreated.Namespace, recreated.Name, string(recreated.UID))
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	assertCaptured(t, sb)
	rec := e.decision(t, "pc-recreate/reviews")
	if miss, _ := rec["cache_miss"].(string); rec["decision"] != "captured" || rec["pod_source"] != "api" || !strings.Contains(miss, "another pod") {
		t.Fatalf("decision %v; want captured, from the API after a stale cache answer", rec)
	}
	waitFor(t, 2*time.Second, "the plug-in's GET in the API server's metrics", func() bool { return podGETs(t)-before >= 1 })
	if gets := podGETs(t) - before; gets != 1 {
		t.Fatalf("%v pod GETs, want 1", gets)
	}

	e.proxy.thaw()
	thawed = true
	e.warm(t, recreated.Namespace, recreated.Name, recreated.UID) // the watch catches up
}

// With the agent stopped (--keep-on-exit: the entry stays, the socket
// goes), ADD still works, one pod GET each.
func TestStoppedAgentFallsBackToAPI(t *testing.T) {
	e := start(t, true)
	ctx := context.Background()
	const n = 5
	pods := createPods(t, "pc-fallback", n)
	e.warm(t, pods[0].Namespace, pods[0].Name, pods[0].UID)
	e.stop()
	if _, err := os.Lstat(e.opts.PodCacheSocketPath()); !os.IsNotExist(err) {
		t.Fatalf("the pod cache socket outlived the agent: %v", err)
	}

	before := podGETs(t)
	var sandboxes []*testbed.Pod
	for _, p := range pods {
		sb, err := e.node.AddPod(ctx, p.Namespace, p.Name, string(p.UID))
		if err != nil {
			t.Fatalf("ADD %s with the agent stopped: %v", p.Name, err)
		}
		sandboxes = append(sandboxes, sb)
	}
	waitFor(t, 2*time.Second, "the plug-in's GETs in the API server's metrics", func() bool { return podGETs(t)-before >= n })
	time.Sleep(100 * time.Millisecond)
	if gets := podGETs(t) - before; gets != n {
		t.Fatalf("%d ADDs made %v pod GETs, want %d", n, gets, n)
	}
	for _, sb := range sandboxes {
		assertCaptured(t, sb)
		rec := e.decision(t, sb.Namespace+"/"+sb.Name)
		if miss, _ := rec["cache_miss"].(string); rec["decision"] != "captured" || rec["pod_source"] != "api" || !strings.Contains(miss, "no such file") {
			t.Fatalf("decision %v; want captured from the API, the socket missing", rec)
		}
	}
}
