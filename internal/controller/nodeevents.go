package controller

import (
	"maps"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
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
