package rules

import (
	"net/netip"

	"github.com/meshcni/meshcni/internal/capture"
)

const (
	loopback6    = "::1/128"
	passthrough4 = "127.0.0.6/32" // source of Envoy's inbound passthrough
	passthrough6 = "::6/128"
)

// Build returns the rulesets for spec: IPv4 always, IPv6 when spec.IPv6.
// The order of rules follows istio-iptables exactly; comments say why a
// rule exists, since the order is Istio's, not ours to improve.
func Build(s capture.Spec) []Ruleset {
	b := &builder{ipv6: s.IPv6}
	tproxy := s.Mode == capture.TProxy
	lo4 := s.HostLoopback.String()
	mark := itoa(s.TProxyMark)
	tunnel := itoa(s.InboundTunnelPort)

	var servers4, servers6 []string
	for _, a := range s.DNSServers {
		if a.Is4() {
			servers4 = append(servers4, a.String())
		} else {
			servers6 = append(servers6, a.String())
		}
	}
	redirectDNS := s.RedirectDNS && (s.CaptureAllDNS || len(s.DNSServers) > 0)
	include4, include6 := splitFamilies(s.OutboundCIDRs.List)
	exclude4, exclude6 := splitFamilies(s.ExcludeOutboundCIDRs)

	// Excluded interfaces bypass capture entirely, in both directions.
	for _, nic := range s.ExcludeInterfaces {
		b.add("nat", "PREROUTING", "-i", nic, "-j", "RETURN")
		b.add("nat", "OUTPUT", "-o", nic, "-j", "RETURN")
	}
	if tproxy {
		for _, nic := range s.ExcludeInterfaces {
			b.add("mangle", "PREROUTING", "-i", nic, "-j", "RETURN")
			b.add("mangle", "OUTPUT", "-o", nic, "-j", "RETURN")
		}
	}
	// Traffic arriving on a rerouted (VM) interface is not inbound.
	for _, nic := range s.RerouteInterfaces {
		b.insert("nat", "PREROUTING", 1, "-i", nic, "-j", "RETURN")
	}
	if s.DropInvalid {
		b.add("mangle", "PREROUTING", "-m", "conntrack", "--ctstate", "INVALID", "-j", ChainDrop)
		b.add("mangle", ChainDrop, "-j", "DROP")
	}

	b.add("nat", ChainInbound, "-p", "tcp", "--dport", tunnel, "-j", "RETURN")
	b.add("nat", ChainRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", itoa(s.ProxyPort))
	b.add("nat", ChainInRedirect, "-p", "tcp", "-j", "REDIRECT", "--to-ports", itoa(s.InboundCapturePort))

	buildInbound(b, s, lo4)

	b.add("nat", "OUTPUT", "-j", ChainOutput)
	for _, p := range s.ExcludeOutboundPorts {
		b.add("nat", ChainOutput, "-p", "tcp", "--dport", itoa(p), "-j", "RETURN")
		b.add("nat", ChainOutput, "-p", "udp", "--dport", itoa(p), "-j", "RETURN")
	}
	b.versioned(passthrough4, passthrough6, "nat", ChainOutput, "-o", "lo", "-s", placeholder, "-j", "RETURN")

	// An explicit loopback include means app-to-self traffic is captured too.
	keepLoopback := !hasLoopback(include4) && !hasLoopback(include6)
	for _, owner := range owners(s) {
		// App calls back to itself through a service VIP go to Envoy's inbound.
		if redirectDNS && owner.flag == "--uid-owner" {
			b.versioned(lo4, loopback6, "nat", ChainOutput, "-o", "lo", "!", "-d", placeholder, "-p", "tcp",
				"-m", "multiport", "!", "--dports", "53,"+tunnel, "-m", "owner", owner.flag, owner.id, "-j", ChainInRedirect)
		} else {
			b.versioned(lo4, loopback6, "nat", ChainOutput, "-o", "lo", "!", "-d", placeholder, "-p", "tcp",
				"!", "--dport", tunnel, "-m", "owner", owner.flag, owner.id, "-j", ChainInRedirect)
		}
		// App-to-app over loopback is left alone (but DNS over TCP to a
		// local resolver is still captured).
		if keepLoopback {
			if redirectDNS {
				b.add("nat", ChainOutput, "-o", "lo", "-p", "tcp", "!", "--dport", "53", "-m", "owner", "!", owner.flag, owner.id, "-j", "RETURN")
			} else {
				b.add("nat", ChainOutput, "-o", "lo", "-m", "owner", "!", owner.flag, owner.id, "-j", "RETURN")
			}
		}
		// The proxy's own traffic never loops back into it.
		b.add("nat", ChainOutput, "-m", "owner", owner.flag, owner.id, "-j", "RETURN")
	}

	if redirectDNS {
		buildDNS(b, s, servers4, servers6)
	}

	// Envoy-aware apps and container-to-container traffic use localhost.
	b.versioned(lo4, loopback6, "nat", ChainOutput, "-d", placeholder, "-j", "RETURN")
	for _, c := range exclude4 {
		b.add4("nat", ChainOutput, 0, "-d", c.String(), "-j", "RETURN")
	}
	for _, c := range exclude6 {
		b.add6("nat", ChainOutput, 0, "-d", c.String(), "-j", "RETURN")
	}
	for _, p := range s.OutboundPorts {
		b.add("nat", ChainOutput, "-p", "tcp", "--dport", itoa(p), "-j", ChainRedirect)
	}
	buildOutboundInclude(s, include4, b.add4, s.RerouteInterfaces)
	buildOutboundInclude(s, include6, b.add6, s.RerouteInterfaces)

	if tproxy {
		// Keep the mark Envoy's original_src listener sets as the conn mark.
		b.add("mangle", "PREROUTING", "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "CONNMARK", "--save-mark")
		b.add("mangle", "OUTPUT", "-p", "tcp", "-o", "lo", "-m", "mark", "--mark", mark, "-j", "RETURN")
		for _, owner := range owners(s) {
			// app -> VIP -> Envoy outbound -(1338)-> Envoy inbound -> app
			b.versioned(lo4, loopback6, "mangle", "OUTPUT", "!", "-d", placeholder, "-p", "tcp", "-o", "lo",
				"-m", "owner", owner.flag, owner.id, "-j", "MARK", "--set-mark", itoa(capture.OutboundMark))
		}
		b.add("mangle", "OUTPUT", "-p", "tcp", "-m", "connmark", "--mark", mark, "-j", "CONNMARK", "--restore-mark")
		b.insert("mangle", ChainInbound, 1, "-p", "tcp", "-m", "mark", "--mark", mark, "-j", "RETURN")
		b.add4("mangle", ChainInbound, 2, "-p", "tcp", "-s", passthrough4, "-i", "lo", "-j", "RETURN")
		b.add6("mangle", ChainInbound, 2, "-p", "tcp", "-s", passthrough6, "-i", "lo", "-j", "RETURN")
		b.insert("mangle", ChainInbound, 3, "-p", "tcp", "-i", "lo", "-m", "mark", "!", "--mark", itoa(capture.OutboundMark), "-j", "RETURN")
	}

	sets := []Ruleset{{Family: IPv4, Rules: b.v4}}
	if s.IPv6 {
		sets = append(sets, Ruleset{Family: IPv6, Rules: b.v6})
	}
	return sets
}

type owner struct{ flag, id string }

// owners lists UIDs then GIDs, the order Istio emits their rules in.
func owners(s capture.Spec) []owner {
	var out []owner
	for _, u := range s.ProxyUIDs {
		out = append(out, owner{"--uid-owner", itoa(u)})
	}
	for _, g := range s.ProxyGIDs {
		out = append(out, owner{"--gid-owner", itoa(g)})
	}
	return out
}

func buildInbound(b *builder, s capture.Spec, lo4 string) {
	if s.InboundPorts.Empty() {
		return
	}
	table := "nat"
	if s.Mode == capture.TProxy {
		table = "mangle"
		// Marked packets are routed to lo (table 133), where TPROXY hands
		// them to Envoy; established flows only need the mark.
		b.add("mangle", ChainDivert, "-j", "MARK", "--set-mark", itoa(s.TProxyMark))
		b.add("mangle", ChainDivert, "-j", "ACCEPT")
		b.versioned(lo4, loopback6, "mangle", ChainTProxy, "!", "-d", placeholder, "-p", "tcp", "-j", "TPROXY",
			"--tproxy-mark", itoa(s.TProxyMark)+"/0xffffffff", "--on-port", itoa(s.InboundCapturePort))
	}
	b.add(table, "PREROUTING", "-p", "tcp", "-j", ChainInbound)

	if s.InboundPorts.All {
		for _, p := range s.ExcludeInboundPorts {
			b.add(table, ChainInbound, "-p", "tcp", "--dport", itoa(p), "-j", "RETURN")
		}
		if s.Mode == capture.TProxy {
			b.add("mangle", ChainInbound, "-p", "tcp", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", ChainDivert)
			b.add("mangle", ChainInbound, "-p", "tcp", "-j", ChainTProxy)
		} else {
			b.add("nat", ChainInbound, "-p", "tcp", "-j", ChainInRedirect)
		}
		return
	}
	for _, p := range s.InboundPorts.List {
		port := itoa(p)
		if s.Mode == capture.TProxy {
			b.add("mangle", ChainInbound, "-p", "tcp", "--dport", port, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", ChainDivert)
			b.add("mangle", ChainInbound, "-p", "tcp", "--dport", port, "-j", ChainTProxy)
		} else {
			b.add("nat", ChainInbound, "-p", "tcp", "--dport", port, "-j", ChainInRedirect)
		}
	}
}

func buildOutboundInclude(s capture.Spec, include []netip.Prefix, add func(table, chain string, pos int, args ...string), reroute []string) {
	if s.OutboundCIDRs.All {
		add("nat", ChainOutput, 0, "-j", ChainRedirect)
		for _, nic := range reroute {
			add("nat", "PREROUTING", 1, "-i", nic, "-j", ChainRedirect)
		}
		return
	}
	for _, c := range include {
		for _, nic := range reroute {
			add("nat", "PREROUTING", 1, "-i", nic, "-d", c.String(), "-j", ChainRedirect)
		}
		add("nat", ChainOutput, 0, "-d", c.String(), "-j", ChainRedirect)
	}
}

// buildDNS sends the app's DNS to istio-agent on 15053 and splits the UDP
// flows into two conntrack zones (app<->agent, agent<->upstream), so that
// the two legs of one query don't collide in conntrack.
func buildDNS(b *builder, s capture.Spec, servers4, servers6 []string) {
	dnsPort := itoa(uint16(capture.DNSListenerPort))
	all := s.CaptureAllDNS
	b.add("raw", "OUTPUT", "-j", ChainOutputDNS)
	if all || len(servers4) > 0 {
		b.add4("nat", ChainOutput, 0, "-j", ChainOutputDNS)
	}
	if all || len(servers6) > 0 {
		b.add6("nat", ChainOutput, 0, "-j", ChainOutputDNS)
	}
	perServer := func(proto, flag string) {
		for _, a := range servers4 {
			b.add4("nat", ChainOutputDNS, 0, "-p", proto, "--dport", "53", "-d", a+"/32", "-j", "REDIRECT", flag, dnsPort)
		}
		for _, a := range servers6 {
			b.add6("nat", ChainOutputDNS, 0, "-p", proto, "--dport", "53", "-d", a+"/128", "-j", "REDIRECT", flag, dnsPort)
		}
	}
	// Istio spells the two REDIRECT options differently; kept for parity.
	if all {
		b.add("nat", ChainOutputDNS, "-p", "tcp", "--dport", "53", "-j", "REDIRECT", "--to-ports", dnsPort)
		b.add("nat", ChainOutputDNS, "-p", "udp", "--dport", "53", "-j", "REDIRECT", "--to-port", dnsPort)
	} else {
		perServer("tcp", "--to-ports")
		perServer("udp", "--to-port")
	}

	for _, owner := range owners(s) {
		b.add("raw", ChainOutputDNS, "-p", "udp", "--dport", "53", "-m", "owner", owner.flag, owner.id, "-j", "CT", "--zone", "1")
		b.add("raw", ChainOutputDNS, "-p", "udp", "--sport", dnsPort, "-m", "owner", owner.flag, owner.id, "-j", "CT", "--zone", "2")
	}
	if all {
		b.add("raw", "PREROUTING", "-j", ChainInbound)
		b.add("raw", ChainOutputDNS, "-p", "udp", "--dport", "53", "-j", "CT", "--zone", "2")
		b.add("raw", ChainInbound, "-p", "udp", "--sport", "53", "-j", "CT", "--zone", "1")
		return
	}
	if len(servers4) > 0 {
		b.add4("raw", "PREROUTING", 0, "-j", ChainInbound)
	}
	for _, a := range servers4 {
		b.add4("raw", ChainOutputDNS, 0, "-p", "udp", "--dport", "53", "-d", a+"/32", "-j", "CT", "--zone", "2")
		b.add4("raw", ChainInbound, 0, "-p", "udp", "--sport", "53", "-s", a+"/32", "-j", "CT", "--zone", "1")
	}
	if len(servers6) > 0 {
		b.add6("raw", "PREROUTING", 0, "-j", ChainInbound)
	}
	for _, a := range servers6 {
		b.add6("raw", ChainOutputDNS, 0, "-p", "udp", "--dport", "53", "-d", a+"/128", "-j", "CT", "--zone", "2")
		b.add6("raw", ChainInbound, 0, "-p", "udp", "--sport", "53", "-s", a+"/128", "-j", "CT", "--zone", "1")
	}
}
