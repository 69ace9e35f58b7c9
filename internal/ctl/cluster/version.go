package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/internal/buildinfo"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
)

// ClientVersion is this binary's version.
type ClientVersion struct {
	Version   string `json:"version"`
	GitCommit string `json:"gitCommit,omitempty"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Component is one image the cluster runs for a meshcni component, with how
// many of its pods run it: two lines for one component mean a rollout in
// progress, or stuck.
type Component struct {
	Image   string `json:"image"`
	Version string `json:"version"` // the image's tag or digest
	Pods    int    `json:"pods"`
}

// VersionInfo is what `meshcnictl version` reports.
type VersionInfo struct {
	Client     ClientVersion `json:"client"`
	Controller []Component   `json:"controller,omitempty"`
	Agents     []Component   `json:"agents,omitempty"`
	// Cluster is why the cluster's versions are missing, if they are.
	Cluster string `json:"cluster,omitempty"`
}

// clientVersion is this binary's version, as its meshcni_build_info
// metric says it (internal/buildinfo).
func clientVersion(info *debug.BuildInfo, ok bool) ClientVersion {
	in := buildinfo.From(info, ok)
	v := ClientVersion{Version: in.Version, GitCommit: in.Revision, GoVersion: in.GoVersion, Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if in.Revision == "unknown" {
		v.GitCommit = ""
	}
	return v
}

// components groups the pods of one component by image. Pure.
func components(pods []corev1.Pod, container string) []Component {
	count := map[string]int{}
	for _, p := range pods {
		if len(p.Spec.Containers) == 0 {
			continue
		}
		// The named container, else the first (the chart's pods have one).
		image := p.Spec.Containers[0].Image
		for _, c := range p.Spec.Containers {
			if c.Name == container {
				image = c.Image
				break
			}
		}
		count[image]++
	}
	out := make([]Component, 0, len(count))
	for image, n := range count {
		out = append(out, Component{Image: image, Version: imageVersion(image), Pods: n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Pods != out[j].Pods {
			return out[i].Pods > out[j].Pods
		}
		return out[i].Image < out[j].Image
	})
	return out
}

// imageVersion is the digest, else the tag, else "latest" (the registry's
// default tag).
func imageVersion(image string) string {
	if _, digest, ok := strings.Cut(image, "@"); ok {
		return digest
	}
	name := image[strings.LastIndex(image, "/")+1:]
	if _, tag, ok := strings.Cut(name, ":"); ok {
		return tag
	}
	return "latest"
}

// VersionOptions is `meshcnictl version`.
type VersionOptions struct {
	genericiooptions.IOStreams
	flags      *genericclioptions.ConfigFlags
	Output     string
	ClientOnly bool
	namespace  string
}

// NewCmdVersion is `meshcnictl version`.
func NewCmdVersion(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := &VersionOptions{IOStreams: streams, flags: flags}
	cmd := &cobra.Command{
		Use:   "version [--client] [-o json|yaml]",
		Short: "Print meshcnictl's version and the controller's and agents' versions in the cluster",
		Args:  cobra.NoArgs,
		RunE:  cmdutil.RunE(o),
	}
	cmd.Flags().StringVarP(&o.Output, "output", "o", "", "output format: json or yaml (default: a table)")
	cmd.Flags().BoolVar(&o.ClientOnly, "client", false, "print only meshcnictl's version, without asking the cluster")
	return cmd
}

// Complete picks the namespace.
func (o *VersionOptions) Complete() error {
	o.namespace = cmdutil.Namespace(o.flags)
	return nil
}

// Validate checks -o.
func (o *VersionOptions) Validate() error {
	switch o.Output {
	case "", "json", "yaml":
		return nil
	}
	return fmt.Errorf("-o %q: want json or yaml", o.Output)
}

// Run prints the versions. A cluster that cannot be asked is reported in
// the output, not as a failure: the client's version is still worth having.
func (o *VersionOptions) Run(ctx context.Context) error {
	info := VersionInfo{Client: clientVersion(debug.ReadBuildInfo())}
	if !o.ClientOnly {
		o.cluster(ctx, &info)
	}
	switch o.Output {
	case "json":
		data, err := json.MarshalIndent(info, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(o.Out, "%s\n", data)
		return err
	case "yaml":
		data, err := yaml.Marshal(info)
		if err != nil {
			return err
		}
		_, err = o.Out.Write(data)
		return err
	}
	return printVersion(o, info)
}

func (o *VersionOptions) cluster(ctx context.Context, info *VersionInfo) {
	c, err := cmdutil.NewClients(o.flags, false)
	if err != nil {
		info.Cluster = err.Error()
		return
	}
	for _, part := range []struct {
		component, container string
		into                 *[]Component
	}{{"controller", "meshcni-controller", &info.Controller}, {"agent", "meshcni-agent", &info.Agents}} {
		// The controller's pods are named meshcni-controller (its selector,
		// fixed across versions), the agents' meshcni.
		sel := "app.kubernetes.io/name in (meshcni,meshcni-controller),app.kubernetes.io/component=" + part.component
		pods, err := c.Kube.CoreV1().Pods(o.namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			info.Cluster = fmt.Sprintf("list the %s pods in %s: %v", part.component, o.namespace, err)
			return
		}
		*part.into = components(pods.Items, part.container)
	}
	if len(info.Controller) == 0 && len(info.Agents) == 0 {
		info.Cluster = fmt.Sprintf("no meshcni controller or agent pods in namespace %s (not installed? see meshcnictl enable, or pass -n)", o.namespace)
	}
}

func printVersion(o *VersionOptions, info VersionInfo) error {
	tw := tabwriter.NewWriter(o.Out, 0, 4, 2, ' ', 0)
	commit := info.Client.GitCommit
	if commit == "" {
		commit = "-"
	}
	fmt.Fprintf(tw, "COMPONENT\tVERSION\tPODS\tIMAGE\n")
	fmt.Fprintf(tw, "meshcnictl\t%s\t-\tcommit %s, %s, %s\n", info.Client.Version, commit, info.Client.GoVersion, info.Client.Platform)
	for _, part := range []struct {
		name string
		cs   []Component
	}{{"controller", info.Controller}, {"agent", info.Agents}} {
		for _, c := range part.cs {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", part.name, c.Version, c.Pods, c.Image)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if info.Cluster != "" {
		_, err := fmt.Fprintf(o.ErrOut, "cluster: %s\n", info.Cluster)
		return err
	}
	return nil
}
