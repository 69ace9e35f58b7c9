package ctl

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
)

// EnableOptions installs or updates the chart's objects by server-side apply.
type EnableOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Settings Settings

	values map[string]any
	c      *clients
}

// NewEnableOptions returns options writing to streams.
func NewEnableOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *EnableOptions {
	return &EnableOptions{configFlags: flags, IOStreams: streams}
}

// NewCmdEnable is `meshcnictl enable`.
func NewCmdEnable(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewEnableOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "enable [--exclude-namespaces a,b] [--platform NAME]",
		Short: "Install or update meshcni in the cluster (server-side apply of the chart)",
		Long: `Renders the meshcni chart and server-side applies its objects with field
manager "meshcnictl". Running it again updates them; a settings change
rolls the agents (follow with "meshcnictl status --wait").

The flags are the whole desired state: a flag left out takes the chart's
default, not the value of an earlier run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("exclude-namespaces") && o.Settings.ExcludeNamespaces == nil {
				o.Settings.ExcludeNamespaces = []string{} // --exclude-namespaces="": none but our own
			}
			if err := o.Complete(); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	addSettingsFlags(cmd, &o.Settings)
	return cmd
}

func addSettingsFlags(cmd *cobra.Command, s *Settings) {
	cmd.Flags().StringVar(&s.Platform, "platform", "", "node layout: "+strings.Join(Platforms, ", ")+" (default: the chart's, default)")
	cmd.Flags().StringSliceVar(&s.ExcludeNamespaces, "exclude-namespaces", nil, "namespaces whose pods are never captured (default kube-system,istio-system; the install's own namespace is always added)")
	cmd.Flags().StringVar(&s.Image, "image", "", "agent image as repository:tag (default: the chart's)")
	cmd.Flags().StringArrayVar(&s.Set, "set", nil, "any chart value, Helm syntax: --set logLevel=debug (repeatable)")
}

// Complete renders nothing yet; it parses the settings and builds clients.
func (o *EnableOptions) Complete() error {
	var err error
	if o.values, err = o.Settings.Values(); err != nil {
		return err
	}
	o.c, err = newClients(o.configFlags, true)
	return err
}

// Validate checks the flags that the chart's schema would reject with a
// less helpful message.
func (o *EnableOptions) Validate() error {
	if p := o.Settings.Platform; p != "" && !slices.Contains(Platforms, p) {
		return fmt.Errorf("--platform %q: must be one of %s (or set cniBinDir/cniConfDir with --set)", p, strings.Join(Platforms, ", "))
	}
	for _, ns := range o.Settings.ExcludeNamespaces {
		if ns = strings.TrimSpace(ns); ns != "" && !dnsLabel.MatchString(ns) {
			return fmt.Errorf("--exclude-namespaces: %q is not a namespace name (lower-case letters, digits and '-')", ns)
		}
	}
	return nil
}

// Run renders the chart and applies each object in order.
func (o *EnableOptions) Run(ctx context.Context) error {
	ns := namespaceFlag(o.configFlags)
	if ns == "" {
		ns = DefaultNamespace
	}
	m, err := RenderIn(o.values, ns)
	if err != nil {
		return err
	}
	for _, obj := range m.Objects {
		rc, err := o.c.resource(obj)
		if err != nil {
			return err
		}
		// Force: meshcnictl owns these objects; take fields back from
		// anyone who edited them (kubectl edit), as helm upgrade would.
		if _, err := rc.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: FieldManager, Force: true}); err != nil {
			return hint(err, "apply", obj)
		}
		fmt.Fprintf(o.Out, "%s serverside-applied\n", describe(obj))
	}
	fmt.Fprintln(o.Out, `meshcni enabled; follow the rollout with "meshcnictl status --wait".`)
	return nil
}
