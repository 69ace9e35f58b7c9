package controller

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/rollout"
)

// Observed is what one reconcile saw; Status turns it into the resource's
// status. Pure, so every rule is a table test.
type Observed struct {
	Generation int64
	Enabled    bool
	// SettingsHash is the config hash of the DaemonSet just rendered.
	SettingsHash string
	// Report judges the agents (enabled only).
	Report rollout.Report
	// Leftovers, when disabled, name what is still to go: agent pods,
	// node-side objects, tainted nodes. Empty: the node side is gone.
	Leftovers []string
	// Err is a reconcile failure (render, apply, delete): Degraded.
	Err error
}

// Status computes the status; prev's conditions keep their transition
// times when they do not change.
func Status(o Observed, prev []metav1.Condition) v1alpha1.MeshCNIStatus {
	st := v1alpha1.MeshCNIStatus{ObservedGeneration: o.Generation}
	if o.Enabled {
		st.SettingsHash = o.SettingsHash
		for _, n := range o.Report.Nodes {
			if n.Node == "<unscheduled>" {
				continue
			}
			st.Nodes.Desired++
			// Ready alone is not enough: an agent that is ready with an
			// older hash still runs the old settings.
			if n.Pod != "" && n.Ready && n.Problem == "" {
				st.Nodes.Ready++
				if n.Current {
					st.Nodes.Updated++
				}
			}
		}
		st.ReadyNodes = fmt.Sprintf("%d/%d", st.Nodes.Ready, st.Nodes.Desired)
	}
	switch {
	case o.Err != nil:
		st.Phase, st.Message = v1alpha1.PhaseDegraded, oneLine(o.Err.Error())
	case !o.Enabled && len(o.Leftovers) == 0:
		st.Phase = v1alpha1.PhaseDisabled
	case !o.Enabled:
		st.Phase, st.Message = v1alpha1.PhaseUpdating, "removing the node side: "+strings.Join(o.Leftovers, ", ")
	default:
		switch o.Report.State {
		case rollout.Running:
			st.Phase = v1alpha1.PhaseRunning
		case rollout.Degraded:
			st.Phase, st.Message = v1alpha1.PhaseDegraded, oneLine(o.Report.Reason)
		default: // Updating, or NotInstalled while the informers catch up
			st.Phase, st.Message = v1alpha1.PhaseUpdating, oneLine(o.Report.Reason)
		}
	}
	st.Conditions = conditions(st, o.Generation, prev)
	return st
}

func conditions(st v1alpha1.MeshCNIStatus, gen int64, prev []metav1.Condition) []metav1.Condition {
	conds := append([]metav1.Condition(nil), prev...)
	set := func(typ string, ok bool, reason, msg string) {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		if msg == "" {
			msg = reason
		}
		meta.SetStatusCondition(&conds, metav1.Condition{Type: typ, Status: s, Reason: reason, Message: msg, ObservedGeneration: gen})
	}
	set(v1alpha1.ConditionReady, st.Phase == v1alpha1.PhaseRunning, st.Phase, st.Message)
	set(v1alpha1.ConditionProgressing, st.Phase == v1alpha1.PhaseUpdating, st.Phase, st.Message)
	set(v1alpha1.ConditionDegraded, st.Phase == v1alpha1.PhaseDegraded, st.Phase, st.Message)
	return conds
}

// oneLine keeps the first line and at most 1,000 bytes: a status message
// is read in `kubectl get` and the console, not as a log.
func oneLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 1000 {
		s = s[:1000] + "…"
	}
	return s
}
