package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
)

// DisableOptions sets the MeshCNI's enabled to false; meshcni-controller
// then removes the agents (each takes the plug-in out of its node's CNI
// config) and every node's startup taint. Purge also removes the
// controller's release and the CRD.
type DisableOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Wait    bool
	Timeout time.Duration
	Purge   bool

	interval  time.Duration
	namespace string
	c         *cmdutil.Clients
}

// NewDisableOptions returns options writing to streams.
func NewDisableOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *DisableOptions {
	return &DisableOptions{configFlags: flags, IOStreams: streams, Wait: true, Timeout: DefaultWait, interval: time.Second}
}

// NewCmdDisable is `meshcnictl disable`.
func NewCmdDisable(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewDisableOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "disable [--wait=false] [--timeout 5m] [--purge]",
		Short: "Turn meshcni off: set the MeshCNI resource's enabled to false; the controller removes the agents",
		Long: `Writes enabled: false into the cluster's MeshCNI "default". meshcni-controller
then deletes the agent DaemonSet, waits for every agent to take the plug-in
out of its node's CNI config, deletes the rest of the node side and lifts
every node's meshcni.io/agent-not-ready taint: phase Disabled, which
--wait (the default) waits for. Pods already running keep their rules
until they are recreated.

--purge then also deletes the MeshCNI, the controller's release in the
namespace (-n) and the CRD: nothing of meshcni is left.`,
		Args: cobra.NoArgs,
		RunE: cmdutil.RunE(o),
	}
	cmd.Flags().BoolVar(&o.Wait, "wait", o.Wait, "wait for phase Disabled")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", o.Timeout, "how long --wait waits")
	cmd.Flags().BoolVar(&o.Purge, "purge", false, "after Disabled, also delete the MeshCNI, the controller's release and the CRD")
	return cmd
}

// Complete builds the clients.
func (o *DisableOptions) Complete() error {
	var err error
	o.namespace = cmdutil.Namespace(o.configFlags)
	o.c, err = cmdutil.NewClients(o.configFlags, true)
	return err
}

// Validate checks the flags.
func (o *DisableOptions) Validate() error {
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout %v: must be positive", o.Timeout)
	}
	if o.Purge && !o.Wait {
		// The controller must still run to remove the agents.
		return errors.New("--purge needs --wait: the controller's release may go only once the agents are gone")
	}
	return nil
}

// Run disables, waits and purges.
func (o *DisableOptions) Run(ctx context.Context) error {
	_, mc, err := getMesh(ctx, o.c)
	switch {
	case errors.Is(err, errNoResource):
		fmt.Fprintln(o.Out, "no MeshCNI default: meshcni is not enabled.")
	case err != nil:
		return err
	case mc.DeletionTimestamp != nil:
		fmt.Fprintln(o.Out, "MeshCNI default is being deleted: meshcni-controller is removing the agents.")
	default:
		if _, err := writeSpec(ctx, o.c, map[string]any{"enabled": false}, false); err != nil {
			return cmdutil.APIHint(fmt.Errorf("write MeshCNI %s: %w", v1alpha1.Name, err), "patch meshcnis.meshcni.io")
		}
		fmt.Fprintf(o.Out, "meshcni.meshcni.io/%s configured: enabled=false\n", v1alpha1.Name)
		if !o.Wait {
			fmt.Fprintln(o.Out, `meshcni-controller removes the agents; follow with "kubectl get meshcni -w".`)
			return nil
		}
		if _, err := waitPhase(ctx, o.c, v1alpha1.PhaseDisabled, o.Timeout, o.interval, o.Out, o.agentsLeft); err != nil {
			return err
		}
		fmt.Fprintln(o.Out, "meshcni is Disabled: no agent runs, no node keeps the plug-in or the startup taint. Pods created before keep their rules until they are recreated.")
	}
	if !o.Purge {
		return nil
	}
	if err := o.deleteMesh(ctx); err != nil {
		return err
	}
	if err := purgeRelease(ctx, o.c, o.namespace, o.Out); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "purged: the MeshCNI, meshcni-controller's release in %s and the CRD %s are deleted.\n", o.namespace, CRDName)
	return nil
}

// deleteMesh deletes the MeshCNI and waits until the controller has let
// it go (its finalizer), while the controller still runs.
func (o *DisableOptions) deleteMesh(ctx context.Context) error {
	err := meshcnis(o.c).Delete(ctx, v1alpha1.Name, metav1.DeleteOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return cmdutil.APIHint(fmt.Errorf("delete MeshCNI %s: %w", v1alpha1.Name, err), "delete meshcnis.meshcni.io")
	}
	fmt.Fprintf(o.Out, "meshcni.meshcni.io/%s deleted\n", v1alpha1.Name)
	err = cmdutil.Poll(ctx, o.Timeout, o.interval, func(ctx context.Context) (bool, error) {
		_, _, err := getMesh(ctx, o.c)
		if errors.Is(err, errNoResource) {
			return true, nil
		}
		return false, err
	})
	if errors.Is(err, cmdutil.ErrTimeout) {
		return fmt.Errorf("MeshCNI %s still exists after %v: meshcni-controller holds it (finalizer %s) until the node side is gone; is it running? (kubectl -n %s get pods -l %s)",
			v1alpha1.Name, o.Timeout, "meshcni.io/uninstall", o.namespace, ControllerSelector)
	}
	return err
}

// agentsLeft names the agent pods still running, on a timeout.
func (o *DisableOptions) agentsLeft(ctx context.Context) string {
	pods, err := o.c.Kube.CoreV1().Pods(o.namespace).List(ctx, metav1.ListOptions{LabelSelector: chart.AgentSelector})
	if err != nil || len(pods.Items) == 0 {
		return ""
	}
	msg := "agent pods still running:"
	for _, p := range pods.Items {
		msg += fmt.Sprintf(" %s (node %s)", p.Name, p.Spec.NodeName)
	}
	return msg + `; their nodes may keep meshcni in the CNI config: run "meshcnictl doctor" there`
}
