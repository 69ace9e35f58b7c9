package controller

import (
	"errors"
	"fmt"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/rollout"
)

func TestStatus(t *testing.T) {
	ready := rollout.NodeStatus{Node: "a", Pod: "p-a", Ready: true, Current: true}
	stale := rollout.NodeStatus{Node: "b", Pod: "p-b", Ready: true}
	notReady := rollout.NodeStatus{Node: "c", Pod: "p-c", Current: true}
	crashing := rollout.NodeStatus{Node: "d", Pod: "p-d", Ready: true, Current: true, Problem: "CrashLoopBackOff"}
	missing := rollout.NodeStatus{Node: "e"}
	unscheduled := rollout.NodeStatus{Node: "<unscheduled>", Pod: "p-x"}
	for _, tc := range []struct {
		name      string
		in        Observed
		phase     string
		message   string
		nodes     v1alpha1.NodeCounts
		readyCond metav1.ConditionStatus
	}{
		{"running", Observed{Enabled: true, Report: rollout.Report{State: rollout.Running, Reason: "2 of 2"}, SettingsHash: "h"},
			v1alpha1.PhaseRunning, "", v1alpha1.NodeCounts{}, metav1.ConditionTrue},
		{"counts: ready with an old hash is ready, not updated", Observed{Enabled: true,
			Report: rollout.Report{State: rollout.Updating, Reason: "agents on b run older settings", Nodes: []rollout.NodeStatus{ready, stale, notReady, missing, unscheduled}}},
			v1alpha1.PhaseUpdating, "agents on b run older settings", v1alpha1.NodeCounts{Desired: 4, Ready: 2, Updated: 1}, metav1.ConditionFalse},
		{"a failing agent is not ready", Observed{Enabled: true, Report: rollout.Report{State: rollout.Degraded, Reason: "node d: CrashLoopBackOff\nmore", Nodes: []rollout.NodeStatus{crashing}}},
			v1alpha1.PhaseDegraded, "node d: CrashLoopBackOff", v1alpha1.NodeCounts{Desired: 1}, metav1.ConditionFalse},
		{"not yet installed is Updating", Observed{Enabled: true, Report: rollout.Report{State: rollout.NotInstalled, Reason: "DaemonSet not found"}},
			v1alpha1.PhaseUpdating, "DaemonSet not found", v1alpha1.NodeCounts{}, metav1.ConditionFalse},
		{"an apply error is Degraded", Observed{Enabled: true, Err: errors.New("apply DaemonSet: forbidden")},
			v1alpha1.PhaseDegraded, "apply DaemonSet: forbidden", v1alpha1.NodeCounts{}, metav1.ConditionFalse},
		{"disabling", Observed{Leftovers: []string{"agent pod p-a on a"}},
			v1alpha1.PhaseUpdating, "removing the node side: agent pod p-a on a", v1alpha1.NodeCounts{}, metav1.ConditionFalse},
		{"disabled", Observed{}, v1alpha1.PhaseDisabled, "", v1alpha1.NodeCounts{}, metav1.ConditionFalse},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.in.Generation = 7
			st := Status(tc.in, nil)
			if st.Phase != tc.phase || st.Message != tc.message || st.Nodes != tc.nodes || st.ObservedGeneration != 7 {
				t.Errorf("got %s %q %+v gen %d, want %s %q %+v", st.Phase, st.Message, st.Nodes, st.ObservedGeneration, tc.phase, tc.message, tc.nodes)
			}
			if tc.in.Enabled && tc.in.Err == nil && st.ReadyNodes == "" {
				t.Error("readyNodes empty")
			}
			for _, c := range st.Conditions {
				if c.Type == v1alpha1.ConditionReady && c.Status != tc.readyCond {
					t.Errorf("Ready %s, want %s", c.Status, tc.readyCond)
				}
				if c.Reason != tc.phase {
					t.Errorf("condition %s reason %q, want %q", c.Type, c.Reason, tc.phase)
				}
			}
		})
	}
}

// TestStatusKeepsTransitionTimes: an unchanged condition keeps its time,
// so a resync does not look like a transition.
func TestStatusKeepsTransitionTimes(t *testing.T) {
	o := Observed{Enabled: true, Report: rollout.Report{State: rollout.Running}}
	first := Status(o, nil)
	old := metav1.NewTime(first.Conditions[0].LastTransitionTime.Add(-3600e9))
	for i := range first.Conditions {
		first.Conditions[i].LastTransitionTime = old
	}
	again := Status(o, first.Conditions)
	for _, c := range again.Conditions {
		if !c.LastTransitionTime.Equal(&old) {
			t.Errorf("%s moved to %v", c.Type, c.LastTransitionTime)
		}
	}
}

func TestValues(t *testing.T) {
	off := false
	spec := v1alpha1.MeshCNISpec{Enabled: &off, ExcludeNamespaces: []string{}, IptablesBackend: "iptables-nft", RepairMode: "label",
		LogLevel: "debug", Platform: "k3s", Image: "reg:5000/a/agent@sha256:" + string(make64('f'))}
	v, err := Values(spec, "mesh", "ignored:v9")
	if err != nil {
		t.Fatal(err)
	}
	img := v["image"].(map[string]any)
	if img["repository"] != "reg:5000/a/agent" || img["tag"] != "" || img["digest"] != "sha256:"+string(make64('f')) {
		t.Errorf("image %v", img)
	}
	if v["iptablesBackend"] != "nft" || v["platform"] != "k3s" || v["repairMode"] != "label" || v["nodeSide"] != true {
		t.Errorf("values %v", v)
	}
	if l, ok := v["excludeNamespaces"].([]any); !ok || len(l) != 1 || l[0] != "mesh" {
		t.Errorf("an empty exclusion list became %v, want the release namespace only", v["excludeNamespaces"])
	}
	v, err = Values(v1alpha1.MeshCNISpec{}, "mesh", "reg/agent:v2")
	if err != nil {
		t.Fatal(err)
	}
	if img := v["image"].(map[string]any); img["repository"] != "reg/agent" || img["tag"] != "v2" {
		t.Errorf("default image %v", img)
	}
	if l, ok := v["excludeNamespaces"].([]any); !ok || fmt.Sprint(l) != "[kube-system istio-system mesh]" {
		t.Errorf("a nil exclusion list became %v, want the schema's default and the release namespace", v["excludeNamespaces"])
	}
	for _, bad := range []string{"@sha256:" + string(make64('a')), "repo@sha256:12"} {
		if _, err := Values(v1alpha1.MeshCNISpec{Image: bad}, "mesh", ""); err == nil {
			t.Errorf("image %q accepted", bad)
		}
	}
}

func make64(c byte) []byte {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return b
}

// TestNodeSideRender: the spec's values render the node side only, with a
// digest image pinned and the settings in the ConfigMap.
func TestNodeSideRender(t *testing.T) {
	digest := "sha256:" + string(make64('e'))
	v, err := Values(v1alpha1.MeshCNISpec{Image: "reg/agent@" + digest, LogLevel: "warn"}, "mesh", "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := chart.Render(v, "mesh", FieldManager)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, o := range m.Objects {
		if !chart.IsNodeSide(m.Sources[i]) {
			continue
		}
		seen[o.GetKind()] = true
		if o.GetKind() == "Namespace" {
			t.Error("the node side renders a Namespace")
		}
		if o.GetKind() == "DaemonSet" {
			cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
			if img := cs[0].(map[string]any)["image"]; img != "reg/agent@"+digest {
				t.Errorf("image %v", img)
			}
		}
		if o.GetKind() == "ConfigMap" {
			if lvl, _, _ := unstructured.NestedString(o.Object, "data", "MESHCNI_LOG_LEVEL"); lvl != "warn" {
				t.Errorf("log level %q", lvl)
			}
		}
	}
	for _, k := range []string{"DaemonSet", "ConfigMap", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} {
		if !seen[k] {
			t.Errorf("no %s in the node side", k)
		}
	}
}
