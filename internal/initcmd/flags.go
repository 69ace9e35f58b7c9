package initcmd

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// options holds the flags as given; spec() turns them into typed values.
// Names, shorthands and defaults are istio-iptables'.
type options struct {
	proxyPort, inboundCapturePort, inboundTunnelPort string
	proxyUID, proxyGID                               string
	mode, tproxyMark, tproxyTable                    string
	inboundPorts, excludeInboundPorts                string
	serviceCIDR, excludeCIDR                         string
	outboundPorts, excludeOutboundPorts              string
	excludeInterfaces, kubevirtInterfaces            string
	probePort                                        string
	probeTimeout                                     time.Duration
	netns, backend                                   string

	dryRun, redirectDNS, captureAllDNS, dropInvalid, dualStack bool
	runValidation, skipRuleApply                               bool

	// source says where a flag's value came from when not the command
	// line ("$ENVOY_PORT"), for error messages.
	source map[string]string
	// cmdline names the flags the command line set (ignored ones aside).
	cmdline []string
	// warnings are environment values ignored, as istio-iptables does.
	warnings []string
}

// Environment variables read after a flag's own (NAME_WITH_UNDERSCORES),
// as istio-iptables' defaults do.
var extraEnv = map[string][]string{
	"redirect-dns": {"ISTIO_META_DNS_CAPTURE"},
	"drop-invalid": {"INVALID_DROP"},
	"dual-stack":   {"ISTIO_DUAL_STACK"},
}

// ownEnv replaces the derived name for meshcni's own flags.
var ownEnv = map[string][]string{
	"iptables-backend": {"MESHCNI_IPTABLES_BACKEND"},
}

// ignored are istio-iptables flags that injection templates pass but
// that change nothing here (logging, output format).
var ignoredFlags = []string{"log_output_level", "log_as_json", "restore-format", "trace-logging"}

func (o *options) flagSet() *pflag.FlagSet {
	fs := pflag.NewFlagSet("meshcni-iptables", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.Usage = func() {} // errors are reported once, by the caller
	fs.SetOutput(io.Discard)
	s := fs.StringVarP
	s(&o.proxyPort, "envoy-port", "p", "15001", "port to which all outbound TCP traffic is redirected")
	s(&o.inboundCapturePort, "inbound-capture-port", "z", "15006", "port to which captured inbound TCP traffic is redirected")
	s(&o.inboundTunnelPort, "inbound-tunnel-port", "e", "15008", "inbound tunnel port, never captured")
	s(&o.proxyUID, "proxy-uid", "u", "1337", "UIDs (comma separated) whose traffic is not redirected: the proxy's")
	s(&o.proxyGID, "proxy-gid", "g", "", "GIDs whose traffic is not redirected (default: the --proxy-uid values)")
	s(&o.mode, "istio-inbound-interception-mode", "m", "", `inbound interception mode, "REDIRECT" (default) or "TPROXY"`)
	s(&o.tproxyMark, "istio-inbound-tproxy-mark", "t", "1337", "packet mark for TPROXY mode")
	s(&o.tproxyTable, "istio-inbound-tproxy-route-table", "r", "133", "route table for TPROXY mode")
	s(&o.inboundPorts, "istio-inbound-ports", "b", "", `inbound ports to capture, comma separated, or "*"; empty captures nothing inbound`)
	s(&o.excludeInboundPorts, "istio-local-exclude-ports", "d", "", `inbound ports not captured when -b is "*"`)
	s(&o.excludeInterfaces, "exclude-interfaces", "c", "", "interfaces whose traffic is never captured")
	s(&o.serviceCIDR, "istio-service-cidr", "i", "", `outbound CIDRs to capture, comma separated, or "*"; empty captures nothing outbound`)
	s(&o.excludeCIDR, "istio-service-exclude-cidr", "x", "", "outbound CIDRs never captured")
	s(&o.outboundPorts, "istio-outbound-ports", "q", "", "outbound ports always captured")
	s(&o.excludeOutboundPorts, "istio-local-outbound-ports-exclude", "o", "", "outbound ports never captured")
	s(&o.kubevirtInterfaces, "kube-virt-interfaces", "k", "", "virtual interfaces whose inbound traffic is treated as outbound")
	fs.BoolVarP(&o.dryRun, "dry-run", "n", false, "print the iptables-restore input per IP family and exit; touches nothing")
	fs.BoolVar(&o.redirectDNS, "redirect-dns", false, "capture DNS to istio-agent on port 15053 (default $ISTIO_META_DNS_CAPTURE)")
	fs.BoolVar(&o.captureAllDNS, "capture-all-dns", false, "with --redirect-dns, capture port 53 to any address, not only the resolv.conf nameservers")
	fs.BoolVar(&o.dropInvalid, "drop-invalid", false, "drop packets conntrack finds INVALID (default $INVALID_DROP)")
	fs.BoolVar(&o.dualStack, "dual-stack", false, "also program IPv6 when the pod has an IPv6 address (default $DUAL_STACK, $ISTIO_DUAL_STACK); without it, IPv6 only for an IPv6-only pod, as istio-iptables")
	fs.BoolVar(&o.runValidation, "run-validation", false, "check that redirection works; must run as the proxy UID; exits 126 when it does not")
	fs.BoolVar(&o.skipRuleApply, "skip-rule-apply", false, "do not program rules (with --run-validation: the CNI plug-in's validation init container)")
	s(&o.probePort, "iptables-probe-port", "", "15002", "port the validation probe connects to")
	fs.DurationVar(&o.probeTimeout, "probe-timeout", 5*time.Second, "how long validation waits for a redirected probe")
	s(&o.netns, "network-namespace", "", "", "path of the network namespace to program (default: the current one)")
	s(&o.backend, "iptables-backend", "", "auto", "backend: legacy (iptables-legacy), nft (iptables-nft), nftables (native nft) or auto; also $MESHCNI_IPTABLES_BACKEND")

	var ignoreS string
	var ignoreB bool
	fs.StringVar(&ignoreS, "log_output_level", "", "ignored (istio-iptables compatibility)")
	fs.BoolVar(&ignoreB, "log_as_json", false, "ignored (istio-iptables compatibility)")
	fs.BoolVarP(&ignoreB, "restore-format", "f", true, "ignored (istio-iptables compatibility)")
	fs.BoolVar(&ignoreB, "trace-logging", false, "ignored (istio-iptables compatibility)")
	for _, n := range ignoredFlags {
		_ = fs.MarkHidden(n)
	}
	return fs
}

// envName is the variable istio-iptables reads for a flag (viper's
// AutomaticEnv with "-" replaced by "_").
func envName(flag string) string {
	return strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// parse reads args, then fills every flag not on the command line from
// the environment, as istio-iptables does (istio.io/istio/pkg/flag:
// BindEnv, then AdditionalEnv): each variable in turn sets the flag, so
// the last one set wins (ISTIO_META_DNS_CAPTURE over REDIRECT_DNS), and a
// value the flag refuses ("yes" for a boolean) leaves it as it was, since
// Istio ignores fs.Set's error; o.warnings says so. Empty variables count
// as unset.
func (o *options) parse(args []string, lookup func(string) (string, bool)) error {
	fs := o.flagSet()
	o.source = map[string]string{}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q: meshcni-iptables takes only flags", fs.Args())
	}
	fs.Visit(func(f *pflag.Flag) {
		if !isIgnored(f.Name) {
			o.cmdline = append(o.cmdline, f.Name)
		}
	})
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || isIgnored(f.Name) {
			return
		}
		names, own := ownEnv[f.Name]
		if !own {
			names = append([]string{envName(f.Name)}, extraEnv[f.Name]...)
		}
		for _, env := range names {
			v, ok := lookup(env)
			if !ok || v == "" {
				continue
			}
			if err := fs.Set(f.Name, v); err != nil {
				o.warnings = append(o.warnings, fmt.Sprintf("$%s=%s is not a value for --%s; ignored, as istio-iptables ignores it", env, clip(v), f.Name))
				continue
			}
			o.source[f.Name] = "$" + env
		}
	})
	return nil
}

// clip quotes a value for a message, at most 64 bytes of it.
func clip(v string) string {
	if len(v) > 64 {
		return strconv.Quote(v[:64]) + "..."
	}
	return strconv.Quote(v)
}

func isIgnored(name string) bool {
	for _, n := range ignoredFlags {
		if n == name {
			return true
		}
	}
	return false
}

// usage is the flag help, for -h.
func usage() string {
	var o options
	return "Usage: meshcni-iptables [flags]\n\n" +
		"Programs Istio-compatible sidecar traffic capture in this pod's network\n" +
		"namespace: a drop-in for istio-iptables in the istio-init container.\n\n" +
		o.flagSet().FlagUsages()
}
