// Package capture holds the capture spec: everything that decides how a pod's
// traffic is redirected into its sidecar, with Istio's names and defaults, and
// the parsers that turn annotations and flags into it. It does no I/O.
package capture

import (
	"fmt"
	"net/netip"
)

// Mode is the inbound interception mode.
type Mode string

const (
	Redirect Mode = "REDIRECT"
	TProxy   Mode = "TPROXY"
)

// Istio's well-known ports and marks. Changing any of these breaks the
// drop-in promise, so they are defaults, not constants baked into rules.
const (
	DefaultProxyPort          = 15001
	DefaultInboundCapturePort = 15006
	DefaultInboundTunnelPort  = 15008
	DefaultProxyUID           = 1337
	DefaultTProxyMark         = 1337
	DefaultTProxyRouteTable   = 133
	// OutboundMark marks the proxy's own loopback traffic in TPROXY mode.
	OutboundMark = 1338
	// DNSListenerPort is where istio-agent serves DNS.
	DNSListenerPort = 15053
	// DefaultProbePort is what --run-validation connects to.
	DefaultProbePort = 15002
)

// ProxyPorts are the sidecar's own listeners (status, health, Prometheus):
// never captured inbound, as Istio's CNI plug-in and injector do.
var ProxyPorts = []uint16{15020, 15021, 15090}

// Ports is an include list that may be the wildcard "*".
type Ports struct {
	All  bool
	List []uint16
}

// Empty reports whether nothing is included.
func (p Ports) Empty() bool { return !p.All && len(p.List) == 0 }

func (p Ports) String() string {
	if p.All {
		return "*"
	}
	return joinPorts(p.List)
}

// CIDRs is an include list of prefixes that may be the wildcard "*".
type CIDRs struct {
	All  bool
	List []netip.Prefix
}

// Spec is the complete description of one pod's redirection.
type Spec struct {
	ProxyPort          uint16
	InboundCapturePort uint16
	InboundTunnelPort  uint16
	ProxyUIDs          []uint32
	ProxyGIDs          []uint32

	Mode             Mode
	TProxyMark       uint32
	TProxyRouteTable int

	InboundPorts         Ports
	ExcludeInboundPorts  []uint16
	OutboundCIDRs        CIDRs
	ExcludeOutboundCIDRs []netip.Prefix
	OutboundPorts        []uint16
	ExcludeOutboundPorts []uint16
	ExcludeInterfaces    []string
	RerouteInterfaces    []string

	// RedirectDNS captures DNS to istio-agent; with CaptureAllDNS every
	// destination on port 53, otherwise only DNSServers.
	RedirectDNS   bool
	CaptureAllDNS bool
	DNSServers    []netip.Addr

	DropInvalid bool
	// IPv6 also programs ip6tables (dual stack or an IPv6 pod).
	IPv6 bool
	// HostLoopback is the IPv4 loopback range treated as "localhost".
	HostLoopback netip.Prefix
}

// Default returns Istio's defaults for a sidecar pod: everything inbound
// and outbound captured, proxy UID/GID 1337, REDIRECT mode.
func Default() Spec {
	return Spec{
		ProxyPort:            DefaultProxyPort,
		InboundCapturePort:   DefaultInboundCapturePort,
		InboundTunnelPort:    DefaultInboundTunnelPort,
		ProxyUIDs:            []uint32{DefaultProxyUID},
		ProxyGIDs:            []uint32{DefaultProxyUID},
		Mode:                 Redirect,
		TProxyMark:           DefaultTProxyMark,
		TProxyRouteTable:     DefaultTProxyRouteTable,
		InboundPorts:         Ports{All: true},
		ExcludeInboundPorts:  append([]uint16(nil), ProxyPorts...),
		OutboundCIDRs:        CIDRs{All: true},
		ExcludeOutboundPorts: []uint16{15020},
		HostLoopback:         netip.MustParsePrefix("127.0.0.1/32"),
	}
}

// Validate rejects specs that cannot be programmed or contradict
// themselves. Parsers already reject malformed values; this catches what
// only shows when the values are combined.
func (s Spec) Validate() error {
	for name, p := range map[string]uint16{
		"proxy port": s.ProxyPort, "inbound capture port": s.InboundCapturePort,
		"inbound tunnel port": s.InboundTunnelPort,
	} {
		if p == 0 {
			return fmt.Errorf("%s must be 1-65535, got 0", name)
		}
	}
	if s.Mode != Redirect && s.Mode != TProxy {
		return fmt.Errorf("interception mode %q: must be REDIRECT or TPROXY", s.Mode)
	}
	if len(s.ProxyUIDs) == 0 {
		return fmt.Errorf("at least one proxy UID is required, or the proxy's own traffic loops back into it")
	}
	if s.Mode == TProxy && (s.TProxyMark == 0 || s.TProxyRouteTable <= 0) {
		return fmt.Errorf("TPROXY needs a non-zero mark and route table (got mark %d, table %d)", s.TProxyMark, s.TProxyRouteTable)
	}
	if !s.HostLoopback.IsValid() || !s.HostLoopback.Addr().Is4() {
		return fmt.Errorf("host loopback %q must be an IPv4 prefix", s.HostLoopback)
	}
	for _, p := range append(append([]netip.Prefix(nil), s.OutboundCIDRs.List...), s.ExcludeOutboundCIDRs...) {
		if !p.IsValid() {
			return fmt.Errorf("invalid CIDR %v", p)
		}
	}
	for _, list := range [][]string{s.ExcludeInterfaces, s.RerouteInterfaces} {
		for _, name := range list {
			if err := validInterface(name); err != nil {
				return err
			}
		}
	}
	return nil
}

// Equal compares specs field by field (slices by content).
func (s Spec) Equal(o Spec) bool {
	return fmt.Sprintf("%+v", s) == fmt.Sprintf("%+v", o)
}
