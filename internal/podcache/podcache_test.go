package podcache

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshcni/meshcni/internal/podspec"
)

// fakeStore is a Store over a map.
type fakeStore struct {
	mu     sync.Mutex
	pods   map[string]*podspec.Pod
	synced bool
}

func (s *fakeStore) Pod(ns, name string) *podspec.Pod {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pods[ns+"/"+name]
}

func (s *fakeStore) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

func (s *fakeStore) put(p *podspec.Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods[p.Namespace+"/"+p.Name] = p
}

func pod(ns, name, uid string) *podspec.Pod {
	return &podspec.Pod{
		ObjectMeta: podspec.ObjectMeta{Namespace: ns, Name: name, UID: uid,
			Annotations: map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"}},
		Spec: podspec.PodSpec{Containers: []podspec.Container{{Name: "app"}, {Name: "istio-proxy"}}},
	}
}

// serve runs h on a Unix socket (short path: sun_path holds 108 bytes)
// and returns the socket's path.
func serve(t testing.TB, h http.Handler) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "podcache-")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pods.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
		_ = os.RemoveAll(dir)
	})
	return path
}

type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) observe(r string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[r]++
}

func (c *counter) get(r string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[r]
}

func TestLookup(t *testing.T) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}, synced: true}
	store.put(pod("bookinfo", "reviews", "uid-1"))
	seen := &counter{n: map[string]int{}}
	sock := serve(t, &Handler{Store: store, Wait: 30 * time.Millisecond, Observe: seen.observe})
	c := NewClient(sock)
	ctx := context.Background()

	got, err := c.Pod(ctx, "bookinfo", "reviews", "uid-1")
	if err != nil {
		t.Fatalf("hit: %v", err)
	}
	if got.UID != "uid-1" || got.Annotations["sidecar.istio.io/interceptionMode"] != "TPROXY" || len(got.Spec.Containers) != 2 {
		t.Fatalf("hit decoded wrong: %+v", got)
	}

	for _, tc := range []struct {
		name, ns, pod, uid string
		want               error
		result             string
	}{
		{"absent", "bookinfo", "ratings", "uid-2", ErrNotFound, ResultNotFound},
		{"another UID under that name", "bookinfo", "reviews", "uid-new", ErrStale, ResultStale},
		{"other namespace", "default", "reviews", "uid-1", ErrNotFound, ResultNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := seen.get(tc.result)
			start := time.Now()
			_, err := c.Pod(ctx, tc.ns, tc.pod, tc.uid)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d < 30*time.Millisecond {
				t.Errorf("answered a miss in %v, before waiting for the watch (30ms)", d)
			}
			if seen.get(tc.result) != before+1 {
				t.Errorf("result %q not observed", tc.result)
			}
		})
	}
	if seen.get(ResultHit) != 1 {
		t.Errorf("hits = %d, want 1", seen.get(ResultHit))
	}
}

// A pod that the watch delivers while the request waits is answered.
func TestLookupWaitsForTheWatch(t *testing.T) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}, synced: true}
	store.put(pod("bookinfo", "reviews", "uid-old"))
	sock := serve(t, &Handler{Store: store, Wait: 2 * time.Second})
	time.AfterFunc(50*time.Millisecond, func() { store.put(pod("bookinfo", "reviews", "uid-new")) })
	got, err := NewClient(sock).Pod(context.Background(), "bookinfo", "reviews", "uid-new")
	if err != nil || got.UID != "uid-new" {
		t.Fatalf("got %v, %v; want the recreated pod", got, err)
	}
}

func TestNotSynced(t *testing.T) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}}
	store.put(pod("bookinfo", "reviews", "uid-1"))
	sock := serve(t, &Handler{Store: store})
	if _, err := NewClient(sock).Pod(context.Background(), "bookinfo", "reviews", "uid-1"); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("err = %v, want ErrNotSynced", err)
	}
}

// Failures that are no answer at all are plain errors, quickly.
func TestNoAnswer(t *testing.T) {
	dir := t.TempDir()
	_, err := NewClient(filepath.Join(dir, "absent.sock")).Pod(context.Background(), "a", "b", "c")
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("no socket: err = %v", err)
	}

	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	sock := serve(t, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { <-hang }))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := NewClient(sock).Pod(ctx, "a", "b", "c"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hung agent: err = %v, want a deadline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("hung agent held the client %v", d)
	}
}

// The client checks what it got: an agent that answers with another pod
// is a miss.
func TestClientChecksTheAnswer(t *testing.T) {
	for _, tc := range []struct{ name, ns, pod, uid string }{
		{"other name", "bookinfo", "ratings", "uid-1"},
		{"other namespace", "default", "reviews", "uid-1"},
		{"other UID", "bookinfo", "reviews", "uid-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			liar := pod(tc.ns, tc.pod, tc.uid)
			sock := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _ = writePod(w, liar) }))
			if _, err := NewClient(sock).Pod(context.Background(), "bookinfo", "reviews", "uid-1"); !errors.Is(err, ErrStale) {
				t.Fatalf("err = %v, want ErrStale", err)
			}
		})
	}
}

// Any HTTP client (curl --unix-socket) gets the pod as JSON; malformed
// paths are 400.
func TestPlainHTTP(t *testing.T) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}, synced: true}
	store.put(pod("bookinfo", "reviews", "uid-1"))
	sock := serve(t, &Handler{Store: store, Wait: -1})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	get := func(path string) (int, string, []byte) {
		t.Helper()
		resp, err := hc.Get("http://agent" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), b
	}
	code, ct, body := get("/v1/pods/bookinfo/reviews")
	var p podspec.Pod
	if code != 200 || ct != "application/json" || json.Unmarshal(body, &p) != nil || p.UID != "uid-1" {
		t.Fatalf("GET without uid = %d %s %s", code, ct, body)
	}
	for _, path := range []string{"/v1/pods/bookinfo", "/v1/pods//reviews", "/v1/pods/a/b/c", "/pods/a/b"} {
		if code, _, body := get(path); code != http.StatusBadRequest {
			t.Errorf("GET %s = %d %s, want 400", path, code, body)
		}
	}
}

// BenchmarkLookup is one warm round trip: connect, ask, decode.
func BenchmarkLookup(b *testing.B) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}, synced: true}
	p := pod("bookinfo", "reviews", "uid-1")
	p.Spec.InitContainers = []podspec.Container{{Name: "istio-validation"}}
	store.put(p)
	sock := serve(b, &Handler{Store: store})
	c := NewClient(sock)
	ctx := context.Background()
	for b.Loop() {
		if _, err := c.Pod(ctx, "bookinfo", "reviews", "uid-1"); err != nil {
			b.Fatal(err)
		}
	}
}
