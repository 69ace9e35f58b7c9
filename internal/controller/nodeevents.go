package controller

import (
	"maps"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// nodeMatters reports whether a Node update can change a reconcile: the
// reconcile reads a Node's name (adds and deletes always count), its
// labels (the DaemonSet's nodeSelector decides which nodes need an agent)
// and its taints (disabling lifts the startup taint). Every kubelet
// rewrites its Node's status every few minutes even when nothing changed
// (nodeStatusReportFrequency, 5 minutes), every 10 s while something
// does: at 2,000 nodes several updates a second, each of which would
// otherwise cost a whole reconcile (a chart render, the node side's
// applies and a status computed over every node). Measured with the scale
// harness (docs/performance.md, "Scale").
func nodeMatters(old, cur any) bool {
	o, ok1 := old.(*corev1.Node)
	n, ok2 := cur.(*corev1.Node)
	if !ok1 || !ok2 {
		return true
	}
	return !maps.Equal(o.Labels, n.Labels) || !equality.Semantic.DeepEqual(o.Spec.Taints, n.Spec.Taints)
}

// slimNode is how the controller's node informer keeps a Node: its name,
// labels and taints, the fields nodeMatters, the status (rollout.Assess:
// which nodes the DaemonSet's nodeSelector covers) and disable (the
// startup taint) read, and nothing else. A kubelet's Node carries its
// status (conditions, addresses, a list of up to 50 images) and
// managedFields, kilobytes each, for every node of the cluster; the
// untaint reads the Node anew before it writes, so no write starts from
// this copy. Other objects (DeletedFinalStateUnknown) pass as they are.
func slimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion, Generation: n.Generation,
			Labels: n.Labels, CreationTimestamp: n.CreationTimestamp, DeletionTimestamp: n.DeletionTimestamp,
		},
		Spec: corev1.NodeSpec{Taints: n.Spec.Taints, Unschedulable: n.Spec.Unschedulable},
	}, nil
}

// noManagedFields drops managedFields from the node side's objects (the
// DaemonSet, its pods, the ConfigMap) as the informer stores them: the
// controller never reads them, and its writes are server-side applies
// built from the chart, never from these copies.
func noManagedFields(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
