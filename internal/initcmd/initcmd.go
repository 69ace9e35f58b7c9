// Package initcmd is meshcni-iptables, the init-container command: a
// drop-in for istio-iptables (same flags, environment and exit codes)
// that programs meshcni's rules into the pod's network namespace, and
// with --run-validation checks what the CNI plug-in programmed.
package initcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/meshcni/meshcni/internal/validation"
)

// IOStreams are the command's standard streams. Out carries only the
// --dry-run rules; everything else goes to ErrOut.
type IOStreams struct {
	In          io.Reader
	Out, ErrOut io.Writer
}

// Command is one meshcni-iptables run. New fills the fields with the real
// implementations; tests replace them.
type Command struct {
	Streams IOStreams
	// LookupEnv reads an environment variable.
	LookupEnv func(string) (string, bool)
	// NewApplier returns the rule programmer for a backend.
	NewApplier func(netfilter.Backend) netfilter.Interface
	// LocalAddrs lists the IP addresses in the netns at path ("" = current).
	LocalAddrs func(path string) ([]netip.Addr, error)
	// ResolvConf is where --redirect-dns finds the nameservers.
	ResolvConf string
	// Validate runs the --run-validation probe.
	Validate func(context.Context, validation.Config) error
	// Geteuid is the UID the validation probe runs as.
	Geteuid func() int
}

// New returns a Command over the real kernel.
func New(streams IOStreams) *Command {
	return &Command{
		Streams:   streams,
		LookupEnv: os.LookupEnv,
		NewApplier: func(b netfilter.Backend) netfilter.Interface {
			return netfilter.New(netfilter.Options{Backend: b})
		},
		LocalAddrs: LocalAddrs,
		ResolvConf: "/etc/resolv.conf",
		Validate:   validation.Run,
		Geteuid:    os.Geteuid,
	}
}

// ExitError carries a specific exit code, such as validation's 126.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Main runs the command and returns the process exit code: 0, 126 when
// validation finds no redirection, 1 for anything else.
func Main(ctx context.Context, args []string, streams IOStreams) int {
	return exitCode(New(streams).Run(ctx, args), streams)
}

// exitCode reports err on streams and maps it to an exit code.
func exitCode(err error, streams IOStreams) int {
	if errors.Is(err, pflag.ErrHelp) {
		fmt.Fprint(streams.Out, usage())
		return 0
	}
	if err == nil {
		return 0
	}
	fmt.Fprintf(streams.ErrOut, "meshcni-iptables: %v\n", err)
	var exit *ExitError
	if errors.As(err, &exit) {
		return exit.Code
	}
	return 1
}

// Run parses args and the environment, then programs the rules (unless
// --dry-run or --skip-rule-apply) and validates them (--run-validation).
// Nothing is touched unless every value is valid.
func (c *Command) Run(ctx context.Context, args []string) error {
	var o options
	if err := o.parse(args, c.LookupEnv); err != nil {
		return err
	}
	for _, w := range o.warnings {
		fmt.Fprintf(c.Streams.ErrOut, "meshcni-iptables: warning: %s\n", w)
	}
	p, err := o.plan(func() ([]netip.Addr, error) { return c.LocalAddrs(o.netns) }, c.ResolvConf)
	if err != nil {
		return err
	}
	where := "the current network namespace"
	if o.netns != "" {
		where = o.netns
	}

	if o.dryRun {
		for _, rs := range rules.Build(p.spec).Sets {
			fmt.Fprintf(c.Streams.Out, "# %s restore\n%s", rs.Family, rs.Restore())
		}
		return nil
	}
	if !o.skipRuleApply {
		if err := c.NewApplier(p.backend).Apply(ctx, o.netns, p.spec); err != nil {
			if errors.Is(err, netfilter.ErrConflict) {
				return fmt.Errorf("program capture rules in %s: %w\n"+
					"meshcni-iptables does not replace capture rules programmed with other settings "+
					"(by an earlier run or the CNI plug-in); rerun with the same flags, or recreate the pod", where, err)
			}
			return fmt.Errorf("program capture rules in %s: %w", where, err)
		}
		families := "IPv4"
		if p.spec.IPv6 {
			families = "IPv4 and IPv6"
		}
		fmt.Fprintf(c.Streams.ErrOut, "meshcni-iptables: %s capture rules in place in %s\n", families, where)
	}
	if o.runValidation {
		return c.validate(ctx, o, p)
	}
	return nil
}

func (c *Command) validate(ctx context.Context, o options, p plan) error {
	uid := c.Geteuid()
	if uid < 0 || !slices.Contains(p.spec.ProxyUIDs, uint32(uid)) {
		fmt.Fprintf(c.Streams.ErrOut, "meshcni-iptables: warning: validating as UID %d, but only the proxy UIDs (%s) "+
			"are redirected to the pod's own IP; run validation as the proxy UID (runAsUser: %d) or it fails even with rules in place\n",
			uid, joinIDs(p.spec.ProxyUIDs), p.spec.ProxyUIDs[0])
	}
	err := c.Validate(ctx, validation.Config{
		ListenPorts: []uint16{p.spec.ProxyPort, p.spec.InboundCapturePort},
		Target:      p.probe,
		Timeout:     o.probeTimeout,
		NetNS:       o.netns,
	})
	if errors.Is(err, validation.ErrNotRedirected) {
		return &ExitError{Code: validation.ErrorCode, Err: fmt.Errorf(`iptables validation failed; workload is not ready for the mesh.
%v
This pod's traffic is not redirected to its sidecar: the node's meshcni CNI plug-in
or agent was not ready when the pod was created, so no capture rules were programmed.
The pod must not start outside the mesh, so this init container fails on purpose.
If the meshcni repair controller runs on this node it will repair or delete the pod;
otherwise delete the pod so that it is created again on a node where meshcni is ready`, err)}
	}
	if err != nil {
		return fmt.Errorf("validation: %w", err)
	}
	fmt.Fprintf(c.Streams.ErrOut, "meshcni-iptables: validation passed: %s is redirected to the sidecar\n", p.probe)
	return nil
}

// LocalAddrs lists the addresses of every interface in the netns at path.
func LocalAddrs(path string) ([]netip.Addr, error) {
	var out []netip.Addr
	err := netns.Do(path, func() error {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return fmt.Errorf("list interface addresses: %w", err)
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					out = append(out, ip.Unmap())
				}
			}
		}
		return nil
	})
	return out, err
}

func joinIDs(ids []uint32) string {
	s := make([]string, len(ids))
	for i, id := range ids {
		s[i] = fmt.Sprint(id)
	}
	return strings.Join(s, ",")
}
