// Package repair finds pods on this node that started before meshcni could
// capture them — their istio-validation init container failed with the
// validation exit code — and repairs them: programs their rules in place,
// deletes them (with UID and resourceVersion preconditions), or labels them.
package repair

import (
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/internal/podspec"
	"github.com/meshcni/meshcni/internal/validation"
)

// ValidationContainer is the init container Istio injects in CNI mode.
const ValidationContainer = "istio-validation"

// Mode is what the controller does to a broken pod.
type Mode string

const (
	// InPlace programs the running pod's rules; the default.
	InPlace Mode = "repair"
	// Delete deletes the pod so that its controller recreates it.
	Delete Mode = "delete"
	// Label marks the pod with LabelKey for an operator or a policy.
	Label Mode = "label"
)

// LabelKey marks a pod found uncaptured, in Label mode.
const LabelKey = "cni.meshcni.io/uninitialized"

// ParseMode accepts repair, delete or label.
func ParseMode(s string) (Mode, error) {
	m := Mode(s)
	if !slices.Contains([]Mode{InPlace, Delete, Label}, m) {
		return "", fmt.Errorf("repair mode %q: must be repair, delete or label", s)
	}
	return m, nil
}

// failure identifies one validation failure of one pod (its UID and when
// the container finished). The same failure is never acted on twice.
type failure string

// brokenBy returns the failure to repair, if the pod has one: its
// validation container exited with the validation code, and the pod is one
// meshcni captures, as the judge (the plug-in's decision) says.
func brokenBy(pod *corev1.Pod, judge podspec.Judge) (failure, bool) {
	if _, excluded := judge.Namespace(pod.Namespace); excluded || pod.DeletionTimestamp != nil {
		return "", false
	}
	f, ok := validationFailed(pod)
	if !ok {
		return "", false
	}
	// Judged last: it reads the pod through its JSON, as the plug-in does.
	view, err := podspec.Of(pod)
	if err != nil {
		return "", false
	}
	// A spec error still counts as broken: act reports it on the pod.
	if v, err := judge.Pod(view, podspec.Addrs(view)); err == nil && !v.Capture {
		return "", false
	}
	return f, true
}

// validationFailed finds the validation container's exit with the
// validation code, now or last time.
func validationFailed(pod *corev1.Pod) (failure, bool) {
	statuses := append(append([]corev1.ContainerStatus(nil), pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...)
	for _, st := range statuses {
		if st.Name != ValidationContainer {
			continue
		}
		for _, term := range []*corev1.ContainerStateTerminated{st.State.Terminated, st.LastTerminationState.Terminated} {
			if term != nil && term.ExitCode == validation.ErrorCode {
				return failure(fmt.Sprintf("%s/%s", pod.UID, term.FinishedAt.UTC().Format(time.RFC3339))), true
			}
		}
	}
	return "", false
}
