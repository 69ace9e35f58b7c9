package console

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func meshcni(generation int64, spec, status map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	if status != nil {
		u.Object["status"] = status
	}
	u.SetGroupVersionKind(GVK)
	u.SetName(Name)
	u.SetGeneration(generation)
	u.SetResourceVersion("42")
	return u
}

func TestSettings(t *testing.T) {
	for _, tc := range []struct {
		name string
		mc   *unstructured.Unstructured
		want State
	}{{
		name: "no MeshCNI yet",
		want: State{Excluded: []string{}, Phase: PhaseNotInstalled, Message: `there is no MeshCNI "default" yet: Update Settings creates it`},
	}, {
		name: "enabled omitted means the schema's default, true; excluded sorted",
		mc: meshcni(3, map[string]any{"excludeNamespaces": []any{"z", "kube-system"}},
			map[string]any{"observedGeneration": int64(3), "phase": "Running", "settingsHash": "abcd", "readyNodes": "2/2"}),
		want: State{Exists: true, ResourceVersion: "42", Enabled: true, Excluded: []string{"kube-system", "z"}, Phase: "Running", SettingsHash: "abcd", ReadyNodes: "2/2"},
	}, {
		name: "ready/desired from the counts when readyNodes is absent",
		mc: meshcni(1, map[string]any{"enabled": false},
			map[string]any{"observedGeneration": int64(1), "phase": "Degraded", "message": "node-b: CrashLoopBackOff", "nodes": map[string]any{"desired": int64(2), "ready": int64(1)}}),
		want: State{Exists: true, ResourceVersion: "42", Excluded: []string{}, Phase: "Degraded", Message: "node-b: CrashLoopBackOff", ReadyNodes: "1/2"},
	}, {
		name: "a status for older settings shows Updating, not the stale phase or hash",
		mc: meshcni(4, map[string]any{"enabled": true},
			map[string]any{"observedGeneration": int64(3), "phase": "Running", "settingsHash": "old1"}),
		want: State{Exists: true, ResourceVersion: "42", Enabled: true, Excluded: []string{}, Phase: PhaseUpdating, Message: "waiting for meshcni-controller to apply generation 4 of the settings"},
	}, {
		name: "no status at all yet",
		mc:   meshcni(1, map[string]any{"enabled": true, "excludeNamespaces": []any{}}, nil),
		want: State{Exists: true, ResourceVersion: "42", Enabled: true, Excluded: []string{}, Phase: PhaseUpdating, Message: "waiting for meshcni-controller to apply generation 1 of the settings"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			var s State
			s.Settings(tc.mc)
			if d := cmp.Diff(tc.want, s); d != "" {
				t.Errorf("state (-want +got):\n%s", d)
			}
		})
	}
}

func agent(node, hash string, mut func(*corev1.Pod)) corev1.Pod {
	p := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "meshcni-agent-" + node, Annotations: map[string]string{ConfigHashAnnotation: hash}}}
	p.Spec.NodeName = node
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	if mut != nil {
		mut(&p)
	}
	return p
}

func TestAgents(t *testing.T) {
	now := metav1.Now()
	pods := []corev1.Pod{
		agent("node-c", "new", func(p *corev1.Pod) {
			p.Status.Conditions[0].Status = corev1.ConditionFalse
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}}}
		}),
		agent("node-a", "new", nil),
		agent("node-b", "old", nil),
		agent("node-d", "new", func(p *corev1.Pod) { p.DeletionTimestamp = &now }),
		agent("node-e", "", func(p *corev1.Pod) {
			p.Status = corev1.PodStatus{}
			p.Spec.NodeName = ""
		}),
		agent("node-f", "new", func(p *corev1.Pod) { p.Status.Conditions = nil }),
	}
	s := State{SettingsHash: "new"}
	s.Agents(pods)
	want := []Node{
		{Node: "(unscheduled)", Pod: "meshcni-agent-node-e", State: "Pending"},
		{Node: "node-a", Pod: "meshcni-agent-node-a", Ready: true, State: "Ready", Hash: "new", Current: true},
		{Node: "node-b", Pod: "meshcni-agent-node-b", Ready: true, State: "Ready", Hash: "old"},
		{Node: "node-c", Pod: "meshcni-agent-node-c", State: "CrashLoopBackOff", Hash: "new", Current: true},
		{Node: "node-d", Pod: "meshcni-agent-node-d", Ready: true, State: "Terminating", Hash: "new", Current: true},
		{Node: "node-f", Pod: "meshcni-agent-node-f", State: "Running, not ready", Hash: "new", Current: true},
	}
	if d := cmp.Diff(want, s.Nodes); d != "" {
		t.Errorf("nodes (-want +got):\n%s", d)
	}

	// Without a settled hash no agent counts as current.
	s = State{}
	s.Agents([]corev1.Pod{agent("node-a", "", nil)})
	if s.Nodes[0].Current {
		t.Error("an agent with no hash is current while no settings hash is known")
	}
	// The page iterates the lists: they are [] in JSON, never null.
	s = State{}
	s.Settings(nil)
	s.Agents(nil)
	data, _ := json.Marshal(s)
	var m map[string]any
	_ = json.Unmarshal(data, &m)
	for _, k := range []string{"nodes", "excludeNamespaces"} {
		if _, ok := m[k].([]any); !ok {
			t.Errorf("%s is %v in JSON, want a list", k, m[k])
		}
	}
}
