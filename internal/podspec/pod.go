package podspec

import (
	"encoding/json"
	"fmt"
)

// Pod is what meshcni reads of a pod: the fields of the API's JSON that
// decide capture and its spec, and nothing else. The plug-in decodes it
// straight from the API or the agent's cache so that it never links
// k8s.io/api: the plug-in is a new process per pod, and that package's
// initialisation and size cost start-up time on every ADD (measured in
// docs/performance.md).
// The names and JSON keys are the API's (k8s.io/api/core/v1), so code
// reads the same.
type Pod struct {
	ObjectMeta `json:"metadata"`
	Spec       PodSpec   `json:"spec"`
	Status     PodStatus `json:"status"`
}

type ObjectMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	UID         string            `json:"uid"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type PodSpec struct {
	Containers      []Container      `json:"containers"`
	InitContainers  []Container      `json:"initContainers,omitempty"`
	SecurityContext *SecurityContext `json:"securityContext,omitempty"`
}

type Container struct {
	Name string `json:"name"`
	// RestartPolicy "Always" on an init container makes it a native
	// sidecar.
	RestartPolicy   string           `json:"restartPolicy,omitempty"`
	SecurityContext *SecurityContext `json:"securityContext,omitempty"`
	Env             []EnvVar         `json:"env,omitempty"`
}

// SecurityContext holds the identity fields of both the pod's and a
// container's security context.
type SecurityContext struct {
	RunAsUser  *int64 `json:"runAsUser,omitempty"`
	RunAsGroup *int64 `json:"runAsGroup,omitempty"`
}

// EnvVar is a literal variable; one set from valueFrom reads as empty,
// as with k8s.io/api.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value,omitempty"`
}

type PodStatus struct {
	PodIPs []PodIP `json:"podIPs,omitempty"`
}

type PodIP struct {
	IP string `json:"ip"`
}

// restartAlways is corev1.ContainerRestartPolicyAlways.
const restartAlways = "Always"

// Of returns meshcni's view of an API pod (a *corev1.Pod, or anything
// that encodes as one) through its JSON: the same bytes the plug-in
// decodes, so the agent and meshcnictl judge a pod exactly as ADD does.
func Of(apiPod any) (*Pod, error) {
	raw, err := json.Marshal(apiPod)
	if err != nil {
		return nil, fmt.Errorf("encode pod: %w", err)
	}
	p := &Pod{}
	if err := json.Unmarshal(raw, p); err != nil {
		return nil, fmt.Errorf("decode pod: %w", err)
	}
	return p, nil
}
