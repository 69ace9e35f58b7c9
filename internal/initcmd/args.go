package initcmd

// Args is an istio-iptables command line as meshcni-iptables reads it:
// each flag's value after the command line and then the environment were
// applied (defaults included), and which flags were set at all. The
// admission webhook reads istio-init's arguments through it, so the
// webhook and the init container never parse them differently.
type Args struct {
	ProxyPort, InboundCapturePort, InboundTunnelPort string
	ProxyUID, ProxyGID                               string
	Mode, TProxyMark, TProxyTable                    string
	InboundPorts, ExcludeInboundPorts                string
	ServiceCIDR, ExcludeCIDR                         string
	OutboundPorts, ExcludeOutboundPorts              string
	ExcludeInterfaces, KubevirtInterfaces            string

	RedirectDNS, CaptureAllDNS, DropInvalid, DualStack bool
	RunValidation, SkipRuleApply                       bool

	// Set names the flags (long form) given on the command line or
	// filled from the environment.
	Set map[string]bool
}

// ParseArgs parses istio-iptables flags (without the leading
// "istio-iptables" word) with meshcni-iptables' own flag set; lookup
// reads the container's environment.
func ParseArgs(args []string, lookup func(string) (string, bool)) (Args, error) {
	var o options
	if err := o.parse(args, lookup); err != nil {
		return Args{}, err
	}
	a := Args{
		ProxyPort: o.proxyPort, InboundCapturePort: o.inboundCapturePort, InboundTunnelPort: o.inboundTunnelPort,
		ProxyUID: o.proxyUID, ProxyGID: o.proxyGID,
		Mode: o.mode, TProxyMark: o.tproxyMark, TProxyTable: o.tproxyTable,
		InboundPorts: o.inboundPorts, ExcludeInboundPorts: o.excludeInboundPorts,
		ServiceCIDR: o.serviceCIDR, ExcludeCIDR: o.excludeCIDR,
		OutboundPorts: o.outboundPorts, ExcludeOutboundPorts: o.excludeOutboundPorts,
		ExcludeInterfaces: o.excludeInterfaces, KubevirtInterfaces: o.kubevirtInterfaces,
		RedirectDNS: o.redirectDNS, CaptureAllDNS: o.captureAllDNS, DropInvalid: o.dropInvalid, DualStack: o.dualStack,
		RunValidation: o.runValidation, SkipRuleApply: o.skipRuleApply,
		Set: map[string]bool{},
	}
	for name := range o.source {
		a.Set[name] = true
	}
	for _, name := range o.cmdline {
		a.Set[name] = true
	}
	return a, nil
}
