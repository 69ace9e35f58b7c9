package cluster

import (
	"io"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
)

// RenderOptions prints the chart's manifests, as `helm template` would.
type RenderOptions struct {
	genericiooptions.IOStreams
	Settings ChartValues
	values   map[string]any

	flags     *genericclioptions.ConfigFlags
	namespace string
}

// NewCmdRender is `meshcnictl render`.
func NewCmdRender(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &RenderOptions{IOStreams: streams, flags: flags}
	cmd := &cobra.Command{
		Use:   "render [-n NAMESPACE] [--set key=value]",
		Short: "Print the chart's install (controller and CRD) exactly as helm template does, for kubectl or GitOps",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(); err != nil {
				return err
			}
			return o.Run()
		},
	}
	cmd.Flags().StringVar(&o.Settings.Image, "image", "", "image of the controller (and default of the agents), repository:tag or repository@sha256:digest")
	cmd.Flags().StringArrayVar(&o.Settings.Set, "set", nil, "any chart value, Helm syntax: --set controller.replicas=3 (repeatable)")
	return cmd
}

// Complete parses the settings and the namespace (-n, default
// meshcni-system).
func (o *RenderOptions) Complete() error {
	var err error
	o.values, err = o.Settings.Values()
	o.namespace = cmdutil.Namespace(o.flags)
	return err
}

// Run renders and prints, byte for byte what `helm template meshcni
// charts/meshcni --namespace NS --include-crds` prints.
func (o *RenderOptions) Run() error {
	out, err := chart.Template(o.values, chart.Release, o.namespace)
	if err != nil {
		return err
	}
	_, err = io.WriteString(o.Out, out)
	return err
}
