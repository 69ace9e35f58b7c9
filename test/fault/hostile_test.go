//go:build integration

package fault

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/internal/netfilter"
)

// Hostile pod input through the whole plug-in: ADD fails with code 7 and
// a short message naming the annotation (or sidecar field) to fix; no
// command runs, no rule appears. internal/capture's tests try every
// annotation with every hostile value; this is the path to the runtime.
func TestHostileInputFailsADD(t *testing.T) {
	huge := strings.Repeat("8", 1<<20)
	for _, tc := range []struct {
		name, key, value string
		mod              func(*corev1.Pod)
		want             string
	}{
		{name: "port then target", key: "traffic.sidecar.istio.io/excludeOutboundPorts", value: "80 -j ACCEPT"},
		{name: "name then option", key: "traffic.sidecar.istio.io/excludeInterfaces", value: "eth0 --dport"},
		{name: "newline then rule", key: "traffic.sidecar.istio.io/includeOutboundIPRanges", value: "10.0.0.0/8\n-A OUTPUT -j ACCEPT"},
		{name: "leading option", key: "istio.io/reroute-virtual-interfaces", value: "-j"},
		{name: "mode with target", key: "sidecar.istio.io/interceptionMode", value: "REDIRECT -j ACCEPT"},
		{name: "unicode digits", key: "traffic.sidecar.istio.io/includeInboundPorts", value: "８０"},
		{name: "1 MiB", key: "traffic.sidecar.istio.io/includeInboundPorts", value: huge},
		// The review's rule-multiplying pod: 256 include CIDRs times 256
		// rerouted interfaces, 66,067 rules; over the rule budget.
		{name: "rule-multiplying", mod: func(p *corev1.Pod) {
			var cidrs, nics []string
			for i := range 256 {
				cidrs = append(cidrs, fmt.Sprintf("10.%d.0.0/16", i))
				nics = append(nics, fmt.Sprintf("v%x", i))
			}
			p.Annotations["traffic.sidecar.istio.io/includeOutboundIPRanges"] = strings.Join(cidrs, ",")
			p.Annotations["istio.io/reroute-virtual-interfaces"] = strings.Join(nics, ",")
		}, want: "rules, over meshcni's budget of"},
		{name: "runAsUser -1", mod: func(p *corev1.Pod) {
			uid := int64(-1)
			p.Spec.Containers[1].SecurityContext.RunAsUser = &uid
		}, want: "runAsUser -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			ip := newInproc(t, netfilter.NFT, nil)
			pod := richMeshPod("fault-hostile", "pod")
			if tc.key != "" {
				pod.Annotations[tc.key] = tc.value
			}
			if tc.mod != nil {
				tc.mod(pod)
			}
			ip.pods.add(pod)
			cniErr, err := ip.add(ip.args(t, pod, n.Path(), true))
			if err != nil {
				t.Fatal(err)
			}
			if cniErr == nil {
				t.Fatal("ADD accepted hostile input")
			}
			want := tc.want
			if want == "" {
				want = "annotation " + tc.key
			}
			text := cniErr.Msg + cniErr.Details
			if cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Msg, want) || !strings.Contains(cniErr.Msg, "correct it in the pod's spec and recreate the pod") {
				t.Errorf("ADD error: code %d %q; want code 7 naming %q and what to do", cniErr.Code, firstLine(cniErr.Msg), want)
			}
			if len(text) > 1024 || strings.ContainsAny(text, "\n\r") {
				t.Errorf("the error the runtime records is %d bytes or spans lines: %q", len(text), firstLine(text))
			}
			if ran := ip.commands(); len(ran) > 0 {
				t.Errorf("commands ran for a refused pod: %v", ran)
			}
			assertNoResidue(t, n.Path())
			t.Logf("code %d: %s", cniErr.Code, cniErr.Msg)
		})
	}
}
