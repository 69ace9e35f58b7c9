package ctl

import (
	"context"
	"io"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/internal/chart"
)

// NewCmd is the meshcnictl root command, with kubectl's kubeconfig flags
// (--kubeconfig, --context, -n, ...) on every subcommand.
func NewCmd(streams genericiooptions.IOStreams) *cobra.Command {
	flags := genericclioptions.NewConfigFlags(true)
	root := &cobra.Command{
		Use:           "meshcnictl",
		Short:         "Operate meshcni: enable, disable, status, verify a pod's rules, doctor a node",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	root.SetIn(streams.In)
	flags.AddFlags(root.PersistentFlags())
	root.AddCommand(
		NewCmdEnable(flags, streams),
		NewCmdDisable(flags, streams),
		NewCmdStatus(flags, streams),
		NewCmdVerify(flags, streams),
		NewCmdDoctor(flags, streams),
		NewCmdConsole(flags, streams),
		NewCmdVersion(flags, streams),
		NewCmdMutate(flags, streams),
		NewCmdRender(flags, streams),
	)
	return root
}

// RenderOptions prints the chart's manifests, as `helm template` would.
type RenderOptions struct {
	genericiooptions.IOStreams
	Settings Settings
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
	o.namespace = DefaultNamespace
	if o.flags != nil && o.flags.Namespace != nil && *o.flags.Namespace != "" {
		o.namespace = *o.flags.Namespace
	}
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

// options is a command's Options{Complete,Validate,Run} (sample-cli-plugin).
type options interface {
	Complete() error
	Validate() error
	Run(context.Context) error
}

// runE runs a command that takes no arguments: Complete, Validate, Run.
func runE(o options) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if err := o.Complete(); err != nil {
			return err
		}
		if err := o.Validate(); err != nil {
			return err
		}
		return o.Run(cmd.Context())
	}
}
