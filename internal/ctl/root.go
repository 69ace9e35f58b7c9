// Package ctl is meshcnictl's root command: kubectl's connection flags
// (--kubeconfig, --context, -n for the release namespace, ...) on every
// subcommand, the cluster commands (package cluster: enable, disable,
// status, console, version, mutate, render) and the node diagnostics
// (package node: verify, doctor), each an Options{Complete,Validate,Run}
// with its output streams injected, so tests drive it as a user would.
package ctl

import (
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/internal/ctl/cluster"
	"github.com/meshcni/meshcni/internal/ctl/node"
)

// NewCmd is the meshcnictl root command.
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
	root.AddGroup(&cobra.Group{ID: "cluster", Title: "The cluster (the MeshCNI resource and its controller):"},
		&cobra.Group{ID: "node", Title: "A node (run there, as root):"})
	for _, c := range []*cobra.Command{
		cluster.NewCmdEnable(flags, streams),
		cluster.NewCmdDisable(flags, streams),
		cluster.NewCmdStatus(flags, streams),
		cluster.NewCmdConsole(flags, streams),
		cluster.NewCmdVersion(flags, streams),
		cluster.NewCmdMutate(flags, streams),
		cluster.NewCmdRender(flags, streams),
	} {
		c.GroupID = "cluster"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{
		node.NewCmdVerify(flags, streams),
		node.NewCmdDoctor(flags, streams),
	} {
		c.GroupID = "node"
		root.AddCommand(c)
	}
	return root
}
