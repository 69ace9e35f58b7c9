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
