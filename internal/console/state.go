package console

import (
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The MeshCNI resource, read through the dynamic client so that the page
// does not depend on the controller's Go types (api/v1alpha1).
var (
	GVR = schema.GroupVersionResource{Group: "meshcni.io", Version: "v1alpha1", Resource: "meshcnis"}
	GVK = schema.GroupVersionKind{Group: "meshcni.io", Version: "v1alpha1", Kind: "MeshCNI"}
)

const (
	// Name is the one MeshCNI a cluster has (a CEL rule refuses others).
	Name = "default"
	// AgentSelector picks the node agents' pods.
	AgentSelector = "app.kubernetes.io/name=meshcni,app.kubernetes.io/component=agent"
	// ConfigHashAnnotation is on each agent pod: the hash of the settings it
	// runs, compared with status.settingsHash (ctl.ConfigHashAnnotation).
	ConfigHashAnnotation = "meshcni.io/config-hash"
)

// State is everything the page shows, sent whole on every change so the
// page never merges partial updates.
type State struct {
	User string `json:"user"`
	// CanUpdate is the caller's right to update the MeshCNI, asked of the
	// API server (SelfSubjectAccessReview); the API server enforces it
	// again on the write, since the handler writes as the caller.
	CanUpdate      bool   `json:"canUpdate"`
	ReadOnlyReason string `json:"readOnlyReason,omitempty"`

	Exists          bool     `json:"exists"`
	ResourceVersion string   `json:"resourceVersion,omitempty"`
	Enabled         bool     `json:"enabled"`
	Excluded        []string `json:"excludeNamespaces"`
	Phase           string   `json:"phase"`
	Message         string   `json:"message,omitempty"`
	SettingsHash    string   `json:"settingsHash,omitempty"`
	ReadyNodes      string   `json:"readyNodes,omitempty"`

	Namespaces      []string `json:"namespaces"`
	NamespacesError string   `json:"namespacesError,omitempty"`
	Nodes           []Node   `json:"nodes"`
	NodesError      string   `json:"nodesError,omitempty"`
	// Error is set when the MeshCNI itself could not be read.
	Error string `json:"error,omitempty"`
}

// Node is one agent pod.
type Node struct {
	Node    string `json:"node"`
	Pod     string `json:"pod"`
	Ready   bool   `json:"ready"`
	State   string `json:"state"`
	Hash    string `json:"hash"`
	Current bool   `json:"current"`
}

// Phases the page shows beyond the controller's four.
const (
	PhaseUpdating     = "Updating"
	PhaseNotInstalled = "NotInstalled"
)

// Settings fills the resource's part of s from mc (nil: no MeshCNI yet).
// Pure.
func (s *State) Settings(mc *unstructured.Unstructured) {
	s.Excluded = []string{}
	if mc == nil {
		s.Phase = PhaseNotInstalled
		s.Message = fmt.Sprintf("there is no MeshCNI %q yet: Update Settings creates it", Name)
		return
	}
	s.Exists = true
	s.ResourceVersion = mc.GetResourceVersion()
	s.Enabled = true // the schema's default
	if v, found, err := unstructured.NestedBool(mc.Object, "spec", "enabled"); found && err == nil {
		s.Enabled = v
	}
	if v, found, err := unstructured.NestedStringSlice(mc.Object, "spec", "excludeNamespaces"); found && err == nil {
		s.Excluded = v
	}
	sort.Strings(s.Excluded)
	s.Phase, _, _ = unstructured.NestedString(mc.Object, "status", "phase")
	s.Message, _, _ = unstructured.NestedString(mc.Object, "status", "message")
	s.SettingsHash, _, _ = unstructured.NestedString(mc.Object, "status", "settingsHash")
	s.ReadyNodes, _, _ = unstructured.NestedString(mc.Object, "status", "readyNodes")
	if s.ReadyNodes == "" {
		ready, okR, _ := unstructured.NestedInt64(mc.Object, "status", "nodes", "ready")
		desired, okD, _ := unstructured.NestedInt64(mc.Object, "status", "nodes", "desired")
		if okR && okD {
			s.ReadyNodes = fmt.Sprintf("%d/%d", ready, desired)
		}
	}
	// A status the controller wrote for older settings says nothing about
	// the current ones: until it catches up, the change is in progress.
	observed, _, _ := unstructured.NestedInt64(mc.Object, "status", "observedGeneration")
	if observed < mc.GetGeneration() {
		s.Phase = PhaseUpdating
		s.Message = fmt.Sprintf("waiting for meshcni-controller to apply generation %d of the settings", mc.GetGeneration())
		s.SettingsHash = "" // the hash of settings no longer desired
	}
}

// Agents fills the node table from the agent pods, sorted by node. Pure.
func (s *State) Agents(pods []corev1.Pod) {
	s.Nodes = []Node{}
	for i := range pods {
		p := &pods[i]
		n := Node{Node: p.Spec.NodeName, Pod: p.Name, Ready: podReady(p), Hash: p.Annotations[ConfigHashAnnotation]}
		n.Current = s.SettingsHash != "" && n.Hash == s.SettingsHash
		n.State = podState(p, n.Ready)
		if n.Node == "" {
			n.Node = "(unscheduled)"
		}
		s.Nodes = append(s.Nodes, n)
	}
	sort.Slice(s.Nodes, func(i, j int) bool {
		if s.Nodes[i].Node != s.Nodes[j].Node {
			return s.Nodes[i].Node < s.Nodes[j].Node
		}
		return s.Nodes[i].Pod < s.Nodes[j].Pod
	})
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podState is one short phrase: what an operator needs to know first.
func podState(p *corev1.Pod, ready bool) string {
	if p.DeletionTimestamp != nil {
		return "Terminating"
	}
	for _, c := range p.Status.ContainerStatuses {
		if w := c.State.Waiting; w != nil && w.Reason != "" && w.Reason != "ContainerCreating" {
			return w.Reason
		}
	}
	switch {
	case ready:
		return "Ready"
	case p.Status.Phase == corev1.PodRunning:
		return "Running, not ready"
	case p.Status.Phase == "":
		return string(corev1.PodPending)
	}
	return string(p.Status.Phase)
}
