//go:build integration

package fault

import (
	"bufio"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/test/testbed"
)

// fakeCache listens on a Unix socket as the agent's pod cache would and,
// for each connection, reads the plug-in's request line and hands the
// connection to answer; it returns the socket's path.
func fakeCache(t *testing.T, answer func(c net.Conn)) string {
	t.Helper()
	return fakeCacheIn(t, t.TempDir(), answer)
}

// fakeCacheIn is fakeCache with its socket, pods.sock, in dir.
func fakeCacheIn(t *testing.T, dir string, answer func(c net.Conn)) string {
	t.Helper()
	path := filepath.Join(dir, "pods.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
					answer(c)
				}
			}()
		}
	}()
	return path
}

// says answers with a fixed text.
func says(text string) func(net.Conn) {
	return func(c net.Conn) { _, _ = c.Write([]byte(text)) }
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
			return fakeCache(t, func(net.Conn) { time.Sleep(10 * time.Second) })
		}},
		{name: "fails", cache: func(t *testing.T, _ *corev1.Pod) string {
			return fakeCache(t, says(`{"result":"error","error":"injected"}`+"\n"))
		}},
		{name: "garbage", cache: func(t *testing.T, _ *corev1.Pod) string {
			return fakeCache(t, says(`{"result":"hit","pod":{"metadata": 42`+"\n"))
		}},
		{name: "speaks HTTP (an agent from before the line protocol)", cache: func(t *testing.T, _ *corev1.Pod) string {
			return fakeCache(t, says("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"))
		}},
		{name: "another pod under the name", cache: func(t *testing.T, pod *corev1.Pod) string {
			other := pod.DeepCopy()
			other.UID = "00000000-0000-0000-0000-00000000beef"
			other.Annotations["sidecar.istio.io/inject"] = "false" // would skip capture
			line, err := json.Marshal(map[string]any{"result": "hit", "pod": other})
			if err != nil {
				t.Fatal(err)
			}
			return fakeCache(t, says(string(line)+"\n"))
		}},
		{name: "hangs, API down", apiDown: true, cache: func(t *testing.T, _ *corev1.Pod) string {
			return fakeCache(t, func(net.Conn) { time.Sleep(10 * time.Second) })
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
			conf := netconf(t, n.Path(), false, map[string]any{"kubeconfig": kc, "lockDir": t.TempDir(), "podCacheSocket": tc.cache(t, pod)})
			inv := runPlugin(t, "ADD", n.Path(), k8sArgs(pod.Namespace, pod.Name, string(pod.UID)), conf)
			// cache 1 s + 2 API tries × 300 ms + interval, plus slack.
			if bound := 4 * time.Second; inv.elapsed > bound {
				t.Errorf("ADD took %v, want under %v", inv.elapsed, bound)
			}
			if !strings.Contains(inv.stderr, `"cache_miss":`) {
				t.Errorf("the log does not say why the cache did not answer:\n%s", inv.stderr)
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

// When the cache cannot answer, the pod comes from the meshcni-lookup
// helper beside the plug-in. A helper that is missing, hangs or dies
// fails the ADD, with no rules: the pod must not start uncaptured.
func TestLookupHelperFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		helper string // the helper's script; "" for none
		code   uint
		msg    string
	}{
		{name: "missing", code: types.ErrTryAgainLater, msg: "meshcni-lookup is missing"},
		{name: "hangs", helper: "#!/bin/sh\nexec sleep 60\n", code: types.ErrTryAgainLater, msg: "did not finish"},
		{name: "dies", helper: "#!/bin/sh\nkill -9 $$\n", code: types.ErrInternal, msg: "meshcni-lookup failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bin := filepath.Join(dir, "meshcni")
			if err := testbed.CopyExecutable(pluginBin, bin); err != nil {
				t.Fatal(err)
			}
			if tc.helper != "" {
				if err := os.WriteFile(filepath.Join(dir, "meshcni-lookup"), []byte(tc.helper), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			pod := meshPod(t, "fault-helper")
			p := newAPIProxy(t, pass)
			n := newNS(t)
			conf := netconf(t, n.Path(), false, map[string]any{"kubeconfig": p.kubeconfig(t, pluginToken, false), "lockDir": t.TempDir()})
			inv := runBinaryIn(t, bin, "", "ADD", n.Path(), k8sArgs(pod.Namespace, pod.Name, string(pod.UID)), conf)
			if inv.err == nil || inv.err.Code != tc.code || !strings.Contains(inv.err.Msg, tc.msg) {
				t.Fatalf("ADD: %+v, want code %d with %q", inv.err, tc.code, tc.msg)
			}
			if bound := 10 * time.Second; inv.elapsed > bound {
				t.Errorf("ADD took %v, want under %v", inv.elapsed, bound)
			}
			if got := p.requests.Load(); got != 0 {
				t.Errorf("the API saw %d requests; only the helper asks it", got)
			}
			assertNoResidue(t, n.Path())
			t.Logf("failed in %v: %s", inv.elapsed.Round(time.Millisecond), inv.err.Msg)
		})
	}
}
