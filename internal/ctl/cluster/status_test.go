package cluster

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/rollout"
)

func mesh(gen int64, enabled bool, st v1alpha1.MeshCNIStatus) *v1alpha1.MeshCNI {
	mc := &v1alpha1.MeshCNI{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.Name, Generation: gen}, Status: st}
	mc.Spec.Enabled = &enabled
	mc.Spec.ExcludeNamespaces = []string{"kube-system", "istio-system"}
	return mc
}

func conds(ready, progressing, degraded metav1.ConditionStatus) []metav1.Condition {
	return []metav1.Condition{{Type: "Ready", Status: ready}, {Type: "Progressing", Status: progressing}, {Type: "Degraded", Status: degraded}}
}

// TestPrintStatus: the report for each phase, against goldens
// (REFRESH_GOLDEN=true rewrites them).
func TestPrintStatus(t *testing.T) {
	two := &rollout.Report{Nodes: []rollout.NodeStatus{
		{Node: "node-a", Pod: "meshcni-agent-x1", Ready: true, Current: true},
		{Node: "node-b", Pod: "meshcni-agent-x2", Ready: true, Current: true},
	}}
	for _, tc := range []struct {
		name      string
		mc        *v1alpha1.MeshCNI
		report    *rollout.Report
		explained map[string][]string
	}{
		{"running", mesh(2, true, v1alpha1.MeshCNIStatus{ObservedGeneration: 2, Phase: "Running", Conditions: conds("True", "False", "False"),
			Nodes: v1alpha1.NodeCounts{Desired: 2, Ready: 2, Updated: 2}, ReadyNodes: "2/2"}), two, nil},
		{"updating-stale", mesh(3, true, v1alpha1.MeshCNIStatus{ObservedGeneration: 3, Phase: "Updating", Conditions: conds("False", "True", "False"),
			Nodes: v1alpha1.NodeCounts{Desired: 2, Ready: 2, Updated: 1}, ReadyNodes: "2/2", Message: "agents on node-b run older settings"}),
			&rollout.Report{Nodes: []rollout.NodeStatus{
				{Node: "node-a", Pod: "meshcni-agent-y1", Ready: true, Current: true},
				{Node: "node-b", Pod: "meshcni-agent-x2", Ready: true},
				{Node: "node-c"},
			}}, nil},
		{"not-observed", mesh(4, true, v1alpha1.MeshCNIStatus{ObservedGeneration: 3, Phase: "Running", Conditions: conds("True", "False", "False"),
			Nodes: v1alpha1.NodeCounts{Desired: 2, Ready: 2, Updated: 2}, ReadyNodes: "2/2"}), two, nil},
		{"degraded", mesh(2, true, v1alpha1.MeshCNIStatus{ObservedGeneration: 2, Phase: "Degraded", Conditions: conds("False", "False", "True"),
			Nodes: v1alpha1.NodeCounts{Desired: 2, Ready: 1, Updated: 1}, ReadyNodes: "1/2",
			Message: "node node-a: agent pod meshcni-agent-x1: container meshcni-agent: CrashLoopBackOff (4 restarts)"}),
			&rollout.Report{Nodes: []rollout.NodeStatus{
				{Node: "node-a", Pod: "meshcni-agent-x1", Problem: "container meshcni-agent: CrashLoopBackOff (4 restarts)"},
				{Node: "node-b", Pod: "meshcni-agent-x2", Ready: true, Current: true},
			}},
			map[string][]string{"node-a": {"agent pod meshcni-agent-x1", "container meshcni-agent: CrashLoopBackOff (4 restarts)",
				"condition Ready=False ContainersNotReady: containers with unready status: [meshcni-agent]",
				"event BackOff: Back-off restarting failed container meshcni-agent (x5)",
				"look further: kubectl -n meshcni-system describe pod meshcni-agent-x1; kubectl -n meshcni-system logs meshcni-agent-x1"}}},
		{"disabled", mesh(5, false, v1alpha1.MeshCNIStatus{ObservedGeneration: 5, Phase: "Disabled", Conditions: conds("False", "False", "False")}), nil, nil},
		{"pending", mesh(1, true, v1alpha1.MeshCNIStatus{}), &rollout.Report{}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			PrintStatus(&b, tc.mc, tc.report, tc.explained)
			golden(t, filepath.Join("testdata", "status", tc.name+".golden"), b.Bytes())
		})
	}
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if os.Getenv("REFRESH_GOLDEN") == "true" {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (REFRESH_GOLDEN=true writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs:\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestPhaseLine(t *testing.T) {
	for _, tc := range []struct {
		mc   *v1alpha1.MeshCNI
		want string
	}{
		{mesh(2, true, v1alpha1.MeshCNIStatus{ObservedGeneration: 1, Phase: "Running"}), "waiting for meshcni-controller to act on generation 2 (status is of 1)"},
		{mesh(2, true, v1alpha1.MeshCNIStatus{ObservedGeneration: 2, Phase: "Updating", ReadyNodes: "0/2", Message: "0 of 2 agents ready"}), "phase Updating, 0/2 nodes ready: 0 of 2 agents ready"},
		{mesh(2, true, v1alpha1.MeshCNIStatus{ObservedGeneration: 2, Phase: "Running", ReadyNodes: "2/2"}), "phase Running, 2/2 nodes ready"},
		{mesh(2, false, v1alpha1.MeshCNIStatus{ObservedGeneration: 2, Phase: "Disabled"}), "phase Disabled"},
	} {
		if got := phaseLine(tc.mc); got != tc.want {
			t.Errorf("phaseLine(%+v) = %q, want %q", tc.mc.Status, got, tc.want)
		}
	}
	// reached needs the status to describe the current generation: a
	// Running of the previous spec is not the new one's.
	if reached(mesh(2, true, v1alpha1.MeshCNIStatus{ObservedGeneration: 1, Phase: "Running"}), "Running") {
		t.Error("reached Running with the status of an older generation")
	}
	if !reached(mesh(2, true, v1alpha1.MeshCNIStatus{ObservedGeneration: 2, Phase: "Running"}), "Running") {
		t.Error("not reached")
	}
	// "": the phase the spec settles in.
	for _, tc := range []struct {
		enabled bool
		phase   string
		want    bool
	}{{true, "Running", true}, {true, "Disabled", false}, {false, "Disabled", true}, {false, "Running", false}} {
		if got := reached(mesh(2, tc.enabled, v1alpha1.MeshCNIStatus{ObservedGeneration: 2, Phase: tc.phase}), ""); got != tc.want {
			t.Errorf("enabled %v, phase %s: settled %v, want %v", tc.enabled, tc.phase, got, tc.want)
		}
	}
}

func TestPodConditionsAndWarnings(t *testing.T) {
	p := &corev1.Pod{Status: corev1.PodStatus{Conditions: []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
		{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "ContainersNotReady", Message: "containers with unready status: [meshcni-agent]"},
		{Type: corev1.ContainersReady, Status: corev1.ConditionUnknown},
	}}}
	want := []string{"condition Ready=False ContainersNotReady: containers with unready status: [meshcni-agent]", "condition ContainersReady=Unknown"}
	if got := podConditions(p); !reflect.DeepEqual(got, want) {
		t.Errorf("podConditions = %q, want %q", got, want)
	}
	at := func(s int) metav1.Time { return metav1.NewTime(time.Unix(1_800_000_000+int64(s), 0)) }
	events := []corev1.Event{
		{Type: "Warning", Reason: "BackOff", Message: "back-off\n", Count: 5, LastTimestamp: at(40)},
		{Type: "Normal", Reason: "Pulled", Message: "pulled", LastTimestamp: at(50)},
		{Type: "Warning", Reason: "Failed", Message: "exit 1", Count: 1, LastTimestamp: at(10)},
		{Type: "Warning", Reason: "FailedMount", Message: "no such dir", EventTime: metav1.NewMicroTime(at(5).Time)},
		{Type: "Warning", Reason: "Unhealthy", Message: "readiness probe failed", Count: 2, LastTimestamp: at(30)},
	}
	// The latest three warnings, oldest first; Normal events left out.
	want = []string{"event Failed: exit 1", "event Unhealthy: readiness probe failed (x2)", "event BackOff: back-off (x5)"}
	if got := warnings(events, 3); !reflect.DeepEqual(got, want) {
		t.Errorf("warnings = %q, want %q", got, want)
	}
}

func TestSettings(t *testing.T) {
	given := func(flags ...string) map[string]bool {
		m := map[string]bool{}
		for _, f := range flags {
			m[f] = true
		}
		return m
	}
	// Only the flags given reach the spec; enabled always.
	s := Settings{LogLevel: "debug", Backend: "nftables", ExcludeNamespaces: []string{" a", "b", "a", ""}, Given: given("log-level", "exclude-namespaces")}
	want := map[string]any{"enabled": true, "logLevel": "debug", "excludeNamespaces": []any{"a", "b"}}
	if got := s.Spec(true); !reflect.DeepEqual(got, want) {
		t.Errorf("Spec = %v, want %v", got, want)
	}
	// --exclude-namespaces "" is an empty list (only the release namespace),
	// not "leave it as it is".
	s = Settings{Given: given("exclude-namespaces", "keep-on-exit", "backend")}
	want = map[string]any{"enabled": false, "excludeNamespaces": []any{}, "keepOnExit": false, "iptablesBackend": ""}
	if got := s.Spec(false); !reflect.DeepEqual(got, want) {
		t.Errorf("Spec = %v, want %v", got, want)
	}
	for _, tc := range []struct {
		s    Settings
		want string // "" valid
	}{
		{Settings{Backend: "iptables-nft", RepairMode: "label", LogLevel: "warn", Platform: "k3s", Image: "r/a@sha256:" + strings.Repeat("a", 64),
			Given: given("backend", "repair-mode", "log-level", "platform", "image")}, ""},
		{Settings{Backend: "ebpf", Given: given("backend")}, `--backend "ebpf": must be one of "", iptables-legacy, iptables-nft, nftables, legacy, nft`},
		{Settings{Backend: "ebpf"}, ""}, // not given: not written, not checked
		{Settings{RepairMode: "fix", Given: given("repair-mode")}, "--repair-mode \"fix\": must be one of repair, delete, label, off"},
		{Settings{PluginLogLevel: "trace", Given: given("plugin-log-level")}, "--plugin-log-level \"trace\": must be one of debug, info, warn, error"},
		{Settings{Platform: "eks", Given: given("platform")}, "must be one of default, gke, k3s, openshift"},
		{Settings{ExcludeNamespaces: []string{"Bad_NS"}, Given: given("exclude-namespaces")}, `"Bad_NS" is not a namespace name`},
		{Settings{Image: "repo@sha256:abc", Given: given("image")}, "--image: \"repo@sha256:abc\": a digest is @sha256: and 64 hex digits"},
	} {
		err := tc.s.Validate()
		if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.s, err, tc.want)
		}
	}
}
