package cluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/charts"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
	"github.com/meshcni/meshcni/internal/inject"
)

// MutateOptions prints objects as meshcni's admission webhook would
// mutate them, with the webhook's own code (internal/inject), so GitOps
// users can pre-render and tests can check it offline.
type MutateOptions struct {
	genericiooptions.IOStreams
	flags *genericclioptions.ConfigFlags

	File              string
	ExcludeNamespaces []string // nil: the chart's list
	namespace         string
	input             []byte
}

// NewCmdMutate is `meshcnictl mutate`.
func NewCmdMutate(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &MutateOptions{IOStreams: streams, flags: flags}
	cmd := &cobra.Command{
		Use:   "mutate -f FILE [--exclude-namespaces a,b] [-n NS]",
		Short: "Print Pods and workloads as meshcni's admission webhook would mutate them (offline)",
		Long: "Reads Kubernetes objects (multi-document YAML; - for stdin) and prints them with the pods and pod\n" +
			"templates converted as meshcni's webhook would: Istio's istio-init becomes istio-validation and\n" +
			"annotations in captured namespaces, istio-validation becomes istio-init in excluded ones. Other\n" +
			"objects are printed unchanged. An object without a namespace is in -n's (default \"default\").",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("exclude-namespaces") && o.ExcludeNamespaces == nil {
				o.ExcludeNamespaces = []string{}
			}
			return cmdutil.RunE(o)(cmd, nil)
		},
	}
	cmd.Flags().StringVarP(&o.File, "filename", "f", "", "file of objects to mutate (- for stdin)")
	cmd.Flags().StringSliceVar(&o.ExcludeNamespaces, "exclude-namespaces", nil, "namespaces meshcni excludes (default: the chart's list and its own namespace)")
	return cmd
}

// Complete reads the input and settles the namespace and exclusions.
func (o *MutateOptions) Complete() error {
	o.namespace = "default"
	if o.flags != nil && o.flags.Namespace != nil && *o.flags.Namespace != "" {
		o.namespace = *o.flags.Namespace
	}
	if o.ExcludeNamespaces == nil {
		ex, err := chartExcludes()
		if err != nil {
			return err
		}
		o.ExcludeNamespaces = ex
	}
	var err error
	switch o.File {
	case "":
		return fmt.Errorf("-f FILE is required (- reads stdin)")
	case "-":
		o.input, err = io.ReadAll(o.In)
	default:
		o.input, err = os.ReadFile(o.File)
	}
	return err
}

// Validate checks the exclusions are namespace names.
func (o *MutateOptions) Validate() error {
	for _, ns := range o.ExcludeNamespaces {
		if strings.TrimSpace(ns) == "" {
			return fmt.Errorf("--exclude-namespaces: empty name")
		}
	}
	return nil
}

// Run mutates and prints; nothing is printed when any document is bad.
func (o *MutateOptions) Run(context.Context) error {
	out, _, err := inject.Documents(o.input, o.namespace, o.ExcludeNamespaces)
	if err != nil {
		return fmt.Errorf("%s: %w", o.File, err)
	}
	_, err = o.Out.Write(out)
	return err
}

// chartExcludes is the exclusion list the chart gives the agent and the
// webhook by default: its namespace and excludeNamespaces.
func chartExcludes() ([]string, error) {
	raw, err := charts.FS.ReadFile(path.Join(charts.Root, "values.yaml"))
	if err != nil {
		return nil, err
	}
	var v struct {
		ExcludeNamespaces []string `json:"excludeNamespaces"`
	}
	if err := yaml.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("chart values: %v", err)
	}
	return append([]string{DefaultNamespace}, v.ExcludeNamespaces...), nil
}
