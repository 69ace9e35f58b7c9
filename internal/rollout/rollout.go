// Package rollout judges an install of the agents from what the API
// shows: the DaemonSet, its ConfigMap, the agent pods and the nodes. Pure:
// meshcni-controller feeds it from informers, meshcnictl from a list.
package rollout

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/meshcni/meshcni/internal/chart"
)

// Names of the chart's objects that the judgement reads.
const (
	DaemonSetName        = chart.DaemonSetName
	ConfigMapName        = chart.ConfigMapName
	ConfigHashAnnotation = chart.ConfigHashAnnotation
)

// State is the overall state of an install.
type State string

const (
	NotInstalled State = "NotInstalled"
	Updating     State = "Updating"
	Running      State = "Running"
	Degraded     State = "Degraded"
)

// NodeStatus is one line of `status`.
type NodeStatus struct {
	Node    string
	Pod     string // "" when the node has no agent pod
	Ready   bool
	Current bool   // the pod runs the DaemonSet's current settings hash
	Problem string // why the agent is failing, if it is
}

// Report is what status found.
type Report struct {
	State     State
	Reason    string
	Namespace string
	Nodes     []NodeStatus
}

// failingReasons are container waiting reasons that will not fix themselves.
var failingReasons = map[string]bool{
	"CrashLoopBackOff": true, "ImagePullBackOff": true, "ErrImagePull": true, "InvalidImageName": true,
	"CreateContainerConfigError": true, "CreateContainerError": true, "RunContainerError": true,
}

// Assess derives the report from the DaemonSet (nil: not installed), its
// pods and the nodes (nil: unknown, e.g. not allowed to list them). Pure.
func Assess(ds *appsv1.DaemonSet, configMapFound bool, pods []corev1.Pod, nodes []corev1.Node) Report {
	if ds == nil {
		return Report{State: NotInstalled, Reason: fmt.Sprintf("DaemonSet %s not found in any namespace; run \"meshcnictl enable\"", DaemonSetName)}
	}
	r := Report{Namespace: ds.Namespace}
	want := ds.Spec.Template.Annotations[ConfigHashAnnotation]
	byNode := map[string]*NodeStatus{}
	// Nodes the DaemonSet should cover: it tolerates every taint, so those
	// its nodeSelector matches.
	sel := labels.SelectorFromSet(ds.Spec.Template.Spec.NodeSelector)
	for _, n := range nodes {
		if sel.Matches(labels.Set(n.Labels)) {
			byNode[n.Name] = &NodeStatus{Node: n.Name}
		}
	}
	var failing, notReady, stale []string
	for i := range pods {
		p := &pods[i]
		if p.DeletionTimestamp != nil && byNode[p.Spec.NodeName] != nil && byNode[p.Spec.NodeName].Pod != "" {
			continue // the replacement already showed up
		}
		ns := &NodeStatus{Node: p.Spec.NodeName, Pod: p.Name, Ready: podReady(p), Current: want != "" && p.Annotations[ConfigHashAnnotation] == want}
		ns.Problem = podProblem(p)
		if ns.Node == "" {
			ns.Node = "<unscheduled>"
		}
		byNode[ns.Node] = ns
	}
	var missing []string
	for _, ns := range byNode {
		switch {
		case ns.Pod == "":
			missing = append(missing, ns.Node)
		case ns.Problem != "":
			failing = append(failing, fmt.Sprintf("node %s: agent pod %s: %s (kubectl -n %s logs %s; kubectl -n %s describe pod %s)",
				ns.Node, ns.Pod, ns.Problem, ds.Namespace, ns.Pod, ds.Namespace, ns.Pod))
		case !ns.Current:
			stale = append(stale, ns.Node)
		case !ns.Ready:
			notReady = append(notReady, ns.Node)
		}
		r.Nodes = append(r.Nodes, *ns)
	}
	sort.Slice(r.Nodes, func(i, j int) bool { return r.Nodes[i].Node < r.Nodes[j].Node })
	for _, l := range [][]string{failing, notReady, stale, missing} {
		sort.Strings(l)
	}
	st := ds.Status
	desired := st.DesiredNumberScheduled
	switch {
	case ds.DeletionTimestamp != nil:
		r.State, r.Reason = Degraded, fmt.Sprintf("DaemonSet %s/%s is being deleted (meshcnictl disable); run \"meshcnictl enable\" once it is gone", ds.Namespace, ds.Name)
	case !configMapFound:
		r.State, r.Reason = Degraded, fmt.Sprintf("ConfigMap %s/%s is missing, so agents cannot start; run \"meshcnictl enable\" to restore it", ds.Namespace, ConfigMapName)
	case len(failing) > 0:
		r.State, r.Reason = Degraded, strings.Join(failing, "; ")
	case st.ObservedGeneration < ds.Generation:
		r.State, r.Reason = Updating, fmt.Sprintf("the DaemonSet controller has not yet acted on generation %d (observed %d)", ds.Generation, st.ObservedGeneration)
	case st.UpdatedNumberScheduled < desired:
		r.State, r.Reason = Updating, fmt.Sprintf("%d of %d agents run the current pod template", st.UpdatedNumberScheduled, desired)
	case st.NumberReady < desired || st.NumberAvailable < desired:
		r.State, r.Reason = Updating, fmt.Sprintf("%d of %d agents ready", st.NumberReady, desired)
	case len(stale) > 0:
		r.State, r.Reason = Updating, "agents on "+strings.Join(stale, ", ")+" run older settings"
	case len(notReady) > 0:
		r.State, r.Reason = Updating, "agents on "+strings.Join(notReady, ", ")+" are not ready"
	case len(missing) > 0:
		r.State, r.Reason = Updating, "no agent pod yet on "+strings.Join(missing, ", ")
	case desired == 0:
		r.State, r.Reason = Degraded, fmt.Sprintf("no node runs an agent: no node matches the DaemonSet's nodeSelector %s", sel)
	default:
		r.State, r.Reason = Running, fmt.Sprintf("%d of %d agents ready with the current settings", st.NumberReady, desired)
	}
	return r
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podProblem(p *corev1.Pod) string {
	if p.Status.Phase == corev1.PodFailed {
		return "pod failed: " + p.Status.Reason + " " + p.Status.Message
	}
	for _, cs := range append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil && failingReasons[w.Reason] {
			msg := fmt.Sprintf("container %s: %s", cs.Name, w.Reason)
			if w.Message != "" {
				msg += ": " + w.Message
			}
			if cs.RestartCount > 0 {
				msg += fmt.Sprintf(" (%d restarts)", cs.RestartCount)
			}
			return msg
		}
	}
	return ""
}

// Print writes the per-node table and the overall line.
func (r Report) Print(w io.Writer) {
	if len(r.Nodes) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tAGENT\tREADY\tSETTINGS")
		for _, n := range r.Nodes {
			pod, ready, settings := n.Pod, fmt.Sprint(n.Ready), "stale"
			if pod == "" {
				pod, ready, settings = "<none>", "-", "-"
			} else if n.Current {
				settings = "current"
			}
			if n.Problem != "" {
				ready += " (" + n.Problem + ")"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Node, pod, ready, settings)
		}
		_ = tw.Flush()
	}
	fmt.Fprintf(w, "Status: %s: %s\n", r.State, r.Reason)
}
