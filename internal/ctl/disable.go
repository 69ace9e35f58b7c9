package ctl

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/internal/chart"
)

// DisableOptions deletes what enable applied: the DaemonSet first, so that
// every agent removes the plug-in from its node while its RBAC still
// exists, then the rest.
type DisableOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	// Wait for the agent pods to exit before deleting the rest.
	Wait    bool
	Timeout time.Duration

	interval time.Duration
	c        *clients
}

// NewDisableOptions returns options writing to streams.
func NewDisableOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *DisableOptions {
	return &DisableOptions{configFlags: flags, IOStreams: streams, Wait: true, Timeout: 5 * time.Minute, interval: 2 * time.Second}
}

// NewCmdDisable is `meshcnictl disable`.
func NewCmdDisable(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewDisableOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "disable",
		Short: "Remove meshcni from the cluster; each agent uninstalls the plug-in from its node",
		Long: `Deletes the agent DaemonSet, waits for the agent pods to exit (each one
takes meshcni out of its node's CNI config on SIGTERM), then deletes the
ConfigMap, RBAC, service accounts and the namespace. Pods already running
keep their rules until they are recreated.`,
		Args: cobra.NoArgs,
		RunE: runE(o),
	}
	cmd.Flags().BoolVar(&o.Wait, "wait", o.Wait, "wait for the agent pods to exit before deleting their RBAC and namespace")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", o.Timeout, "how long --wait waits")
	return cmd
}

// Complete builds the clients.
func (o *DisableOptions) Complete() error {
	var err error
	o.c, err = newClients(o.configFlags, true)
	return err
}

// Validate checks the flags.
func (o *DisableOptions) Validate() error {
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout %v: must be positive", o.Timeout)
	}
	return nil
}

// Run deletes the install.
func (o *DisableOptions) Run(ctx context.Context) error {
	ns := namespaceFlag(o.configFlags)
	if ns == "" {
		var err error
		if ns, err = findInstallNamespace(ctx, o.c); err != nil {
			return err
		}
	}
	// The gke platform renders every object the chart can make.
	m, err := RenderIn(map[string]any{"platform": "gke"}, ns)
	if err != nil {
		return err
	}
	objs := slices.Clone(m.Objects)
	slices.Reverse(objs) // DaemonSet first, namespace last
	found, terminating := 0, 0
	var errs []error
	for i, obj := range objs {
		rc, err := o.c.resource(obj)
		if err != nil {
			return err
		}
		live, err := rc.Get(ctx, obj.GetName(), metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return hint(err, "get", obj)
		case live.GetDeletionTimestamp() != nil:
			terminating++
			fmt.Fprintf(o.Out, "%s is already being deleted\n", describe(obj))
			continue
		}
		policy := metav1.DeletePropagationBackground
		err = rc.Delete(ctx, obj.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return hint(err, "delete", obj)
		}
		found++
		fmt.Fprintf(o.Out, "%s deleted\n", describe(obj))
		if i == 0 && obj.GetKind() == "DaemonSet" && o.Wait {
			if err := o.waitAgentsGone(ctx, ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if found == 0 {
		if terminating == 0 {
			fmt.Fprintln(o.Out, "meshcni is not installed; nothing to delete.")
		}
		return nil
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	fmt.Fprintln(o.Out, "meshcni disabled. Pods created before keep their rules until they are recreated.")
	return nil
}

// waitAgentsGone waits until no agent pod is left. On timeout it says which
// nodes may still have meshcni in their CNI config; disable goes on.
func (o *DisableOptions) waitAgentsGone(ctx context.Context, ns string) error {
	fmt.Fprintf(o.Out, "waiting up to %v for the agents to uninstall the plug-in from their nodes...\n", o.Timeout)
	wctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var left []string
	err := poll(wctx, o.interval, func(ctx context.Context) (bool, error) {
		pods, err := o.c.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: AgentSelector})
		if err != nil {
			return false, fmt.Errorf("list agent pods in %s: %w", ns, err)
		}
		left = left[:0]
		for _, p := range pods.Items {
			left = append(left, fmt.Sprintf("%s (node %s)", p.Name, p.Spec.NodeName))
		}
		return len(left) == 0, nil
	})
	if err == nil {
		return nil
	}
	if wctx.Err() != nil && ctx.Err() == nil {
		return fmt.Errorf("agent pods still running after %v: %s; their nodes may keep meshcni in the CNI config: run \"meshcnictl doctor\" there, or delete the pods (kubectl -n %s delete pod NAME)",
			o.Timeout, strings.Join(left, ", "), ns)
	}
	return err
}

// AgentSelector selects the agent pods (the DaemonSet's selector).
const AgentSelector = chart.AgentSelector

// findInstallNamespace finds the namespace of the agent DaemonSet; with
// none it returns the chart's default.
func findInstallNamespace(ctx context.Context, c *clients) (string, error) {
	list, err := c.kube.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{LabelSelector: PartOfSelector})
	if err != nil {
		return "", apiHint(fmt.Errorf("look for the meshcni DaemonSet: %w", err), "list daemonsets -A")
	}
	for _, ds := range list.Items {
		if ds.Name == DaemonSetName {
			return ds.Namespace, nil
		}
	}
	return DefaultNamespace, nil
}
