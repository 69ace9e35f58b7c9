package ctl

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/internal/rollout"
)

// StatusOptions reports the install's state, optionally waiting for Running.
type StatusOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Wait    bool
	Timeout time.Duration

	interval time.Duration
	c        *clients
}

// NewStatusOptions returns options writing to streams.
func NewStatusOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *StatusOptions {
	return &StatusOptions{configFlags: flags, IOStreams: streams, Timeout: 5 * time.Minute, interval: 2 * time.Second}
}

// NewCmdStatus is `meshcnictl status`.
func NewCmdStatus(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewStatusOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "status [--wait [--timeout 5m]]",
		Short: "Show each node's agent and the overall state: NotInstalled, Updating, Running or Degraded",
		Args:  cobra.NoArgs,
		RunE:  runE(o),
	}
	cmd.Flags().BoolVar(&o.Wait, "wait", false, "wait until the state is Running; exit non-zero on timeout")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", o.Timeout, "how long --wait waits")
	return cmd
}

// Complete builds the clients.
func (o *StatusOptions) Complete() error {
	var err error
	o.c, err = newClients(o.configFlags, false)
	return err
}

// Validate checks the flags.
func (o *StatusOptions) Validate() error {
	if o.Wait && o.Timeout <= 0 {
		return fmt.Errorf("--timeout %v: must be positive", o.Timeout)
	}
	return nil
}

// Run prints the report; with Wait, polls until Running or the timeout.
func (o *StatusOptions) Run(ctx context.Context) error {
	if !o.Wait {
		r, err := o.Report(ctx)
		if err != nil {
			return err
		}
		r.Print(o.Out)
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var last rollout.Report
	var lastLine string
	err := poll(wctx, o.interval, func(context.Context) (bool, error) {
		// Each look gets its own deadline, not the wait's: client-go's rate
		// limiter refuses a request that its wait would carry past the
		// context's deadline, which turned a timeout into a rate-limiter
		// error. The wait's deadline is poll's alone.
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		r, err := o.Report(rctx)
		if err != nil {
			return false, err
		}
		last = r
		if line := string(r.State) + r.Reason; line != lastLine && r.State != rollout.Running {
			lastLine = line
			fmt.Fprintf(o.ErrOut, "%s: %s\n", r.State, r.Reason)
		}
		return r.State == rollout.Running, nil
	})
	if last.State != "" {
		last.Print(o.Out)
	}
	if err != nil {
		if wctx.Err() != nil && ctx.Err() == nil {
			return fmt.Errorf("timed out after %v waiting for Running; last state %s: %s", o.Timeout, last.State, last.Reason)
		}
		return err
	}
	return nil
}

// Report reads the DaemonSet, ConfigMap, agent pods and nodes.
func (o *StatusOptions) Report(ctx context.Context) (rollout.Report, error) {
	kube := o.c.kube
	// -n limits the search to that namespace; without it, any namespace.
	list, err := kube.AppsV1().DaemonSets(namespaceFlag(o.configFlags)).List(ctx, metav1.ListOptions{LabelSelector: PartOfSelector})
	if err != nil {
		return rollout.Report{}, apiHint(fmt.Errorf("look for DaemonSet %s: %w", DaemonSetName, err), "list daemonsets -A")
	}
	var ds *appsv1.DaemonSet
	for i := range list.Items {
		if list.Items[i].Name == DaemonSetName {
			ds = &list.Items[i]
		}
	}
	if ds == nil {
		return rollout.Assess(nil, false, nil, nil), nil
	}
	cmFound := true
	if _, err := kube.CoreV1().ConfigMaps(ds.Namespace).Get(ctx, ConfigMapName, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		cmFound = false
	} else if err != nil {
		return rollout.Report{}, fmt.Errorf("get ConfigMap %s/%s: %w", ds.Namespace, ConfigMapName, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		return rollout.Report{}, fmt.Errorf("DaemonSet %s/%s has an invalid selector: %w; run \"meshcnictl enable\"", ds.Namespace, ds.Name, err)
	}
	pods, err := kube.CoreV1().Pods(ds.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return rollout.Report{}, fmt.Errorf("list agent pods in %s: %w", ds.Namespace, err)
	}
	var nodes []corev1.Node
	if nl, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
		nodes = nl.Items
	} else if !apierrors.IsForbidden(err) {
		return rollout.Report{}, fmt.Errorf("list nodes: %w", err)
	}
	return rollout.Assess(ds, cmFound, pods.Items, nodes), nil
}
