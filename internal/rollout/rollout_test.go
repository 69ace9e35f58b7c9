package rollout

import (
	"bytes"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/chart"
)

func testDS(gen, observed int64, desired, updated, ready int32) *appsv1.DaemonSet {
	ds := &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: chart.DefaultNamespace, Name: DaemonSetName, Generation: gen}}
	ds.Spec.Template.Annotations = map[string]string{ConfigHashAnnotation: "new"}
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"kubernetes.io/os": "linux"}
	ds.Status = appsv1.DaemonSetStatus{ObservedGeneration: observed, DesiredNumberScheduled: desired,
		UpdatedNumberScheduled: updated, NumberReady: ready, NumberAvailable: ready}
	return ds
}

func testNode(name string) corev1.Node {
	return corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": "linux"}}}
}

func testPod(node, hash string, ready bool, mutate ...func(*corev1.Pod)) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "meshcni-agent-" + node, Annotations: map[string]string{ConfigHashAnnotation: hash}}}
	p.Spec.NodeName = node
	st := corev1.ConditionFalse
	if ready {
		st = corev1.ConditionTrue
	}
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: st}}
	for _, m := range mutate {
		m(&p)
	}
	return p
}

func TestAssess(t *testing.T) {
	nodes := []corev1.Node{testNode("a"), testNode("b"), {ObjectMeta: metav1.ObjectMeta{Name: "win"}}}
	both := func(ha, hb string, ra, rb bool) []corev1.Pod {
		return []corev1.Pod{testPod("a", ha, ra), testPod("b", hb, rb)}
	}
	crash := func(p *corev1.Pod) {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "meshcni-agent", RestartCount: 4,
			State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}
	}
	for _, tc := range []struct {
		name   string
		ds     *appsv1.DaemonSet
		cm     bool
		pods   []corev1.Pod
		nodes  []corev1.Node
		state  State
		reason string
	}{
		{"not installed", nil, false, nil, nodes, NotInstalled, "meshcnictl enable"},
		{"controller has not seen it", testDS(1, 0, 0, 0, 0), true, nil, nodes, Updating, "generation 1"},
		{"pods not updated", testDS(2, 2, 2, 1, 2), true, both("new", "old", true, true), nodes, Updating, "1 of 2 agents run the current pod template"},
		{"pods not ready", testDS(1, 1, 2, 2, 1), true, both("new", "new", true, false), nodes, Updating, "1 of 2 agents ready"},
		{"stale hash", testDS(1, 1, 2, 2, 2), true, both("new", "old", true, true), nodes, Updating, "agents on b run older settings"},
		{"pod not ready though counted", testDS(1, 1, 2, 2, 2), true, both("new", "new", true, false), nodes, Updating, "agents on b are not ready"},
		{"node without pod", testDS(1, 1, 2, 2, 2), true, both("new", "new", true, true)[:1], nodes, Updating, "no agent pod yet on b"},
		{"running", testDS(3, 3, 2, 2, 2), true, both("new", "new", true, true), nodes, Running, "2 of 2 agents ready"},
		{"running, nodes unknown", testDS(3, 3, 2, 2, 2), true, both("new", "new", true, true), nil, Running, "2 of 2"},
		{"crash loop", testDS(1, 1, 2, 2, 1), true, []corev1.Pod{testPod("a", "new", true), testPod("b", "new", false, crash)}, nodes, Degraded,
			"node b: agent pod meshcni-agent-b: container meshcni-agent: CrashLoopBackOff (4 restarts) (kubectl -n meshcni-system logs meshcni-agent-b"},
		{"configmap missing", testDS(1, 1, 2, 2, 2), false, both("new", "new", true, true), nodes, Degraded, "ConfigMap meshcni-system/meshcni-config is missing"},
		{"no nodes", testDS(1, 1, 0, 0, 0), true, nil, nil, Degraded, "no node matches"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Assess(tc.ds, tc.cm, tc.pods, tc.nodes)
			if r.State != tc.state || !strings.Contains(r.Reason, tc.reason) {
				t.Errorf("got %s: %s\nwant %s: ...%s...", r.State, r.Reason, tc.state, tc.reason)
			}
		})
	}
}

func TestReportPrint(t *testing.T) {
	r := Assess(testDS(1, 1, 2, 2, 1), true, []corev1.Pod{testPod("a", "new", true)}, []corev1.Node{testNode("a"), testNode("b")})
	var b bytes.Buffer
	r.Print(&b)
	want := `NODE  AGENT            READY  SETTINGS
a     meshcni-agent-a  true   current
b     <none>           -      -
Status: Updating: 1 of 2 agents ready
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
