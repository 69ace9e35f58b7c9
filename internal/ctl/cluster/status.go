package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
	"github.com/meshcni/meshcni/internal/rollout"
)

// StatusOptions reports the MeshCNI's status, optionally waiting for
// Running.
type StatusOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Wait    bool
	Timeout time.Duration
	Output  string

	interval  time.Duration
	namespace string
	c         *cmdutil.Clients
}

// NewStatusOptions returns options writing to streams.
func NewStatusOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *StatusOptions {
	return &StatusOptions{configFlags: flags, IOStreams: streams, Timeout: DefaultWait, interval: 2 * time.Second}
}

// NewCmdStatus is `meshcnictl status`.
func NewCmdStatus(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewStatusOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "status [--wait [--timeout 5m]] [-o json|yaml]",
		Short: "Show the MeshCNI resource's status (Updating, Running, Degraded, Disabled) and each node's agent",
		Long: `Reads the cluster's MeshCNI "default": its phase, conditions, node counts
and the generation its status describes, then each node's agent in the
release namespace (-n). A Degraded node is explained: its agent pod, the
pod's failing conditions and its latest warning events.

-o json|yaml prints the resource's status as the API server holds it.`,
		Args: cobra.NoArgs,
		RunE: cmdutil.RunE(o),
	}
	cmd.Flags().BoolVar(&o.Wait, "wait", false, "wait until the status describes the current spec and is Running (Disabled when disabled); exit non-zero on timeout")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", o.Timeout, "how long --wait waits")
	cmd.Flags().StringVarP(&o.Output, "output", "o", "", "json or yaml: the resource's status as the API holds it (default: a report)")
	return cmd
}

// Complete builds the clients.
func (o *StatusOptions) Complete() error {
	var err error
	o.namespace = cmdutil.Namespace(o.configFlags)
	o.c, err = cmdutil.NewClients(o.configFlags, false)
	return err
}

// Validate checks the flags.
func (o *StatusOptions) Validate() error {
	if o.Wait && o.Timeout <= 0 {
		return fmt.Errorf("--timeout %v: must be positive", o.Timeout)
	}
	switch o.Output {
	case "", "json", "yaml":
		return nil
	}
	return fmt.Errorf("-o %q: want json or yaml", o.Output)
}

// Run prints the status; with Wait, first waits for Running (or, when
// the spec disables meshcni, Disabled).
func (o *StatusOptions) Run(ctx context.Context) error {
	var waitErr error
	if o.Wait {
		_, waitErr = waitPhase(ctx, o.c, "", o.Timeout, o.interval, o.ErrOut, notReadyNodes(o.c, o.namespace))
		// On a timeout the report still says why; any other error ends it.
		if waitErr != nil && !errors.As(waitErr, new(*TimeoutError)) {
			return waitErr
		}
	}
	rctx, cancel := context.WithTimeout(ctx, cmdutil.RequestTimeout)
	defer cancel()
	u, mc, err := getMesh(rctx, o.c)
	if errors.Is(err, errNoResource) {
		if o.Output != "" {
			return fmt.Errorf("no MeshCNI %s in the cluster: run \"meshcnictl enable\"", v1alpha1.Name)
		}
		fmt.Fprintf(o.Out, "Status: NotInstalled: no MeshCNI %s in the cluster; run \"meshcnictl enable\"\n", v1alpha1.Name)
		return waitErr
	}
	if err != nil {
		return err
	}
	if o.Output != "" {
		if err := printStatusAs(o.Out, u, o.Output); err != nil {
			return err
		}
		return waitErr
	}
	var report *rollout.Report
	var explained map[string][]string
	if mc.Spec.IsEnabled() {
		r, err := Report(rctx, o.c, o.namespace)
		if err != nil {
			return err
		}
		report = &r
		explained = explain(rctx, o.c, o.namespace, r)
	}
	PrintStatus(o.Out, mc, report, explained)
	return waitErr
}

// printStatusAs prints the status field exactly as the API server holds
// it: no typed round trip that could drop a field this meshcnictl does
// not know.
func printStatusAs(w io.Writer, u *unstructured.Unstructured, format string) error {
	st, _, _ := unstructured.NestedMap(u.Object, "status")
	if st == nil {
		st = map[string]any{}
	}
	var data []byte
	var err error
	if format == "json" {
		data, err = json.MarshalIndent(st, "", "  ")
		data = append(data, '\n')
	} else {
		data, err = yaml.Marshal(st)
	}
	if err != nil {
		return err
	}
	_, err = w.Write(data)
	return err
}

// PrintStatus writes the report: the resource's status, then each node's
// agent (report, nil when disabled) and why the troubled ones are so
// (explained, by node). Pure.
func PrintStatus(w io.Writer, mc *v1alpha1.MeshCNI, report *rollout.Report, explained map[string][]string) {
	st := mc.Status
	enabled := "enabled"
	if !mc.Spec.IsEnabled() {
		enabled = "disabled"
	}
	excluded := "-"
	if len(mc.Spec.ExcludeNamespaces) > 0 {
		excluded = strings.Join(mc.Spec.ExcludeNamespaces, ",")
	}
	fmt.Fprintf(w, "MeshCNI %s: %s, excluded namespaces %s\n", mc.Name, enabled, excluded)
	fmt.Fprintf(w, "Generation: %d, status observed %d", mc.Generation, st.ObservedGeneration)
	if st.ObservedGeneration < mc.Generation {
		fmt.Fprint(w, " (meshcni-controller has not acted on the latest spec yet)")
	}
	fmt.Fprintln(w)
	if mc.Spec.IsEnabled() {
		fmt.Fprintf(w, "Nodes: %d desired, %d ready, %d updated\n", st.Nodes.Desired, st.Nodes.Ready, st.Nodes.Updated)
	}
	if len(st.Conditions) > 0 {
		conds := make([]string, 0, len(st.Conditions))
		for _, c := range st.Conditions {
			conds = append(conds, c.Type+"="+string(c.Status))
		}
		fmt.Fprintf(w, "Conditions: %s\n", strings.Join(conds, " "))
	}
	if report != nil && len(report.Nodes) > 0 {
		fmt.Fprintln(w)
		printNodes(w, report.Nodes)
	}
	nodes := make([]string, 0, len(explained))
	for n := range explained {
		nodes = append(nodes, n)
	}
	sort.Strings(nodes)
	for _, n := range nodes {
		fmt.Fprintf(w, "\nNode %s:\n", n)
		for _, l := range explained[n] {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	fmt.Fprintln(w)
	phase := st.Phase
	if phase == "" {
		phase = "Pending"
		if st.Message == "" {
			st.Message = "meshcni-controller has not written a status yet; is it running? (meshcnictl version)"
		}
	}
	fmt.Fprintf(w, "Status: %s", phase)
	if st.Phase != "" && st.ObservedGeneration < mc.Generation {
		fmt.Fprintf(w, " (of generation %d; %d is not acted on yet)", st.ObservedGeneration, mc.Generation)
	}
	if st.Message != "" {
		fmt.Fprintf(w, ": %s", st.Message)
	}
	fmt.Fprintln(w)
}

// printNodes is the per-node table. Pure.
func printNodes(w io.Writer, nodes []rollout.NodeStatus) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tAGENT\tREADY\tSETTINGS")
	for _, n := range nodes {
		pod, ready, settings := n.Pod, fmt.Sprint(n.Ready), "stale"
		switch {
		case pod == "":
			pod, ready, settings = "<none>", "-", "-"
		case n.Current:
			settings = "current"
		}
		if n.Problem != "" {
			ready += " (failing)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Node, pod, ready, settings)
	}
	_ = tw.Flush()
}

// Report reads the release namespace's DaemonSet, ConfigMap, agent pods
// and the nodes, and judges each node's agent as the controller does.
func Report(ctx context.Context, c *cmdutil.Clients, namespace string) (rollout.Report, error) {
	kube := c.Kube
	var ds *appsv1.DaemonSet
	got, err := kube.AppsV1().DaemonSets(namespace).Get(ctx, DaemonSetName, metav1.GetOptions{})
	switch {
	case err == nil:
		ds = got
	case !apierrors.IsNotFound(err):
		return rollout.Report{}, cmdutil.APIHint(fmt.Errorf("get DaemonSet %s/%s: %w", namespace, DaemonSetName, err), "get daemonsets -n "+namespace)
	}
	if ds == nil {
		return rollout.Assess(nil, false, nil, nil), nil
	}
	cmFound := true
	if _, err := kube.CoreV1().ConfigMaps(namespace).Get(ctx, ConfigMapName, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		cmFound = false
	} else if err != nil {
		return rollout.Report{}, cmdutil.APIHint(fmt.Errorf("get ConfigMap %s/%s: %w", namespace, ConfigMapName, err), "")
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		return rollout.Report{}, fmt.Errorf("DaemonSet %s/%s has an invalid selector: %w", namespace, ds.Name, err)
	}
	pods, err := kube.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return rollout.Report{}, cmdutil.APIHint(fmt.Errorf("list agent pods in %s: %w", namespace, err), "list pods -n "+namespace)
	}
	var nodes []corev1.Node
	if nl, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
		nodes = nl.Items
	} else if !apierrors.IsForbidden(err) {
		return rollout.Report{}, cmdutil.APIHint(fmt.Errorf("list nodes: %w", err), "")
	}
	return rollout.Assess(ds, cmFound, pods.Items, nodes), nil
}

// explain says, for each node whose agent fails or is not ready, why:
// the problem the report found, the pod's conditions that are not True,
// and its latest warning events.
func explain(ctx context.Context, c *cmdutil.Clients, namespace string, r rollout.Report) map[string][]string {
	out := map[string][]string{}
	for _, n := range r.Nodes {
		if n.Pod == "" || (n.Problem == "" && n.Ready) {
			continue
		}
		lines := []string{"agent pod " + n.Pod}
		if n.Problem != "" {
			lines = append(lines, n.Problem)
		}
		pod, err := c.Kube.CoreV1().Pods(namespace).Get(ctx, n.Pod, metav1.GetOptions{})
		if err == nil {
			lines = append(lines, podConditions(pod)...)
		}
		events, err := c.Kube.CoreV1().Events(namespace).List(ctx, metav1.ListOptions{
			FieldSelector: "involvedObject.kind=Pod,involvedObject.name=" + n.Pod, Limit: 100,
		})
		if err == nil {
			lines = append(lines, warnings(events.Items, 3)...)
		}
		lines = append(lines, fmt.Sprintf("look further: kubectl -n %s describe pod %s; kubectl -n %s logs %s", namespace, n.Pod, namespace, n.Pod))
		out[n.Node] = lines
	}
	return out
}

// podConditions lists the pod's conditions that are not True. Pure.
func podConditions(p *corev1.Pod) []string {
	var out []string
	for _, c := range p.Status.Conditions {
		if c.Status == corev1.ConditionTrue {
			continue
		}
		l := fmt.Sprintf("condition %s=%s", c.Type, c.Status)
		if c.Reason != "" {
			l += " " + c.Reason
		}
		if c.Message != "" {
			l += ": " + c.Message
		}
		out = append(out, l)
	}
	return out
}

// warnings are the latest n Warning events, newest last. Pure.
func warnings(events []corev1.Event, n int) []string {
	var ws []corev1.Event
	for _, e := range events {
		if e.Type == corev1.EventTypeWarning {
			ws = append(ws, e)
		}
	}
	last := func(e corev1.Event) time.Time {
		if !e.LastTimestamp.IsZero() {
			return e.LastTimestamp.Time
		}
		return e.EventTime.Time
	}
	sort.SliceStable(ws, func(i, j int) bool { return last(ws[i]).Before(last(ws[j])) })
	if len(ws) > n {
		ws = ws[len(ws)-n:]
	}
	out := make([]string, 0, len(ws))
	for _, e := range ws {
		l := fmt.Sprintf("event %s: %s", e.Reason, strings.TrimSpace(e.Message))
		if e.Count > 1 {
			l += fmt.Sprintf(" (x%d)", e.Count)
		}
		out = append(out, l)
	}
	return out
}
