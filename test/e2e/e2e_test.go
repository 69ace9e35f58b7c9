//go:build e2e

package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

// needRuntime fails loudly when the runtime never came up: a suite that
// cannot run must not pass.
func needRuntime(t *testing.T) {
	t.Helper()
	if setupErr != nil {
		t.Fatalf("e2e: no container runtime, nothing was tested: %v", setupErr)
	}
}

// plainPod is a pod without a sidecar: one app container serving 8080.
func plainPod(t *testing.T, namespace, name string) *Pod {
	t.Helper()
	pod := kubeharness.NewPod(namespace, name, testbed.NodeName)
	return runPod(t, pod)
}

func addr(p *Pod, port int) string { return fmt.Sprintf("%s:%d", p.IP, port) }

func TestBookinfoProductpage(t *testing.T) {
	needRuntime(t)
	pods := map[string]*Pod{}
	for _, b := range testbed.Bookinfo {
		pods[b.Name] = runPod(t, testbed.MeshPod("bookinfo", b.Name, b.Port))
	}
	pp, details := pods["productpage"], pods["details"]
	client := plainPod(t, "istio-system", "client")

	// The operator's view: container ID from CRI, PID, nsenter, iptables.
	nat := natTable(t, "inspect", containerID(t, pp, "productpage"))
	t.Logf("productpage NAT table (crictl inspect -> pid -> nsenter -t <pid> -n iptables -L -t nat -n -v --line-numbers -x):\n%s", nat)
	for _, want := range []string{"Chain ISTIO_OUTPUT", "Chain ISTIO_REDIRECT", "redir ports 15001", "Chain ISTIO_IN_REDIRECT", "redir ports 15006", "owner UID match 1337"} {
		if !strings.Contains(nat, want) {
			t.Errorf("productpage's NAT table lacks %q", want)
		}
	}

	// App -> another pod: the app's connection lands on its own sidecar's
	// 15001 with the original destination intact.
	target := addr(details, 9080)
	if got, want := mustAsk(t, pp, "productpage", target), "outbound "+target; got != want {
		t.Errorf("productpage app -> %s answered %q, want %q", target, got, want)
	}
	// Into the pod's app port: lands on 15006.
	if got, want := mustAsk(t, client, "app", addr(pp, 9080)), "inbound "+addr(pp, 9080); got != want {
		t.Errorf("client -> productpage:9080 answered %q, want %q", got, want)
	}
	// The sidecar itself (UID 1337) is not captured on the way out; it
	// reaches details, whose own sidecar takes the connection in.
	if got, want := mustAsk(t, pp, "istio-proxy", target), "inbound "+target; got != want {
		t.Errorf("productpage sidecar -> %s answered %q, want %q", target, got, want)
	}

	record := logs(t, pp.Containers["istio-proxy"])
	t.Logf("productpage sidecar's record (crictl logs):\n%s", record)
	for _, want := range []string{
		fmt.Sprintf("outbound %s from %s:", target, pp.IP),
		fmt.Sprintf("inbound %s from %s:", addr(pp, 9080), client.IP),
		"outbound listening on :15001 as uid 1337",
	} {
		if !strings.Contains(record, want) {
			t.Errorf("the sidecar's log lacks %q", want)
		}
	}
	if calls := cniCalls(t, pp.Sandbox); len(calls) != 1 || !strings.HasPrefix(calls[0], "ADD netns=") {
		t.Errorf("containerd's calls to meshcni for productpage: %q, want one ADD", calls)
	}
}
