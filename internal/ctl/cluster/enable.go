package cluster

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
)

// EnableOptions installs the controller's release if it is missing and
// writes the MeshCNI "default" with enabled: true and the given settings.
type EnableOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Settings Settings
	// Release are --set values for the controller's release, used only
	// when enable installs it.
	Release ChartValues
	DryRun  bool
	// Wait is how long to wait for Running; 0: do not wait.
	Wait time.Duration

	interval  time.Duration
	namespace string
	values    map[string]any
	c         *cmdutil.Clients
}

// NewEnableOptions returns options writing to streams.
func NewEnableOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *EnableOptions {
	return &EnableOptions{configFlags: flags, IOStreams: streams, interval: time.Second}
}

// DefaultWait is --wait's timeout when none is given.
const DefaultWait = 5 * time.Minute

// NewCmdEnable is `meshcnictl enable`.
func NewCmdEnable(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewEnableOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "enable [--exclude-namespaces a,b] [--backend NAME] [--dry-run] [--wait[=5m]]",
		Short: "Turn meshcni on: install the controller if missing, then set the MeshCNI resource's enabled and settings",
		Long: `Installs meshcni-controller's release into the namespace (-n, default
meshcni-system) if it is missing: the MeshCNI CustomResourceDefinition, then
the chart without its node side, server-side applied with field manager
"meshcnictl". Then it writes the cluster's MeshCNI "default" with
enabled: true and the settings given as flags, and only those: a setting
made in the console, with kubectl, or by an earlier enable stays as it is.
The controller installs the agents and reports their rollout in the
resource's status; --wait follows it (Updating, then Running).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Settings.given(cmd.Flags())
			return cmdutil.RunE(o)(cmd, nil)
		},
	}
	addSettingsFlags(cmd.Flags(), &o.Settings)
	cmd.Flags().StringArrayVar(&o.Release.Set, "set", nil, "a chart value for the controller's release when enable installs it, Helm syntax: --set controller.replicas=1 (repeatable)")
	cmd.Flags().BoolVar(&o.DryRun, "dry-run", false, "print what would be applied (YAML) and change nothing; the API server checks what it can (server-side dry run)")
	cmd.Flags().DurationVar(&o.Wait, "wait", 0, "wait until the MeshCNI is Running, up to the given time (--wait alone: "+DefaultWait.String()+"); exit non-zero on timeout")
	cmd.Flags().Lookup("wait").NoOptDefVal = DefaultWait.String()
	return cmd
}

// Complete parses the release values and builds the clients.
func (o *EnableOptions) Complete() error {
	var err error
	if o.values, err = o.Release.Values(); err != nil {
		return err
	}
	o.namespace = cmdutil.Namespace(o.configFlags)
	o.c, err = cmdutil.NewClients(o.configFlags, true)
	return err
}

// Validate checks the flags.
func (o *EnableOptions) Validate() error {
	if o.Wait < 0 {
		return fmt.Errorf("--wait=%v: must be positive", o.Wait)
	}
	if o.DryRun && o.Wait > 0 {
		return fmt.Errorf("--dry-run changes nothing, so there is nothing to --wait for")
	}
	return o.Settings.Validate()
}

// Run installs the release if needed, writes the resource and waits.
func (o *EnableOptions) Run(ctx context.Context) error {
	rel, err := findRelease(ctx, o.c)
	if err != nil {
		return err
	}
	switch {
	case len(rel.namespaces) > 0 && !slices.Contains(rel.namespaces, o.namespace):
		// Two controllers would fight over the one MeshCNI.
		return fmt.Errorf("meshcni-controller is installed in namespace %s, not %s: pass -n %s", strings.Join(rel.namespaces, ", "), o.namespace, rel.namespaces[0])
	case rel.crd && len(rel.namespaces) > 0:
		// Installed (by enable or by Helm): leave the release alone.
	case o.DryRun:
		if err := o.printRelease(ctx, rel); err != nil {
			return err
		}
	default:
		fmt.Fprintf(o.Out, "installing meshcni-controller into namespace %s\n", o.namespace)
		crd, m, err := Release(o.values, o.namespace)
		if err != nil {
			return err
		}
		if err := applyRelease(ctx, o.c, crd, m, o.Out); err != nil {
			return err
		}
	}

	spec := o.Settings.Spec(true)
	if o.DryRun && !rel.crd {
		// No CRD yet, so no server-side dry run: the object as sent.
		obj := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
		obj.SetGroupVersionKind(v1alpha1.SchemeGroupVersion.WithKind(v1alpha1.Kind))
		obj.SetName(v1alpha1.Name)
		fmt.Fprintln(o.ErrOut, "# MeshCNI default as sent (the API server cannot check it before the CRD is installed)")
		return printYAML(o.Out, obj)
	}
	got, err := writeSpec(ctx, o.c, spec, o.DryRun)
	if err != nil {
		return cmdutil.APIHint(fmt.Errorf("write MeshCNI %s: %w", v1alpha1.Name, err), "patch meshcnis.meshcni.io")
	}
	if o.DryRun {
		fmt.Fprintln(o.ErrOut, "# MeshCNI default as the API server would store it (server-side dry run; nothing changed)")
		got.SetManagedFields(nil)
		return printYAML(o.Out, got)
	}
	fmt.Fprintf(o.Out, "meshcni.meshcni.io/%s configured: enabled", v1alpha1.Name)
	for _, f := range settingFlags {
		if o.Settings.Given[f.flag] {
			v, _, _ := unstructured.NestedFieldNoCopy(got.Object, "spec", f.field)
			fmt.Fprintf(o.Out, ", %s=%v", f.field, v)
		}
	}
	fmt.Fprintln(o.Out)
	if o.Wait == 0 {
		fmt.Fprintln(o.Out, `meshcni-controller rolls out the agents; follow with "meshcnictl status --wait" or "kubectl get meshcni -w".`)
		return nil
	}
	if _, err := waitPhase(ctx, o.c, v1alpha1.PhaseRunning, o.Wait, o.interval, o.Out, notReadyNodes(o.c, o.namespace)); err != nil {
		return err
	}
	fmt.Fprintln(o.Out, "meshcni is Running on every node.")
	return nil
}

// printRelease prints the release enable would install, after a
// server-side dry run of each object where the API allows it: a namespaced
// object cannot be dry-run into a namespace that does not exist yet.
func (o *EnableOptions) printRelease(ctx context.Context, rel releaseState) error {
	crd, m, err := Release(o.values, o.namespace)
	if err != nil {
		return err
	}
	dry := metav1.ApplyOptions{FieldManager: FieldManager, Force: true, DryRun: []string{metav1.DryRunAll}}
	objs := m.Objects
	if !rel.crd {
		if _, err := o.c.Dyn.Resource(crdGVR).Apply(ctx, crd.GetName(), crd, dry); err != nil {
			return cmdutil.Hint(err, "apply (dry run)", crd)
		}
	}
	for _, obj := range objs {
		rc, err := o.c.Resource(obj)
		if err != nil {
			return err
		}
		if _, err := rc.Apply(ctx, obj.GetName(), obj, dry); err != nil && !(obj.GetNamespace() != "" && apierrors.IsNotFound(err)) {
			return cmdutil.Hint(err, "apply (dry run)", obj)
		}
	}
	fmt.Fprintf(o.ErrOut, "# meshcni-controller's release, which enable would install into namespace %s\n", o.namespace)
	if !rel.crd {
		if err := printYAML(o.Out, crd); err != nil {
			return err
		}
	}
	_, err = o.Out.Write(m.YAML)
	return err
}

// printYAML prints obj as one YAML document.
func printYAML(w io.Writer, obj *unstructured.Unstructured) error {
	data, err := yaml.Marshal(obj.Object)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "---\n%s", data)
	return err
}
