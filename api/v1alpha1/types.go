package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MeshCNI is the desired state of meshcni in the cluster and its status.
type MeshCNI struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MeshCNISpec   `json:"spec,omitempty"`
	Status MeshCNIStatus `json:"status,omitempty"`
}

// MeshCNIList is a list of MeshCNI (at most one, named "default").
type MeshCNIList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MeshCNI `json:"items"`
}

// MeshCNISpec holds every node-side setting of the chart's values. The
// schema's defaults fill what a writer leaves out.
type MeshCNISpec struct {
	// Enabled installs the node side; false removes it and every node's
	// startup taint. A pointer so that a typed client leaving it out gets
	// the schema's default (true), not false.
	Enabled *bool `json:"enabled,omitempty"`
	// ExcludeNamespaces are never captured. Nil (absent or null) takes the
	// default [kube-system, istio-system]; an empty list excludes only
	// meshcni's own namespace, which is always added.
	ExcludeNamespaces []string `json:"excludeNamespaces"`
	// IptablesBackend: "" (auto), iptables-legacy, iptables-nft, nftables;
	// legacy and nft are accepted spellings.
	IptablesBackend string `json:"iptablesBackend,omitempty"`
	// RepairMode: repair, delete, label or off.
	RepairMode string `json:"repairMode,omitempty"`
	// LogLevel of the agent: debug, info, warn, error.
	LogLevel string `json:"logLevel,omitempty"`
	// PluginLogLevel of the CNI plug-in: debug, info, warn, error.
	PluginLogLevel string `json:"pluginLogLevel,omitempty"`
	// KeepOnExit leaves the plug-in installed when an agent stops.
	KeepOnExit bool `json:"keepOnExit,omitempty"`
	// Image is the agent image, a full reference with a tag or an
	// @sha256 digest; "" runs the controller's own version.
	Image string `json:"image,omitempty"`
	// Platform picks the node's CNI directories: default, gke, k3s,
	// openshift.
	Platform string `json:"platform,omitempty"`
}

// IsEnabled reads Enabled with its default.
func (s *MeshCNISpec) IsEnabled() bool { return s.Enabled == nil || *s.Enabled }

// Phases of the status.
const (
	PhaseUpdating = "Updating"
	PhaseRunning  = "Running"
	PhaseDegraded = "Degraded"
	PhaseDisabled = "Disabled"
)

// Condition types of the status.
const (
	ConditionReady       = "Ready"
	ConditionProgressing = "Progressing"
	ConditionDegraded    = "Degraded"
)

// MeshCNIStatus is what the controller observed.
type MeshCNIStatus struct {
	// ObservedGeneration is the spec generation this status describes.
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase: Updating, Running, Degraded or Disabled.
	Phase string `json:"phase,omitempty"`
	// Conditions: Ready, Progressing, Degraded.
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// SettingsHash is the hash of the node-side settings now desired; an
	// agent pod runs them when its meshcni.io/config-hash annotation equals it.
	SettingsHash string `json:"settingsHash,omitempty"`
	// Nodes counts the agents.
	Nodes NodeCounts `json:"nodes,omitempty"`
	// ReadyNodes is "ready/desired", for the printer column.
	ReadyNodes string `json:"readyNodes,omitempty"`
	// Message says, in one line, why the phase is not Running.
	Message string `json:"message,omitempty"`
}

// NodeCounts counts agents: scheduled, ready, and ready with the current
// settings hash.
type NodeCounts struct {
	Desired int32 `json:"desired"`
	Ready   int32 `json:"ready"`
	Updated int32 `json:"updated"`
}
