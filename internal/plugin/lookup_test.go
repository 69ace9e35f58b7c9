package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netconf"
	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/internal/podinfo"
	"github.com/meshcni/meshcni/internal/podspec"
)

// fakeCache answers from a map, or with a fixed error; hang makes it
// block until the caller gives up.
type fakeCache struct {
	pods  map[string]*corev1.Pod
	err   error
	hang  bool
	calls int
}

func (f *fakeCache) Pod(ctx context.Context, ns, name, _ string) (*podspec.Pod, error) {
	f.calls++
	if f.hang {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	if f.err != nil {
		return nil, f.err
	}
	if p, ok := f.pods[ns+"/"+name]; ok {
		return podspec.Of(p)
	}
	return nil, podcache.ErrNotFound
}

const cacheConf = `,"podCacheSocket":"/run/meshcni/pods.sock"`

// withCache gives h an agent cache holding pods; h.podSources counts how
// often the plug-in built its API client.
func (h *harness) withCache(pods ...*corev1.Pod) *fakeCache {
	c := &fakeCache{pods: map[string]*corev1.Pod{}}
	for _, p := range pods {
		c.pods[p.Namespace+"/"+p.Name] = p
	}
	h.p.Cache = func(socket string) PodCache {
		if socket != "/run/meshcni/pods.sock" {
			panic("socket " + socket)
		}
		return c
	}
	return c
}

// decision returns the ADD's log record.
func (h *harness) decision(t *testing.T) map[string]any {
	t.Helper()
	for _, l := range strings.Split(h.log.String(), "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) == nil && rec["decision"] != nil {
			return rec
		}
	}
	t.Fatalf("no decision line in %s", h.log)
	return nil
}

// A pod the cache holds with the sandbox's UID is used as is: no API
// client is even built.
func TestAddFromCache(t *testing.T) {
	h := newHarness()
	built := 0
	h.p.API = podinfo.Local{New: func(string, time.Duration) (podinfo.API, error) { built++; return h.pods, nil }}
	c := h.withCache(meshPod("bookinfo", "reviews", func(p *corev1.Pod) {
		p.Annotations[capture.AnnotationInterceptionMode] = "TPROXY"
	}))
	if _, err := h.add(t, cmdArgs("bookinfo", "reviews", "uid-reviews", stdinConf("1.0.0", cacheConf, false))); err != nil {
		t.Fatalf("ADD: %v", err)
	}
	spec, ok := h.rules.Spec("/var/run/netns/reviews")
	if !ok || spec.Mode != capture.TProxy {
		t.Fatalf("captured=%v mode=%s; want the cached pod's TPROXY spec", ok, spec.Mode)
	}
	if c.calls != 1 || h.pods.calls != 0 || built != 0 {
		t.Fatalf("cache asked %d, API asked %d, API client built %d; want 1, 0, 0", c.calls, h.pods.calls, built)
	}
	if d := h.decision(t); d["pod_source"] != "cache" || d["cache_miss"] != nil || d["decision"] != "captured" {
		t.Fatalf("decision line %v", d)
	}
}

// Every answer but a pod with the sandbox's UID sends the plug-in to the
// API, and the API decides.
func TestCacheMissFallsBackToAPI(t *testing.T) {
	api := meshPod("default", "p") // uid-p
	plain := meshPod("default", "p", func(p *corev1.Pod) { p.Spec.Containers[1].Name = "logger"; p.UID = "uid-old" })
	for _, tc := range []struct {
		name  string
		cache func(*fakeCache)
		uid   string
		asked bool
		miss  string
	}{
		{"not found", func(*fakeCache) {}, "uid-p", true, "not on this node"},
		{"not synced", func(c *fakeCache) { c.err = podcache.ErrNotSynced }, "uid-p", true, "not synced"},
		{"stale entry", func(c *fakeCache) { c.err = podcache.ErrStale }, "uid-p", true, "another pod"},
		{"no socket", func(c *fakeCache) { c.err = errors.New("dial unix /run/meshcni/pods.sock: no such file") }, "uid-p", true, "no such file"},
		{"hung agent", func(c *fakeCache) { c.hang = true }, "uid-p", true, "deadline"},
		// A cache that answers with an older pod of that name (here one
		// without a sidecar) must not make the new one start uncaptured.
		{"cache answers another UID", func(c *fakeCache) { c.pods["default/p"] = plain }, "uid-p", true, "another pod"},
		{"no K8S_POD_UID", func(c *fakeCache) { c.pods["default/p"] = plain }, "", false, "no K8S_POD_UID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(api)
			c := h.withCache()
			tc.cache(c)
			start := time.Now()
			if _, err := h.add(t, cmdArgs("default", "p", tc.uid, stdinConf("1.0.0", cacheConf, false))); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if d := time.Since(start); d > 2*podCacheTimeout {
				t.Errorf("ADD took %v; the cache question is bounded by %v", d, podCacheTimeout)
			}
			if _, ok := h.rules.Spec("/var/run/netns/p"); !ok {
				t.Fatal("the API's mesh pod was not captured")
			}
			if (c.calls == 1) != tc.asked || h.pods.calls != 1 {
				t.Fatalf("cache asked %d, API asked %d", c.calls, h.pods.calls)
			}
			d := h.decision(t)
			if miss, _ := d["cache_miss"].(string); d["pod_source"] != "api" || !strings.Contains(miss, tc.miss) {
				t.Fatalf("decision line %v; want pod_source api, cache_miss ~ %q", d, tc.miss)
			}
		})
	}
}

// A cache miss with the API down fails the ADD, as without a cache.
func TestCacheMissWithAPIDownFailsClosed(t *testing.T) {
	h := newHarness()
	h.withCache()
	h.pods.err = errors.New("connection refused")
	_, err := h.add(t, cmdArgs("default", "p", "uid-p", stdinConf("1.0.0", cacheConf, false)))
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater {
		t.Fatalf("got %v, want CNI error 11", err)
	}
	if _, ok := h.rules.Spec("/var/run/netns/p"); ok {
		t.Fatal("rules applied despite the failure")
	}
	if d := h.decision(t); d["pod_source"] != "api" || d["decision"] != "error" {
		t.Fatalf("decision line %v", d)
	}
}

// Without podCacheSocket nothing is asked but the API, and the line
// says so.
func TestNoCacheConfigured(t *testing.T) {
	h := newHarness(meshPod("default", "p"))
	c := h.withCache(meshPod("default", "p"))
	if _, err := h.add(t, cmdArgs("default", "p", "uid-p", stdinConf("1.0.0", "", false))); err != nil {
		t.Fatal(err)
	}
	if c.calls != 0 || h.pods.calls != 1 {
		t.Fatalf("cache asked %d, API %d", c.calls, h.pods.calls)
	}
	if d := h.decision(t); d["pod_source"] != "api" || d["cache_miss"] != nil {
		t.Fatalf("decision line %v", d)
	}
	if _, err := netconf.Parse([]byte(`{"cniVersion":"1.0.0","podCacheSocket":"run/pods.sock"}`)); err == nil ||
		!strings.Contains(err.Error(), "podCacheSocket") {
		t.Fatalf("a relative podCacheSocket: %v", err)
	}
}

// The real client against the real handler on a socket: hit, then the
// socket gone.
func TestCacheOverASocket(t *testing.T) {
	dir, err := os.MkdirTemp("", "meshcni-plugin-") // short: sun_path holds 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "pods.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- (&podcache.Handler{Store: storeOf(meshPod("default", "p"))}).Serve(l) }()
	conf := stdinConf("1.0.0", `,"podCacheSocket":"`+sock+`"`, false)

	h := newHarness(meshPod("default", "p"))
	if _, err := h.add(t, cmdArgs("default", "p", "uid-p", conf)); err != nil {
		t.Fatal(err)
	}
	if d := h.decision(t); d["pod_source"] != "cache" || h.pods.calls != 0 {
		t.Fatalf("API asked %d; decision line %v", h.pods.calls, d)
	}

	_ = l.Close()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	_ = os.Remove(sock)
	h = newHarness(meshPod("default", "p"))
	if _, err := h.add(t, cmdArgs("default", "p", "uid-p", conf)); err != nil {
		t.Fatal(err)
	}
	if d := h.decision(t); d["pod_source"] != "api" || h.pods.calls != 1 {
		t.Fatalf("API asked %d; decision line %v", h.pods.calls, d)
	}
	if _, ok := h.rules.Spec("/var/run/netns/p"); !ok {
		t.Fatal("not captured")
	}
}

type podStore map[string]*corev1.Pod

func storeOf(pods ...*corev1.Pod) podStore {
	s := podStore{}
	for _, p := range pods {
		s[p.Namespace+"/"+p.Name] = p
	}
	return s
}

func (s podStore) Pod(ns, name string) *podcache.Entry {
	p, ok := s[ns+"/"+name]
	if !ok {
		return nil
	}
	v, err := podspec.Of(p)
	if err != nil {
		panic(err)
	}
	e, err := podcache.NewEntry(v)
	if err != nil {
		panic(err)
	}
	return e
}

func (s podStore) Synced() bool { return true }
