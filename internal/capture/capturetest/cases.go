// Package capturetest holds the capture settings that every rule
// renderer's golden tests cover (Istio's own golden cases), so that the
// iptables and nftables goldens stay case for case.
package capturetest

import (
	"net/netip"
	"testing"

	"github.com/meshcni/meshcni/internal/capture"
)

// Case is one named variation of the default spec.
type Case struct {
	Name string
	Mod  func(*capture.Spec)
}

// Spec returns the case's spec, failing the test if it does not validate.
func (c Case) Spec(t testing.TB) capture.Spec {
	t.Helper()
	s := capture.Default()
	c.Mod(&s)
	if err := s.Validate(); err != nil {
		t.Fatalf("case %s: spec invalid: %v", c.Name, err)
	}
	return s
}

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// Cases are the settings of Istio's own golden tests, so that a diff
// against istio-iptables for the same flags is a diff of one file each.
var Cases = []Case{
	{"defaults", func(*capture.Spec) {}},
	{"inbound-ports-include", func(s *capture.Spec) { s.InboundPorts = capture.Ports{List: []uint16{32000, 31000}} }},
	{"inbound-ports-wildcard", func(s *capture.Spec) { s.InboundPorts = capture.Ports{All: true} }},
	{"inbound-ports-none", func(s *capture.Spec) { s.InboundPorts = capture.Ports{} }},
	{"inbound-ports-exclude", func(s *capture.Spec) { s.ExcludeInboundPorts = []uint16{7777, 15020, 15021, 15090} }},
	{"outbound-cidrs", func(s *capture.Spec) {
		s.OutboundCIDRs = capture.CIDRs{List: prefixes("10.0.0.0/8", "172.16.0.0/12")}
		s.ExcludeOutboundCIDRs = prefixes("10.96.0.1/32")
	}},
	{"outbound-cidrs-loopback", func(s *capture.Spec) { s.OutboundCIDRs = capture.CIDRs{List: prefixes("127.0.0.1/32")} }},
	{"outbound-cidrs-none", func(s *capture.Spec) { s.OutboundCIDRs = capture.CIDRs{} }},
	{"outbound-ports", func(s *capture.Spec) {
		s.OutboundCIDRs = capture.CIDRs{}
		s.OutboundPorts = []uint16{32000, 31000}
		s.ExcludeOutboundPorts = []uint16{3306, 5432}
	}},
	{"uid-gid", func(s *capture.Spec) { s.ProxyUIDs = []uint32{1337, 1338}; s.ProxyGIDs = []uint32{1339} }},
	{"tproxy", func(s *capture.Spec) { s.Mode = capture.TProxy }},
	{"tproxy-ports-exclude-nic", func(s *capture.Spec) {
		s.Mode = capture.TProxy
		s.InboundPorts = capture.Ports{List: []uint16{80, 8080}}
		s.ExcludeInterfaces = []string{"not-istio-nic"}
	}},
	{"dns-capture-all", func(s *capture.Spec) { s.RedirectDNS = true; s.CaptureAllDNS = true }},
	{"dns-servers", func(s *capture.Spec) {
		s.RedirectDNS = true
		s.IPv6 = true
		s.DNSServers = []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")}
	}},
	{"dns-no-servers", func(s *capture.Spec) { s.RedirectDNS = true }},
	{"reroute-interfaces", func(s *capture.Spec) { s.RerouteInterfaces = []string{"eth1", "eth2"} }},
	{"reroute-interfaces-cidrs", func(s *capture.Spec) {
		s.RerouteInterfaces = []string{"eth1"}
		s.OutboundCIDRs = capture.CIDRs{List: prefixes("10.0.0.0/8")}
	}},
	{"exclude-interface", func(s *capture.Spec) { s.ExcludeInterfaces = []string{"net1"} }},
	{"drop-invalid", func(s *capture.Spec) { s.DropInvalid = true }},
	{"ipv6", func(s *capture.Spec) {
		s.IPv6 = true
		s.OutboundCIDRs = capture.CIDRs{List: prefixes("10.0.0.0/8", "fd00::/8")}
		s.ExcludeOutboundCIDRs = prefixes("10.96.0.1/32", "fd00::1/128")
	}},
	{"dual-stack-tproxy-dns", func(s *capture.Spec) {
		s.IPv6 = true
		s.Mode = capture.TProxy
		s.RedirectDNS = true
		s.CaptureAllDNS = true
	}},
	{"host-loopback", func(s *capture.Spec) { s.HostLoopback = netip.MustParsePrefix("127.0.0.0/8") }},
}
