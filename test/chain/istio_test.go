//go:build integration

package chain

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/meshcni/meshcni/internal/golden"
	"github.com/meshcni/meshcni/internal/inject"
	"github.com/meshcni/meshcni/test/testbed"
)

// istioFixture reads one of Istio's injection fixtures (internal/inject's
// copy, with its provenance).
func istioFixture(t *testing.T, file string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "internal", "inject", "testdata", "istio", file))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// fixturePods decodes a YAML stream's Pods as they are and Deployments'
// templates as the pods their ReplicaSets would create, in the object's
// namespace or "default", bound to the test node (there is no scheduler)
// with the service account admission would give them.
func fixturePods(t *testing.T, raw []byte) []*corev1.Pod {
	t.Helper()
	var out []*corev1.Pod
	r := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(string(raw)), 4096)
	for {
		var obj struct {
			Kind     string            `json:"kind"`
			Metadata metav1.ObjectMeta `json:"metadata"`
			Spec     json.RawMessage   `json:"spec"`
		}
		if err := r.Decode(&obj); err != nil {
			break
		}
		var p *corev1.Pod
		switch obj.Kind {
		case "Pod":
			p = &corev1.Pod{ObjectMeta: obj.Metadata}
			if err := json.Unmarshal(obj.Spec, &p.Spec); err != nil {
				t.Fatal(err)
			}
		case "Deployment":
			var d struct {
				Template corev1.PodTemplateSpec `json:"template"`
			}
			if err := json.Unmarshal(obj.Spec, &d); err != nil {
				t.Fatal(err)
			}
			p = &corev1.Pod{ObjectMeta: d.Template.ObjectMeta, Spec: d.Template.Spec}
			p.Name, p.Namespace = obj.Metadata.Name, obj.Metadata.Namespace
		default:
			continue
		}
		if p.Namespace == "" {
			p.Namespace = "default"
		}
		p.Spec.NodeName = testbed.NodeName
		// The ServiceAccount admission plug-in (off in the harness) names
		// "default"; without it Istio's token volume is refused.
		if p.Spec.ServiceAccountName == "" {
			p.Spec.ServiceAccountName = "default"
		}
		out = append(out, p)
	}
	if len(out) == 0 {
		t.Fatal("no pods in the fixture")
	}
	return out
}

// attach creates the pod in the API under a generated name (-count=N
// reruns share the cluster) and runs the node's chain for it.
func attach(t *testing.T, n *testbed.Node, pod *corev1.Pod) *testbed.Pod {
	t.Helper()
	ctx := context.Background()
	pod = pod.DeepCopy()
	pod.GenerateName, pod.Name = pod.Name+"-", ""
	if err := cluster.EnsureNamespace(ctx, pod.Namespace); err != nil {
		t.Fatal(err)
	}
	created, err := cluster.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.CoreV1().Pods(created.Namespace).Delete(ctx, created.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	p, err := n.AddPod(ctx, created.Namespace, created.Name, string(created.UID))
	if err != nil {
		t.Fatalf("ADD %s/%s: %v", created.Namespace, created.Name, err)
	}
	t.Cleanup(func() { _ = n.DelPod(ctx, p) })
	return p
}

var (
	saveCounters = regexp.MustCompile(` \[\d+:\d+\]$`)
	saveComment  = regexp.MustCompile(` -m comment --comment ("[^"]*"|\S+)`)
)

// savedTables is what iptables-save (both the nft and the legacy
// variant) prints inside the pod's netns, every table, with the
// "#" lines, chain counters and rule comments stripped.
func savedTables(t *testing.T, p *testbed.Pod) string {
	t.Helper()
	var b strings.Builder
	for _, save := range []string{"iptables-nft-save", "iptables-legacy-save"} {
		out, err := exec.Command("nsenter", "--net="+p.NS.Path(), save).Output()
		if err != nil {
			t.Fatalf("%s in %s: %v", save, p.Name, err)
		}
		b.WriteString("## " + save + "\n")
		for _, l := range strings.Split(string(out), "\n") {
			if l == "" || strings.HasPrefix(l, "#") {
				continue
			}
			l = saveComment.ReplaceAllString(saveCounters.ReplaceAllString(l, ""), "")
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// A pod as a stock Istio injects it (istio-init), converted by
// internal/inject as meshcnictl mutate and the webhook convert it, gets
// from the real plug-in in a real netns exactly the rules that Istio's
// own CNI-mode injection of the same object (istio-validation and the
// traffic annotations) gets: the same iptables-save, table for table,
// rule for rule. One node and one API server serve every pod.
func TestConvertedIstioPodsGetCNIModeRules(t *testing.T) {
	n := newNode(t, kubeconfig, false, nil)
	for _, set := range []string{"bookinfo", "pods"} {
		converted, objs, err := inject.Documents(istioFixture(t, set+"-injected-default.yaml"), "default", nil)
		if err != nil {
			t.Fatal(err)
		}
		actions := map[string]string{}
		for _, o := range objs {
			actions[o.Namespace+"/"+o.Name] = o.Record.Action
		}
		stock := fixturePods(t, converted)
		cni := fixturePods(t, istioFixture(t, set+"-injected-cni.yaml"))
		if len(stock) != len(cni) {
			t.Fatalf("%s: %d converted pods, %d CNI-mode pods", set, len(stock), len(cni))
		}
		for i, conv := range stock {
			ref := cni[i]
			t.Run(set+"/"+conv.Name, func(t *testing.T) {
				if ref.Namespace != conv.Namespace || ref.Name != conv.Name {
					t.Fatalf("fixtures out of step: %s/%s vs %s/%s", conv.Namespace, conv.Name, ref.Namespace, ref.Name)
				}
				optedOut := conv.Annotations["sidecar.istio.io/inject"] == "false"
				if act := actions[conv.Namespace+"/"+conv.Name]; !optedOut && act != inject.ToValidation {
					t.Fatalf("inject did not convert it (action %q, annotations %v)", act, conv.Annotations)
				}
				got := savedTables(t, attach(t, n, conv))
				want := savedTables(t, attach(t, n, ref))
				if got != want {
					t.Errorf("the converted pod's rules differ from the CNI-mode pod's:\n%s", golden.LineDiff(want, got))
				}
				// Equal but empty would prove nothing: a captured pod
				// has Istio's NAT chains, an opted-out one none.
				if captured := strings.Contains(got, "-A ISTIO_OUTPUT"); captured == optedOut {
					t.Errorf("captured %v, opted out %v:\n%s", captured, optedOut, got)
				}
			})
		}
	}
}
