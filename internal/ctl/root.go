package ctl

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
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
		NewCmdRender(streams),
		NewCmdConsole(flags, streams),
		NewCmdVersion(flags, streams),
		NewCmdMutate(flags, streams),
	)
	return root
}

// RenderOptions prints the chart's manifests, as `helm template` would.
type RenderOptions struct {
	genericiooptions.IOStreams
	Settings Settings
	values   map[string]any
}

// NewCmdRender is `meshcnictl render`.
func NewCmdRender(streams genericiooptions.IOStreams) *cobra.Command {
	o := &RenderOptions{IOStreams: streams}
	cmd := &cobra.Command{
		Use:   "render [--platform NAME] [--exclude-namespaces a,b]",
		Short: "Print the manifests enable would apply (for kubectl or GitOps)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("exclude-namespaces") && o.Settings.ExcludeNamespaces == nil {
				o.Settings.ExcludeNamespaces = []string{}
			}
			if err := o.Complete(); err != nil {
				return err
			}
			if err := (&EnableOptions{Settings: o.Settings}).Validate(); err != nil {
				return err
			}
			return o.Run()
		},
	}
	addSettingsFlags(cmd, &o.Settings)
	return cmd
}

// Complete parses the settings.
func (o *RenderOptions) Complete() error {
	var err error
	o.values, err = o.Settings.Values()
	return err
}

// Run renders and prints.
func (o *RenderOptions) Run() error {
	m, err := Render(o.values)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(o.Out, "%s%s", Header, m.YAML)
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
