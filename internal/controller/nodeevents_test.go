package controller

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestNodeMatters(t *testing.T) {
	base := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"kubernetes.io/os": "linux"}, ResourceVersion: "1"},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: StartupTaint, Effect: corev1.TaintEffectNoSchedule}}},
	}
	for _, tc := range []struct {
		name   string
		change func(*corev1.Node)
		want   bool
	}{
		{"heartbeat: status only", func(n *corev1.Node) {
			n.ResourceVersion = "2"
			n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.NewTime(time.Now())}}
			n.Annotations = map[string]string{"node.alpha.kubernetes.io/ttl": "0"}
		}, false},
		{"label added", func(n *corev1.Node) { n.Labels["meshcni.io/iptables-backend"] = "nft" }, true},
		{"label changed", func(n *corev1.Node) { n.Labels["kubernetes.io/os"] = "windows" }, true},
		{"startup taint lifted", func(n *corev1.Node) { n.Spec.Taints = nil }, true},
		{"other taint added", func(n *corev1.Node) {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "x", Effect: corev1.TaintEffectNoExecute})
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cur := base.DeepCopy()
			tc.change(cur)
			if got := nodeMatters(base, cur); got != tc.want {
				t.Errorf("nodeMatters = %v, want %v", got, tc.want)
			}
		})
	}
	if !nodeMatters("not a node", base) {
		t.Error("an unexpected object must count")
	}
}

// The informer's copy of a Node keeps what the controller reads of it
// (name, labels, taints) and drops the rest; nodeMatters and the status
// answer on it as on the whole Node.
func TestSlimNode(t *testing.T) {
	full := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: "node-1", UID: "u1", ResourceVersion: "7",
			Labels:        map[string]string{"kubernetes.io/os": "linux"},
			Annotations:   map[string]string{"node.alpha.kubernetes.io/ttl": "0"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate}},
		},
		Spec: corev1.NodeSpec{PodCIDR: "10.0.0.0/24", Taints: []corev1.Taint{{Key: StartupTaint, Effect: corev1.TaintEffectNoSchedule}}},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			Images:     []corev1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 1}},
		},
	}
	obj, err := slimNode(full)
	if err != nil {
		t.Fatal(err)
	}
	slim := obj.(*corev1.Node)
	if slim.Name != "node-1" || slim.ResourceVersion != "7" || slim.Labels["kubernetes.io/os"] != "linux" || !hasTaint(slim) {
		t.Errorf("slim node lost what the controller reads: %+v", slim)
	}
	if slim.ManagedFields != nil || slim.Annotations != nil || slim.Status.Images != nil || slim.Status.Conditions != nil || slim.Spec.PodCIDR != "" {
		t.Errorf("slim node keeps what the controller never reads: %+v", slim)
	}
	// A heartbeat stays a non-event, a relabel an event, on slim copies.
	beat := full.DeepCopy()
	beat.ResourceVersion = "8"
	beat.Status.Conditions[0].Message = "kubelet is posting ready status"
	relabel := full.DeepCopy()
	relabel.Labels["meshcni.io/iptables-backend"] = "nftables"
	slimBeat, _ := slimNode(beat)
	slimRelabel, _ := slimNode(relabel)
	if nodeMatters(slim, slimBeat) || !nodeMatters(slim, slimRelabel) {
		t.Error("nodeMatters answers differently on the informer's slim copies")
	}
	// A tombstone passes through.
	if tomb, _ := slimNode("not a node"); tomb != "not a node" {
		t.Errorf("slimNode changed a non-Node: %v", tomb)
	}
}
