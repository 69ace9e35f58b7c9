//go:build integration

package fault

import (
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// The plug-in binary, given a pod name or namespace the API server could
// never have accepted, fails ADD with code 7 naming the value, at once,
// and the real API (behind the counting proxy) sees no request. Before,
// the name went to the API and ADD reported code 11 "cannot reach the
// Kubernetes API" after every retry.
func TestInvalidPodNameThroughTheBinary(t *testing.T) {
	p := newAPIProxy(t, pass)
	kc := p.kubeconfig(t, pluginToken, false)
	for _, tc := range []struct{ name, ns, pod, want string }{
		{"upper-case pod name", "default", "Productpage", `K8S_POD_NAME "Productpage"`},
		{"underscore in namespace", "book_info", "productpage", `K8S_POD_NAMESPACE "book_info"`},
		{"path in pod name", "default", "../x", `K8S_POD_NAME "../x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			conf := netconf(t, n.Path(), false, map[string]any{"kubeconfig": kc, "lockDir": t.TempDir()})
			inv := runPlugin(t, "ADD", n.Path(), k8sArgs(tc.ns, tc.pod, "00000000-0000-0000-0000-000000000001"), conf)
			if inv.err == nil || inv.err.Code != types.ErrInvalidNetworkConfig || !strings.Contains(inv.err.Msg, tc.want) {
				t.Fatalf("ADD: %+v, want code 7 naming %s\n%s", inv.err, tc.want, inv.stderr)
			}
			if bound := 2 * time.Second; inv.elapsed > bound {
				t.Errorf("ADD took %v, want well under the lookup's retries (%v)", inv.elapsed, bound)
			}
			if got := p.requests.Load(); got != 0 {
				t.Errorf("the API saw %d requests, want none", got)
			}
			assertNoResidue(t, n.Path())
		})
	}
}
