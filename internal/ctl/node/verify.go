package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
	"github.com/meshcni/meshcni/internal/initcmd"
	"github.com/meshcni/meshcni/internal/install"
	"github.com/meshcni/meshcni/internal/netconf"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/nftrules"
	"github.com/meshcni/meshcni/internal/podspec"
	"github.com/meshcni/meshcni/internal/rules"
)

// VerifyOptions checks one pod's rules against its annotations, on the
// pod's node.
type VerifyOptions struct {
	configFlags *genericclioptions.ConfigFlags
	genericiooptions.IOStreams

	Namespace, Pod  string
	NetNS           string // given netns path; else CRI, else a scan
	RuntimeEndpoint string // "" tries DefaultRuntimeEndpoints
	CNIConfDir      string

	procRoot  string
	netnsDirs []string
	c         *cmdutil.Clients
}

// NewVerifyOptions returns options writing to streams.
func NewVerifyOptions(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *VerifyOptions {
	return &VerifyOptions{configFlags: flags, IOStreams: streams, CNIConfDir: "/etc/cni/net.d",
		procRoot: "/proc", netnsDirs: []string{"/var/run/netns", "/run/netns"}}
}

// NewCmdVerify is `meshcnictl verify POD`.
func NewCmdVerify(flags *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewVerifyOptions(flags, streams)
	cmd := &cobra.Command{
		Use:   "verify POD [-n NAMESPACE]",
		Short: "On the pod's node (as root): print its capture rules and check them against its annotations",
		Long: `Finds the pod through the API and its network namespace through the
container runtime (CRI), by --netns, or by looking for the namespace that
holds the pod's IP. Prints the NAT table as "iptables -t nat -L -n -v
--line-numbers -x" would inside it, or, for a pod programmed by the
nftables backend, meshcni's tables as "nft list table ip meshcni" (and
ip6) would. Then checks that the rules are exactly what the pod's
annotations demand, or, for a pod meshcni does not capture, that it has
no capture rules. Exits non-zero on a mismatch.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.Complete(args); err != nil {
				return err
			}
			if err := o.Validate(); err != nil {
				return err
			}
			return o.Run(cmd.Context())
		},
	}
	cmd.Flags().StringVar(&o.NetNS, "netns", "", "the pod's network namespace path (skips the CRI look-up)")
	cmd.Flags().StringVar(&o.RuntimeEndpoint, "runtime-endpoint", "", "CRI socket, e.g. unix:///run/containerd/containerd.sock (default: the usual ones)")
	cmd.Flags().StringVar(&o.CNIConfDir, "cni-conf-dir", o.CNIConfDir, "the node's CNI config dir, for meshcni's settings")
	return cmd
}

// Complete reads the pod argument and namespace and builds the clients.
func (o *VerifyOptions) Complete(args []string) error {
	o.Pod = args[0]
	var err error
	if o.Namespace, _, err = o.configFlags.ToRawKubeConfigLoader().Namespace(); err != nil {
		return fmt.Errorf("namespace: %w (pass -n)", err)
	}
	o.c, err = cmdutil.NewClients(o.configFlags, false)
	return err
}

// Validate checks the flags.
func (o *VerifyOptions) Validate() error {
	if o.Pod == "" {
		return errors.New("a pod name is required: meshcnictl verify POD -n NAMESPACE")
	}
	if o.NetNS != "" {
		if _, err := os.Stat(o.NetNS); err != nil {
			return fmt.Errorf("--netns %s: %w", o.NetNS, err)
		}
	}
	if e := o.RuntimeEndpoint; e != "" && !strings.HasPrefix(e, "unix://") {
		return fmt.Errorf("--runtime-endpoint %q: must be unix:///path/to.sock", e)
	}
	return nil
}

// ErrVerifyMismatch is wrapped by the error Run returns when the rules
// differ from what the pod demands.
var ErrVerifyMismatch = errors.New("rules do not match the pod")

// Run finds the netns, prints the NAT table and judges it.
func (o *VerifyOptions) Run(ctx context.Context) error {
	name := o.Namespace + "/" + o.Pod
	pod, err := o.c.Kube.CoreV1().Pods(o.Namespace).Get(ctx, o.Pod, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("pod %s not found: check the name and -n (kubectl -n %s get pods)", name, o.Namespace)
	} else if err != nil {
		return fmt.Errorf("get pod %s: %w", name, err)
	}
	fmt.Fprintf(o.Out, "Pod:     %s (uid %s) on node %s\n", name, pod.UID, pod.Spec.NodeName)
	if pod.Spec.HostNetwork {
		fmt.Fprintln(o.Out, "Result:  OK: the pod uses the host network; meshcni never captures it (and verify does not read the host's rules).")
		return nil
	}

	entry, entryNote := o.entry()
	fmt.Fprintf(o.Out, "Config:  %s\n", entryNote)

	path, how, err := o.findNetNS(ctx, pod)
	if err != nil {
		return fmt.Errorf("pod %s: find its network namespace: %w", name, err)
	}
	if err := refuseHostNetNS(path, o.procRoot); err != nil {
		return fmt.Errorf("pod %s: %w", name, err)
	}
	fmt.Fprintf(o.Out, "Netns:   %s (%s)\n", path, how)

	// The netns's addresses, listed as Istio lists them (and as init
	// mode does), decide IPv6 through the plug-in's own verdict.
	addrs, err := initcmd.LocalAddrs(path)
	if err != nil {
		return fmt.Errorf("pod %s: enter netns %s: %w (run as root on node %s)", name, path, err, pod.Spec.NodeName)
	}
	view, err := podspec.Of(pod)
	if err != nil {
		return fmt.Errorf("pod %s: %w", name, err)
	}

	lockDir := entry.LockDir
	if lockDir == "" {
		if lockDir, err = os.MkdirTemp("", "meshcnictl-locks-"); err != nil {
			return err
		}
		defer os.RemoveAll(lockDir)
	}
	// Judge it as ADD did: the same function, from the same entry.
	verdict, specErr := entry.Judge.Pod(view, addrs)

	// Read the rules the way they were written: meshcni's nftables tables
	// when the netns has them, whatever the entry says now. Without them,
	// an nftables entry still reads iptables when the netns holds ISTIO_*
	// rules (a pod from before the node switched, or istio-init's), and
	// for an uncaptured pod, where only stray rules would be.
	backend := entry.Backend
	nftProgrammed, err := netfilter.NftablesIn(path)
	if err != nil {
		return fmt.Errorf("pod %s: look for its nftables tables: %w", name, err)
	}
	if nftProgrammed {
		backend = netfilter.Nftables
	} else if backend == netfilter.Nftables {
		save, _, err := netfilter.New(netfilter.Options{LockDir: lockDir}).Save(ctx, path, rules.IPv4)
		if !verdict.Capture || (err == nil && strings.Contains(save, "ISTIO_")) {
			backend = netfilter.Auto
		}
	}
	nf := netfilter.New(netfilter.Options{Backend: backend, LockDir: lockDir})
	// IPv6 is listed whenever the pod has an IPv6 address, so that stray
	// ip6tables rules show even where its spec programs IPv4 only.
	families := []rules.Family{rules.IPv4}
	if capture.EnableIPv6(addrs, true) || verdict.Spec.IPv6 {
		families = append(families, rules.IPv6)
	}
	var saves []string
	for _, f := range families {
		save, backend, err := nf.Save(ctx, path, f)
		if err != nil {
			return fmt.Errorf("pod %s: read its %s rules: %w", name, f, err)
		}
		saves = append(saves, save)
		if backend == netfilter.Nftables {
			cmdline := "nft list table " + nftrules.NFTFamily(f) + " " + nftrules.TableName
			if save == "" {
				save = "(no such table)\n"
			}
			fmt.Fprintf(o.Out, "\n# %s   (nftables backend, in %s)\n%s", cmdline, path, save)
			continue
		}
		listing, cmdline, err := listNAT(ctx, path, backend, f, lockDir)
		if err != nil {
			return fmt.Errorf("pod %s: list its %s NAT table: %w", name, f, err)
		}
		fmt.Fprintf(o.Out, "\n# %s   (%s backend, in %s)\n%s", cmdline, backend, path, listing)
	}
	fmt.Fprintln(o.Out)

	if !verdict.Capture {
		reason := verdict.Reason
		fmt.Fprintf(o.Out, "Expect:  not captured (%s)\n", reason)
		// istio-init programs the pod's rules from inside it, as ISTIO_*
		// iptables rules or, when it runs meshcni-iptables on nftables,
		// as meshcni's tables: they are expected, and not meshcni's to
		// judge. So it is asked first.
		istio := nftProgrammed || slices.ContainsFunc(saves, func(s string) bool { return strings.Contains(s, "ISTIO_") })
		if by := verdict.ProgrammedBy; by != "" {
			if !istio {
				return fmt.Errorf("pod %s: %w: its %s init container programs its rules, yet its netns holds no ISTIO_* rules and no meshcni tables (above); see that container's log (kubectl -n %s logs %s -c %s)",
					name, ErrVerifyMismatch, by, pod.Namespace, pod.Name, by)
			}
			fmt.Fprintf(o.Out, "Result:  OK: the rules (above) are %s's, which programs them from inside the pod; meshcni neither owns nor checks them.\n", by)
			return nil
		}
		if nftProgrammed {
			return fmt.Errorf("pod %s: %w: meshcni does not capture it (%s), yet its netns holds meshcni's nftables tables (above): the pod was created before the exclusion, or they were added by hand; recreate the pod (kubectl -n %s delete pod %s)",
				name, ErrVerifyMismatch, reason, pod.Namespace, pod.Name)
		}
		if istio {
			return fmt.Errorf("pod %s: %w: meshcni does not capture it (%s), yet its netns holds ISTIO_* rules (above): something else programmed them, or the pod was created before the exclusion; recreate the pod (kubectl -n %s delete pod %s)",
				name, ErrVerifyMismatch, reason, pod.Namespace, pod.Name)
		}
		fmt.Fprintln(o.Out, "Result:  OK: no ISTIO_* rules, as expected.")
		return nil
	}
	if specErr != nil {
		return fmt.Errorf("pod %s: %v: meshcni refuses to start such a pod; correct it in the pod's spec and recreate the pod", name, specErr)
	}
	spec := verdict.Spec
	for _, w := range verdict.Warnings {
		fmt.Fprintf(o.Out, "Warning: %s\n", w)
	}
	fmt.Fprintf(o.Out, "Expect:  captured (%s): %s\n", verdict.Reason, summarize(spec))
	if err := nf.Check(ctx, path, spec); err != nil {
		if errors.Is(err, netfilter.ErrMismatch) {
			return fmt.Errorf("pod %s: %w: %v; recreate the pod (kubectl -n %s delete pod %s) so that meshcni programs it again, or let the agent's repair controller do it",
				name, ErrVerifyMismatch, err, pod.Namespace, pod.Name)
		}
		return fmt.Errorf("pod %s: check its rules: %w", name, err)
	}
	fmt.Fprintln(o.Out, "Result:  OK: the rules match the pod's annotations.")
	return nil
}

// entry reads meshcni's entry from the node's primary CNI config; without
// one, the defaults judge the pod and the note says so.
func (o *VerifyOptions) entry() (*netconf.Entry, string) {
	def, _ := netconf.Parse([]byte(`{"type":"meshcni"}`))
	path, err := install.FindPrimary(o.CNIConfDir)
	if err != nil {
		return def, fmt.Sprintf("no CNI config in %s (%v); judging with meshcni's defaults (pass --cni-conf-dir)", o.CNIConfDir, err)
	}
	raw, err := meshcniEntry(path)
	if err != nil {
		return def, fmt.Sprintf("%v; judging with meshcni's defaults", err)
	}
	e, err := netconf.Parse(raw)
	if err != nil {
		return def, fmt.Sprintf("meshcni's entry in %s is invalid (%v); judging with defaults", path, err)
	}
	return e, "meshcni entry in " + path
}

// meshcniEntry returns the bytes of the meshcni plug-in in a conflist.
func meshcniEntry(path string) ([]byte, error) {
	if filepath.Ext(path) != ".conflist" {
		return nil, fmt.Errorf("%s is a single-plugin config: meshcni is not installed on this node", path)
	}
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for _, p := range list.Plugins {
		if p.Network.Type == install.PluginType {
			return p.Bytes, nil
		}
	}
	return nil, fmt.Errorf("%s has no meshcni entry: meshcni is not installed on this node", path)
}

func (o *VerifyOptions) findNetNS(ctx context.Context, pod *corev1.Pod) (path, how string, err error) {
	if o.NetNS != "" {
		return o.NetNS, "from --netns", nil
	}
	endpoints := DefaultRuntimeEndpoints
	if o.RuntimeEndpoint != "" {
		endpoints = []string{o.RuntimeEndpoint}
	}
	var errs []error
	for _, e := range endpoints {
		if _, err := os.Stat(strings.TrimPrefix(e, "unix://")); err != nil && o.RuntimeEndpoint == "" {
			continue // not this runtime
		}
		p, err := sandboxNetNS(ctx, e, pod, o.procRoot)
		if err == nil {
			return p, "sandbox of the container runtime at " + e, nil
		}
		if o.RuntimeEndpoint != "" {
			return "", "", fmt.Errorf("%w; check --runtime-endpoint, or pass --netns", err)
		}
		errs = append(errs, err)
	}
	p, err := netnsByIP(o.procRoot, o.netnsDirs, podIPs(pod))
	if err == nil {
		return p, "the namespace that holds the pod's IP", nil
	}
	errs = append(errs, err)
	return "", "", fmt.Errorf("%w; run verify as root on node %s, or pass --netns", errors.Join(errs...), pod.Spec.NodeName)
}

// refuseHostNetNS keeps verify out of the node's own netns.
func refuseHostNetNS(path, procRoot string) error {
	id, err := netns.ID(path)
	if err != nil {
		return err
	}
	if slices.Contains(hostNetNSIDs(procRoot), id) {
		return fmt.Errorf("%s is the node's own network namespace, not the pod's; pass the pod's --netns", path)
	}
	return nil
}

// listNAT runs `iptables -t nat -L -n -v --line-numbers -x` in the netns.
func listNAT(ctx context.Context, path string, backend netfilter.Backend, f rules.Family, lockDir string) (out, cmdline string, err error) {
	bin := backend.Command(f == rules.IPv6)
	args := []string{"-t", "nat", "-L", "-n", "-v", "--line-numbers", "-x"}
	if backend == netfilter.Legacy {
		args = append(args, "-w", "10")
	}
	id, err := netns.ID(path)
	if err != nil {
		return "", "", err
	}
	env := []string{"XTABLES_LOCKFILE=" + filepath.Join(lockDir, "xtables-"+id+".lock")}
	err = netns.Do(path, func() error {
		out, err = netfilter.ExecRunner(ctx, env, "", bin, args...)
		return err
	})
	return out, bin + " " + strings.Join(args, " "), err
}

// summarize is the spec in one line, for the reader to compare with the
// pod's annotations.
func summarize(s capture.Spec) string {
	cidrs := "*"
	if !s.OutboundCIDRs.All {
		var l []string
		for _, p := range s.OutboundCIDRs.List {
			l = append(l, p.String())
		}
		cidrs = strings.Join(l, ",")
	}
	return fmt.Sprintf("mode %s, proxy uid %v, inbound ports %s (excluding %v), outbound CIDRs %s, IPv6 %v, DNS %v",
		s.Mode, s.ProxyUIDs, s.InboundPorts, s.ExcludeInboundPorts, cidrs, s.IPv6, s.RedirectDNS)
}
