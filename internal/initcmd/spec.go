package initcmd

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
)

// plan is everything a run needs, parsed and checked before any side
// effect.
type plan struct {
	spec    capture.Spec
	backend netfilter.Backend
	// probe is the validation target: a pod IP and the probe port.
	probe netip.AddrPort
}

// plan turns the flags into typed values. Every bad value is reported,
// each naming its flag and value; only then are the netns's addresses
// listed (localAddrs) and, for --redirect-dns without --capture-all-dns,
// resolvConf read.
func (o *options) plan(localAddrs func() ([]netip.Addr, error), resolvConf string) (plan, error) {
	var p plan
	s := &p.spec
	s.HostLoopback = capture.Default().HostLoopback
	var errs []error
	check := func(flag, value string, err error) {
		if err == nil {
			return
		}
		from := ""
		if src := o.source[flag]; src != "" {
			from = " from " + src
		}
		errs = append(errs, fmt.Errorf("invalid value %q for --%s%s: %w", value, flag, from, err))
	}
	port := func(flag, v string, dst *uint16) {
		var err error
		*dst, err = capture.ParsePort(v)
		check(flag, v, err)
	}
	var err error

	port("envoy-port", o.proxyPort, &s.ProxyPort)
	port("inbound-capture-port", o.inboundCapturePort, &s.InboundCapturePort)
	port("inbound-tunnel-port", o.inboundTunnelPort, &s.InboundTunnelPort)

	s.ProxyUIDs, err = capture.ParseIDList(o.proxyUID)
	if err == nil && len(s.ProxyUIDs) == 0 {
		err = errors.New("at least one UID is required, or the proxy's own traffic loops back into it")
	}
	check("proxy-uid", o.proxyUID, err)
	// As istio-iptables: the GIDs default to the UIDs.
	if o.proxyGID == "" {
		s.ProxyGIDs = append([]uint32(nil), s.ProxyUIDs...)
	} else {
		s.ProxyGIDs, err = capture.ParseIDList(o.proxyGID)
		check("proxy-gid", o.proxyGID, err)
	}

	s.Mode = capture.Redirect
	if o.mode != "" {
		s.Mode, err = capture.ParseMode(o.mode)
		check("istio-inbound-interception-mode", o.mode, err)
	}
	mark, err := strconv.ParseUint(strings.TrimSpace(o.tproxyMark), 10, 32)
	if err != nil || mark == 0 {
		err = errors.New("must be a number 1-4294967295")
	}
	check("istio-inbound-tproxy-mark", o.tproxyMark, err)
	s.TProxyMark = uint32(mark)
	table, err := strconv.ParseUint(strings.TrimSpace(o.tproxyTable), 10, 31)
	if err != nil || table == 0 {
		err = errors.New("must be a route table number 1-2147483647")
	}
	check("istio-inbound-tproxy-route-table", o.tproxyTable, err)
	s.TProxyRouteTable = int(table)

	s.InboundPorts, err = capture.ParsePorts(o.inboundPorts)
	check("istio-inbound-ports", o.inboundPorts, err)
	s.ExcludeInboundPorts, err = capture.ParsePortList(o.excludeInboundPorts)
	check("istio-local-exclude-ports", o.excludeInboundPorts, err)
	s.OutboundCIDRs, err = capture.ParseCIDRs(o.serviceCIDR)
	check("istio-service-cidr", o.serviceCIDR, err)
	s.ExcludeOutboundCIDRs, err = capture.ParseCIDRList(o.excludeCIDR)
	check("istio-service-exclude-cidr", o.excludeCIDR, err)
	s.OutboundPorts, err = capture.ParsePortList(o.outboundPorts)
	check("istio-outbound-ports", o.outboundPorts, err)
	s.ExcludeOutboundPorts, err = capture.ParsePortList(o.excludeOutboundPorts)
	check("istio-local-outbound-ports-exclude", o.excludeOutboundPorts, err)
	s.ExcludeInterfaces, err = capture.ParseInterfaces(o.excludeInterfaces)
	check("exclude-interfaces", o.excludeInterfaces, err)
	s.RerouteInterfaces, err = capture.ParseInterfaces(o.kubevirtInterfaces)
	check("kube-virt-interfaces", o.kubevirtInterfaces, err)

	s.RedirectDNS, s.CaptureAllDNS, s.DropInvalid = o.redirectDNS, o.captureAllDNS, o.dropInvalid

	var probePort uint16
	port("iptables-probe-port", o.probePort, &probePort)
	if o.probeTimeout <= 0 {
		check("probe-timeout", o.probeTimeout.String(), errors.New("must be positive"))
	}
	p.backend, err = netfilter.ParseBackend(o.backend)
	check("iptables-backend", o.backend, err)
	if len(errs) > 0 {
		return plan{}, errors.Join(errs...)
	}

	addrs, err := localAddrs()
	if err != nil {
		return plan{}, err
	}
	// As istio-iptables: Istio's decision, made in one place for every
	// mode (capture.EnableIPv6), from the netns's addresses.
	s.IPv6 = capture.EnableIPv6(addrs, o.dualStack)
	if s.RedirectDNS && !s.CaptureAllDNS {
		s.DNSServers, err = nameservers(resolvConf)
		if err != nil {
			return plan{}, fmt.Errorf("--redirect-dns without --capture-all-dns captures DNS to the resolv.conf nameservers: %w", err)
		}
	}
	if err := s.Validate(); err != nil {
		return plan{}, fmt.Errorf("invalid settings: %w", err)
	}
	if o.runValidation {
		ip, ok := probeAddr(addrs)
		if !ok {
			return plan{}, errors.New("--run-validation: the network namespace has no IP address other than loopback and link-local to probe")
		}
		p.probe = netip.AddrPortFrom(ip, probePort)
	}
	return p, nil
}

// podAddr: an address the pod is reached at.
func podAddr(a netip.Addr) bool {
	return a.IsValid() && !a.IsLoopback() && !a.IsLinkLocalUnicast() && !a.IsLinkLocalMulticast() && !a.IsUnspecified()
}

// probeAddr picks the pod IP validation connects to: the first IPv4 one,
// else the first IPv6 one.
func probeAddr(addrs []netip.Addr) (netip.Addr, bool) {
	var v6 netip.Addr
	for _, a := range addrs {
		if !podAddr(a) {
			continue
		}
		if a.Is4() {
			return a, true
		}
		if !v6.IsValid() {
			v6 = a
		}
	}
	return v6, v6.IsValid()
}

// nameservers reads the nameserver lines of a resolv.conf. Lines it
// cannot parse are skipped, as the C resolver does.
func nameservers(path string) ([]netip.Addr, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil {
			out = append(out, a.WithZone("").Unmap())
		}
	}
	return out, nil
}
