//go:build integration

package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshcni/meshcni/internal/plugin"
	"github.com/meshcni/meshcni/internal/podinfo"
	"github.com/meshcni/meshcni/internal/podspec"
)

// mapPods is the API server of these tests: the lookup is not what they
// test, the plug-in's programming of a real netns and its report are.
type mapPods map[string]*corev1.Pod

func (m mapPods) GetPod(_ context.Context, ns, name string) (*podspec.Pod, error) {
	if p, ok := m[ns+"/"+name]; ok {
		return podspec.Of(p)
	}
	return nil, &podinfo.APIError{Code: http.StatusNotFound, Reason: "NotFound", Message: fmt.Sprintf("pods %q not found", name)}
}

func (mapPods) Ready(context.Context) error { return nil }

func sidecarPod(namespace, name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, UID: types.UID("uid-" + name)},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, {Name: "istio-proxy"}}},
	}
}

// addInNetns runs the plug-in's ADD in process, as the runtime would run
// its binary, against a new netns it removes afterwards; the rules go
// into that netns through the real Applier.
func addInNetns(t *testing.T, pods mapPods, conf map[string]any, namespace, name string) error {
	t.Helper()
	netns, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = netns.Close()
		_ = testutils.UnmountNS(netns)
	})
	if err := netns.Do(func(ns.NetNS) error { return nil }); err != nil {
		t.Fatal(err)
	}
	conf["prevResult"] = map[string]any{"cniVersion": "1.0.0",
		"interfaces": []any{map[string]any{"name": "eth0", "sandbox": netns.Path()}},
		"ips":        []any{map[string]any{"address": "10.22.0.5/16", "interface": 0}}}
	data, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	p := &plugin.Plugin{API: podinfo.Local{New: func(string, time.Duration) (podinfo.API, error) { return pods, nil }}}
	args := &skel.CmdArgs{ContainerID: "c-" + name, Netns: netns.Path(), IfName: "eth0", StdinData: data,
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + namespace + ";K8S_POD_NAME=" + name + ";K8S_POD_UID=uid-" + name}
	_, _, err = testutils.CmdAddWithArgs(args, func() error { return p.CmdAdd(args) })
	return err
}

func pluginEntry(t *testing.T, socket, backend string) map[string]any {
	return map[string]any{"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "meshcni",
		"kubeconfig": "/nonexistent", "excludeNamespaces": []string{"kube-system"}, "logLevel": "error",
		"podLookupRetries": 1, "podLookupInterval": "1ms", "logSocket": socket,
		"lockDir": t.TempDir(), "iptablesBackend": backend}
}

// The plug-in, run for real into real netns, reports each ADD's duration
// and outcome over the log socket, and the agent exports them: the
// histogram by decision and backend (the backend that programmed the pod,
// as the kernel got it) and the counter by decision and reason. The
// plug-in's log level (error) holds none of it back.
func TestAddMetricsFromRealAdds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	o := n.options()
	r := start(t, o)
	r.waitInstalled(t, 5*time.Second)
	sock := o.SocketPath()
	pods := mapPods{"shop/a": sidecarPod("shop", "a"), "shop/b": sidecarPod("shop", "b"), "kube-system/dns": sidecarPod("kube-system", "dns")}

	for _, add := range []struct{ backend, ns, name string }{
		{"iptables-nft", "shop", "a"}, {"nftables", "shop", "b"}, {"nftables", "shop", "b2"}, {"nftables", "kube-system", "dns"},
	} {
		err := addInNetns(t, pods, pluginEntry(t, sock, add.backend), add.ns, add.name)
		if (err != nil) != (add.name == "b2") {
			t.Fatalf("ADD %s/%s on %s: %v", add.ns, add.name, add.backend, err)
		}
	}
	want := map[string]string{
		`meshcni_plugin_add_duration_seconds_count{backend="iptables-nft",decision="captured"}`: "1",
		`meshcni_plugin_add_duration_seconds_count{backend="nftables",decision="captured"}`:     "1",
		`meshcni_plugin_add_duration_seconds_count{backend="none",decision="skipped"}`:          "1",
		`meshcni_plugin_add_duration_seconds_count{backend="none",decision="failed"}`:           "1",
		`meshcni_plugin_adds_total{decision="captured",reason="captured"}`:                      "2",
		`meshcni_plugin_adds_total{decision="skipped",reason="excluded-namespace"}`:             "1",
		`meshcni_plugin_adds_total{decision="failed",reason="lookup-failed"}`:                   "1",
	}
	eventually(t, 5*time.Second, "the four ADDs counted", func() bool {
		for series, v := range want {
			if r.metric(t, series) != v {
				return false
			}
		}
		return true
	})
	// A captured ADD in a real netns takes milliseconds, not nothing.
	sum, err := strconv.ParseFloat(r.metric(t, `meshcni_plugin_add_duration_seconds_sum{backend="nftables",decision="captured"}`), 64)
	if err != nil || sum <= 0 || sum > 10 {
		t.Errorf("captured nftables ADD took %v s (%v)", sum, err)
	}
	if got := r.metric(t, `meshcni_plugin_add_duration_seconds_bucket{backend="nftables",decision="captured",le="10"}`); got != "1" {
		t.Errorf("le=10 bucket: %q", got)
	}
}

// With the agent gone (its socket file left behind, nothing listening) or
// hung (listening, never reading), the plug-in loses its record and
// nothing else: the ADD succeeds and programs the pod.
func TestAddSucceedsWithoutAgent(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	pods := mapPods{"shop/a": sidecarPod("shop", "a")}
	dir := t.TempDir()

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	_ = l.Close() // the file stays; connecting is refused
	if err := addInNetns(t, pods, pluginEntry(t, stale, "nftables"), "shop", "a"); err != nil {
		t.Errorf("ADD with a dead agent: %v", err)
	}

	hung := filepath.Join(dir, "hung.sock")
	hl, err := net.ListenUnix("unix", &net.UnixAddr{Name: hung, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	start := time.Now()
	if err := addInNetns(t, pods, pluginEntry(t, hung, "nftables"), "shop", "a"); err != nil {
		t.Errorf("ADD with a hung agent: %v", err)
	}
	// Bounded by the log socket's deadlines (100 ms dial, 1 s write), not
	// by the agent; an ADD here takes tens of milliseconds.
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("ADD with a hung agent took %v", took)
	}
}
