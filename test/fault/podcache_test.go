//go:build integration

package fault

import (
	"encoding/json"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
)

// fakeCache serves handler on a Unix socket, as the agent's pod cache
// would, and returns the socket's path.
func fakeCache(t *testing.T, handler http.HandlerFunc) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pods.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return path
}

// The agent's pod cache is a shortcut, never a source of truth the
// plug-in cannot check: whatever the cache does (absent, hanging, failing,
// answering garbage or another pod), ADD asks the API within the cache's
// 200 ms and captures the pod; if the API is down too, ADD fails closed.
func TestPodCacheFaults(t *testing.T) {
	for _, tc := range []struct {
		name    string
		cache   func(t *testing.T, pod *corev1.Pod) string // the socket path
		apiDown bool
	}{
		{name: "no socket", cache: func(t *testing.T, _ *corev1.Pod) string { return filepath.Join(t.TempDir(), "absent.sock") }},
		{name: "hangs", cache: func(t *testing.T, _ *corev1.Pod) string {
			return fakeCache(t, func(w http.ResponseWriter, r *http.Request) { hang(r) })
		}},
		{name: "500", cache: func(t *testing.T, _ *corev1.Pod) string {
			return fakeCache(t, func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "injected", http.StatusInternalServerError)
			})
		}},
		{name: "garbage", cache: func(t *testing.T, _ *corev1.Pod) string {
			return fakeCache(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte(`{"metadata": 42`))
			})
		}},
		{name: "another pod under the name", cache: func(t *testing.T, pod *corev1.Pod) string {
			return fakeCache(t, func(w http.ResponseWriter, r *http.Request) {
				other := pod.DeepCopy()
				other.UID = "00000000-0000-0000-0000-00000000beef"
				other.Annotations["sidecar.istio.io/inject"] = "false" // would skip capture
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(other)
			})
		}},
		{name: "hangs, API down", apiDown: true, cache: func(t *testing.T, _ *corev1.Pod) string {
			return fakeCache(t, func(w http.ResponseWriter, r *http.Request) { hang(r) })
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := meshPod(t, "fault-cache")
			p := newAPIProxy(t, pass)
			kc := p.kubeconfig(t, pluginToken, false)
			if tc.apiDown {
				p.srv.Close()
			}
			n := newNS(t)
			conf := netconf(t, n.Path(), false, map[string]any{"kubeconfig": kc, "lock_dir": t.TempDir(), "pod_cache_socket": tc.cache(t, pod)})
			inv := runPlugin(t, "ADD", n.Path(), k8sArgs(pod.Namespace, pod.Name, string(pod.UID)), conf)
			// cache 1 s + 2 API tries × 300 ms + interval, plus slack.
			if bound := 4 * time.Second; inv.elapsed > bound {
				t.Errorf("ADD took %v, want under %v", inv.elapsed, bound)
			}
			if tc.apiDown {
				if inv.err == nil || inv.err.Code != types.ErrTryAgainLater {
					t.Fatalf("ADD with the cache and the API failing: %+v, want code 11", inv.err)
				}
				assertNoResidue(t, n.Path())
				return
			}
			if inv.err != nil {
				t.Fatalf("ADD: %+v\n%s", inv.err, inv.stderr)
			}
			if p.requests.Load() == 0 {
				t.Error("the plug-in did not ask the API")
			}
			if !strings.Contains(inv.stderr, `"pod_source":"api"`) || !strings.Contains(inv.stderr, `"decision":"captured"`) {
				t.Errorf("want the pod captured from the API's answer; log:\n%s", inv.stderr)
			}
			if len(residue(t, n.Path())) == 0 {
				t.Error("the pod was not captured")
			}
			t.Logf("ADD in %v, %d API requests", inv.elapsed.Round(time.Millisecond), p.requests.Load())
		})
	}
}
