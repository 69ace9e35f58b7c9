package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/spf13/cobra"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshcni/meshcni/internal/apilookup"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
	"github.com/meshcni/meshcni/internal/install"
	"github.com/meshcni/meshcni/internal/netconf"
	"github.com/meshcni/meshcni/internal/netfilter"
)

// Result of one doctor check.
type Result string

const (
	Pass Result = "OK"
	Warn Result = "WARN"
	Fail Result = "FAIL"
)

// Check is one line of the doctor's report.
type Check struct {
	Name   string
	Result Result
	Detail string
}

// DoctorOptions checks a node's meshcni set-up: run it on the node.
type DoctorOptions struct {
	genericiooptions.IOStreams

	CNIConfDir string
	CNIBinDir  string
	Platform   string
	// PluginKubeconfig overrides the kubeconfig named in the entry.
	PluginKubeconfig string
	Timeout          time.Duration

	// searchDirs is where iptables binaries are looked for.
	searchDirs []string
}

// ErrDoctorFailed is returned when a check fails.
var ErrDoctorFailed = errors.New("doctor found problems")

// NewDoctorOptions returns options writing to streams.
func NewDoctorOptions(streams genericiooptions.IOStreams) *DoctorOptions {
	return &DoctorOptions{IOStreams: streams, Timeout: 10 * time.Second,
		searchDirs: []string{"/usr/sbin", "/sbin", "/usr/bin", "/bin"}}
}

// NewCmdDoctor is `meshcnictl doctor`.
func NewCmdDoctor(_ *genericclioptions.ConfigFlags, streams genericiooptions.IOStreams) *cobra.Command {
	o := NewDoctorOptions(streams)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "On a node: check the CNI config, the plug-in binary, its kubeconfig and the iptables backend",
		Long: `Checks, on the node it runs on: that the primary CNI config is valid JSON
with meshcni as its last plug-in; that every plug-in of the chain, meshcni
included, is in the CNI bin dir; that the kubeconfig meshcni uses is
accepted by the API server and may get pods; and which iptables backend
the node uses. Prints one line per check and exits non-zero if any fails.
It reads files and asks the API server; it changes nothing.`,
		Args: cobra.NoArgs,
		RunE: cmdutil.RunE(o),
	}
	cmd.Flags().StringVar(&o.Platform, "platform", "", "take the CNI dirs of a platform: "+strings.Join(cmdutil.Platforms, ", "))
	cmd.Flags().StringVar(&o.CNIConfDir, "cni-conf-dir", "", "the node's CNI config dir (default /etc/cni/net.d, or the platform's)")
	cmd.Flags().StringVar(&o.CNIBinDir, "cni-bin-dir", "", "the node's CNI bin dir (default /opt/cni/bin, or the platform's)")
	cmd.Flags().StringVar(&o.PluginKubeconfig, "plugin-kubeconfig", "", "check this kubeconfig instead of the one meshcni's entry names")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", o.Timeout, "how long to wait for the API server")
	return cmd
}

// Complete fills the dirs from the platform (the chart's values).
func (o *DoctorOptions) Complete() error {
	p := o.Platform
	if p == "" {
		p = "default"
	}
	chrt, err := chart.LoadChart()
	if err != nil {
		return err
	}
	dirs, _ := chrt.Values["platforms"].(map[string]any)[p].(map[string]any)
	if dirs == nil {
		return fmt.Errorf("--platform %q: must be one of %s", o.Platform, strings.Join(cmdutil.Platforms, ", "))
	}
	if o.CNIConfDir == "" {
		o.CNIConfDir, _ = dirs["cniConfDir"].(string)
	}
	if o.CNIBinDir == "" {
		o.CNIBinDir, _ = dirs["cniBinDir"].(string)
	}
	return nil
}

// Validate checks the flags.
func (o *DoctorOptions) Validate() error {
	for flag, d := range map[string]string{"--cni-conf-dir": o.CNIConfDir, "--cni-bin-dir": o.CNIBinDir} {
		if !filepath.IsAbs(d) {
			return fmt.Errorf("%s %q: must be an absolute path", flag, d)
		}
	}
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout %v: must be positive", o.Timeout)
	}
	return nil
}

// Run runs every check, prints the report, and fails if any check did.
func (o *DoctorOptions) Run(ctx context.Context) error {
	checks := o.Checks(ctx)
	tw := tabwriter.NewWriter(o.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RESULT\tCHECK\tDETAIL")
	failed := 0
	for _, c := range checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Result, c.Name, c.Detail)
		if c.Result == Fail {
			failed++
		}
	}
	_ = tw.Flush()
	if failed > 0 {
		return fmt.Errorf("%w: %d of %d checks failed (see FAIL lines)", ErrDoctorFailed, failed, len(checks))
	}
	fmt.Fprintln(o.Out, "All checks passed.")
	return nil
}

// Checks runs every check in order; later ones use what earlier found.
func (o *DoctorOptions) Checks(ctx context.Context) []Check {
	var out []Check
	add := func(name string, r Result, format string, a ...any) {
		out = append(out, Check{Name: name, Result: r, Detail: fmt.Sprintf(format, a...)})
	}

	// 1. The conflist.
	primary, err := install.FindPrimary(o.CNIConfDir)
	if err != nil {
		add("conflist", Fail, "%v: the primary CNI (Calico, Cilium, ...) has not written a valid config yet; fix it first", err)
		return append(out, o.backendCheck(nil))
	}
	for _, w := range skippedBefore(o.CNIConfDir, primary) {
		add("conflist", Warn, "%s", w)
	}
	var entry *netconf.Entry
	var chain []string
	st, err := install.Check(o.CNIConfDir, []byte(`{"type":"meshcni"}`))
	switch {
	case err != nil:
		add("conflist", Fail, "%s: %v", primary, err)
	case !st.Present:
		add("conflist", Fail, "%s has no meshcni entry: the meshcni-agent installs it; is it running here? (kubectl get pods -A -l %s -o wide)", primary, chart.AgentSelector)
	case !st.Last:
		add("conflist", Fail, "%s: meshcni is not the last plug-in, or is there twice: it must run after the primary CNI; the agent moves it back, so if this persists another component rewrites the file (check the agent's events)", primary)
	}
	if err == nil && st.Present {
		list, lerr := libcni.ConfListFromFile(primary)
		if lerr != nil {
			add("conflist", Fail, "%s: %v", primary, lerr)
		} else {
			for _, p := range list.Plugins {
				chain = append(chain, p.Network.Type)
			}
			raw, _ := meshcniEntry(primary)
			if entry, err = netconf.Parse(raw); err != nil {
				add("conflist", Fail, "%s: meshcni's entry is invalid: %v; the agent writes it from its flags: check the agent's settings (ConfigMap meshcni-config)", primary, err)
			} else if st.Last {
				add("conflist", Pass, "%s: valid, meshcni last of %d plug-ins (%s)", primary, len(chain), strings.Join(chain, " -> "))
			}
		}
	}

	// 2. Binaries of every plug-in in the chain, and meshcni's API lookup
	// helper beside it: without it, a pod the agent's cache cannot answer
	// fails its ADD.
	if len(chain) > 0 {
		var missing []string
		bins := chain
		if slices.Contains(chain, install.PluginType) {
			bins = append(slices.Clone(chain), apilookup.HelperName)
		}
		for _, t := range bins {
			if err := executable(filepath.Join(o.CNIBinDir, t)); err != nil {
				missing = append(missing, err.Error())
			}
		}
		switch {
		case len(missing) > 0:
			add("binaries", Fail, "%s: every pod's network set-up fails until they are there (meshcni and %s: the agent copies them; others: their CNI's installer)", strings.Join(missing, "; "), apilookup.HelperName)
		default:
			add("binaries", Pass, "%s holds %s", o.CNIBinDir, strings.Join(bins, ", "))
		}
	} else if err := executable(filepath.Join(o.CNIBinDir, install.PluginType)); err != nil {
		add("binaries", Warn, "%v", err)
	}

	// 3. The kubeconfig the plug-in uses.
	kc := o.PluginKubeconfig
	if kc == "" && entry != nil {
		kc = entry.Kubeconfig
	}
	if kc == "" {
		add("kubeconfig", Fail, "no kubeconfig to check: meshcni's entry names none (pass --plugin-kubeconfig)")
	} else {
		out = append(out, o.kubeconfigCheck(ctx, kc))
	}

	// 4. The agent's log socket: present while the agent runs.
	if entry != nil && entry.LogSocket != "" {
		if _, err := os.Stat(entry.LogSocket); err != nil {
			add("agent", Warn, "log socket %s missing: the agent is not running on this node; the plug-in still works but logs only to its file", entry.LogSocket)
		} else {
			add("agent", Pass, "log socket %s present", entry.LogSocket)
		}
	}

	// 5. The iptables backend.
	return append(out, o.backendCheck(entry))
}

// skippedBefore lists config files that sort before the primary and were
// skipped because they do not load: a runtime skips them too, silently.
func skippedBefore(dir, primary string) []string {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil
	}
	sort.Strings(files)
	var out []string
	for _, f := range files {
		if f == primary {
			break
		}
		out = append(out, fmt.Sprintf("%s is skipped by the runtime: not a valid CNI config (fix or remove it)", f))
	}
	return out
}

func executable(path string) error {
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return fmt.Errorf("%s missing", path)
	case st.IsDir() || st.Mode()&0o111 == 0:
		return fmt.Errorf("%s is not executable", path)
	}
	return nil
}

// kubeconfigCheck makes real requests with the plug-in's kubeconfig: who
// am I (SelfSubjectReview), and may I get pods (SelfSubjectAccessReview).
func (o *DoctorOptions) kubeconfigCheck(ctx context.Context, path string) Check {
	fail := func(format string, a ...any) Check {
		return Check{Name: "kubeconfig", Result: Fail, Detail: path + ": " + fmt.Sprintf(format, a...)}
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return fail("%v: the agent writes this file; is it running here?", err)
	}
	cfg.Timeout = o.Timeout
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fail("%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	who, err := kube.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	switch {
	case apierrors.IsUnauthorized(err):
		return fail("the API server %s refused the token (expired or revoked): the agent refreshes it from its token file; restart the agent on this node", cfg.Host)
	case err != nil:
		return fail("cannot reach the API server %s: %v; the plug-in fails every mesh pod's ADD until it can", cfg.Host, err)
	}
	user := who.Status.UserInfo.Username
	ssar := &authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authorizationv1.ResourceAttributes{Verb: "get", Resource: "pods"},
	}}
	res, err := kube.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, ssar, metav1.CreateOptions{})
	if err != nil {
		return fail("authenticated as %s, but the access review failed: %v", user, err)
	}
	if !res.Status.Allowed {
		return fail("authenticated as %s, who may not get pods: bind it to ClusterRole meshcni-plugin (meshcnictl enable does)", user)
	}
	return Check{Name: "kubeconfig", Result: Pass, Detail: fmt.Sprintf("%s: API server %s accepts it as %s, who may get pods", path, cfg.Host, user)}
}

// backendCheck says which iptables backend pods get, from the entry and
// the node's iptables link, without running any iptables command.
func (o *DoctorOptions) backendCheck(entry *netconf.Entry) Check {
	node := netfilter.SystemDefault("")
	link := "iptables not found"
	if p, err := o.lookPath("iptables"); err == nil {
		link = p
		if t, err := filepath.EvalSymlinks(p); err == nil && t != p {
			link += " -> " + t
		}
	}
	backend, why := node, fmt.Sprintf("the node's iptables (%s); a pod netns that already holds legacy rules keeps legacy", link)
	if entry != nil && entry.Backend != netfilter.Auto {
		backend, why = entry.Backend, "forced by the entry's iptablesBackend"
	}
	var missing []string
	for _, name := range netfilter.Commands(backend) {
		if _, err := o.lookPath(name); err != nil {
			missing = append(missing, name)
		}
	}
	if len(missing) > 0 {
		return Check{Name: "iptables", Result: Fail, Detail: fmt.Sprintf("backend %s (%s), but %s not found in %s: install the iptables (or, for nftables, the nftables) package on the node",
			backend, why, strings.Join(missing, ", "), strings.Join(o.searchDirs, ":"))}
	}
	return Check{Name: "iptables", Result: Pass, Detail: fmt.Sprintf("backend %s (%s)", backend, why)}
}

func (o *DoctorOptions) lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range o.searchDirs {
		p := filepath.Join(d, name)
		if executable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}
