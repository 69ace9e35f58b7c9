package rules

import (
	"net/netip"
	"slices"

	"github.com/meshcni/meshcni/internal/capture"
)

var (
	loopback6    = netip.MustParsePrefix("::1/128")
	passthrough4 = netip.MustParsePrefix("127.0.0.6/32") // source of Envoy's inbound passthrough
	passthrough6 = netip.MustParsePrefix("::6/128")
)

// Build returns the model of spec: its rulesets (IPv4 always, IPv6 when
// spec.IPv6) and its routes. The order of rules follows istio-iptables
// exactly; comments say why a rule exists, since the order is Istio's,
// not ours to improve. The spec is taken as valid (capture.Spec.Validate).
func Build(s capture.Spec) Model {
	b := &builder{ipv6: s.IPv6}
	tproxyMode := s.Mode == capture.TProxy
	lo4 := s.HostLoopback
	tunnel := s.InboundTunnelPort

	var servers4, servers6 []netip.Prefix
	for _, a := range s.DNSServers {
		if a.Is4() {
			servers4 = append(servers4, netip.PrefixFrom(a, 32))
		} else {
			servers6 = append(servers6, netip.PrefixFrom(a, 128))
		}
	}
	redirectDNS := s.RedirectDNS && (s.CaptureAllDNS || len(s.DNSServers) > 0)
	include4, include6 := splitFamilies(s.OutboundCIDRs.List)
	exclude4, exclude6 := splitFamilies(s.ExcludeOutboundCIDRs)

	// Excluded interfaces bypass capture entirely, in both directions.
	for _, nic := range s.ExcludeInterfaces {
		b.add("nat", "PREROUTING", match(in(nic)), ret)
		b.add("nat", "OUTPUT", match(out(nic)), ret)
	}
	if tproxyMode {
		for _, nic := range s.ExcludeInterfaces {
			b.add("mangle", "PREROUTING", match(in(nic)), ret)
			b.add("mangle", "OUTPUT", match(out(nic)), ret)
		}
	}
	// Traffic arriving on a rerouted (VM) interface is not inbound.
	for _, nic := range s.RerouteInterfaces {
		b.insert("nat", "PREROUTING", 1, match(in(nic)), ret)
	}
	if s.DropInvalid {
		b.add("mangle", "PREROUTING", match(ctstate(CtInvalid)), jump(ChainDrop))
		b.add("mangle", ChainDrop, nil, drop)
	}

	b.add("nat", ChainInbound, match(proto("tcp"), dport(tunnel)), ret)
	b.add("nat", ChainRedirect, match(proto("tcp")), redirect(s.ProxyPort))
	b.add("nat", ChainInRedirect, match(proto("tcp")), redirect(s.InboundCapturePort))

	buildInbound(b, s, lo4)

	b.add("nat", "OUTPUT", nil, jump(ChainOutput))
	for _, p := range s.ExcludeOutboundPorts {
		b.add("nat", ChainOutput, match(proto("tcp"), dport(p)), ret)
		b.add("nat", ChainOutput, match(proto("udp"), dport(p)), ret)
	}
	b.versioned(passthrough4, passthrough6, "nat", ChainOutput, match(out("lo"), src(familyAddr)), ret)

	// An explicit loopback include means app-to-self traffic is captured too.
	keepLoopback := !hasLoopback(include4) && !hasLoopback(include6)
	for _, owner := range owners(s) {
		// App calls back to itself through a service VIP go to Envoy's inbound.
		if redirectDNS && owner.Kind == MatchUID {
			b.versioned(lo4, loopback6, "nat", ChainOutput, match(out("lo"), not(dst(familyAddr)), proto("tcp"),
				not(dports(53, tunnel)), owner), jump(ChainInRedirect))
		} else {
			b.versioned(lo4, loopback6, "nat", ChainOutput, match(out("lo"), not(dst(familyAddr)), proto("tcp"),
				not(dport(tunnel)), owner), jump(ChainInRedirect))
		}
		// App-to-app over loopback is left alone (but DNS over TCP to a
		// local resolver is still captured).
		if keepLoopback {
			if redirectDNS {
				b.add("nat", ChainOutput, match(out("lo"), proto("tcp"), not(dport(53)), not(owner)), ret)
			} else {
				b.add("nat", ChainOutput, match(out("lo"), not(owner)), ret)
			}
		}
		// The proxy's own traffic never loops back into it.
		b.add("nat", ChainOutput, match(owner), ret)
	}

	if redirectDNS {
		buildDNS(b, s, servers4, servers6)
	}

	// Envoy-aware apps and container-to-container traffic use localhost.
	b.versioned(lo4, loopback6, "nat", ChainOutput, match(dst(familyAddr)), ret)
	for _, c := range exclude4 {
		b.add4("nat", ChainOutput, 0, match(dst(c)), ret)
	}
	for _, c := range exclude6 {
		b.add6("nat", ChainOutput, 0, match(dst(c)), ret)
	}
	for _, p := range s.OutboundPorts {
		b.add("nat", ChainOutput, match(proto("tcp"), dport(p)), jump(ChainRedirect))
	}
	buildOutboundInclude(s, include4, b.add4, s.RerouteInterfaces)
	buildOutboundInclude(s, include6, b.add6, s.RerouteInterfaces)

	if tproxyMode {
		// Keep the mark Envoy's original_src listener sets as the conn mark.
		b.add("mangle", "PREROUTING", match(proto("tcp"), mark(s.TProxyMark)), saveMark)
		b.add("mangle", "OUTPUT", match(proto("tcp"), out("lo"), mark(s.TProxyMark)), ret)
		for _, owner := range owners(s) {
			// app -> VIP -> Envoy outbound -(1338)-> Envoy inbound -> app
			b.versioned(lo4, loopback6, "mangle", "OUTPUT", match(not(dst(familyAddr)), proto("tcp"), out("lo"), owner),
				setMark(capture.OutboundMark))
		}
		b.add("mangle", "OUTPUT", match(proto("tcp"), connmark(s.TProxyMark)), restoreMark)
		b.insert("mangle", ChainInbound, 1, match(proto("tcp"), mark(s.TProxyMark)), ret)
		b.add4("mangle", ChainInbound, 2, match(proto("tcp"), src(passthrough4), in("lo")), ret)
		b.add6("mangle", ChainInbound, 2, match(proto("tcp"), src(passthrough6), in("lo")), ret)
		b.insert("mangle", ChainInbound, 3, match(proto("tcp"), in("lo"), not(mark(capture.OutboundMark))), ret)
	}

	m := Model{
		Sets:   []Ruleset{{Family: IPv4, Rules: b.v4}},
		Routes: Routes{IPv6: s.IPv6, TProxy: tproxyMode, Mark: s.TProxyMark, Table: s.TProxyRouteTable},
	}
	if s.IPv6 {
		m.Sets = append(m.Sets, Ruleset{Family: IPv6, Rules: b.v6})
	}
	return m
}

// owners matches the proxy's UIDs then GIDs, the order Istio emits their
// rules in.
func owners(s capture.Spec) []Match {
	var out []Match
	for _, u := range s.ProxyUIDs {
		out = append(out, Match{Kind: MatchUID, Value: u})
	}
	for _, g := range s.ProxyGIDs {
		out = append(out, Match{Kind: MatchGID, Value: g})
	}
	return out
}

func buildInbound(b *builder, s capture.Spec, lo4 netip.Prefix) {
	if s.InboundPorts.Empty() {
		return
	}
	table := "nat"
	if s.Mode == capture.TProxy {
		table = "mangle"
		// Marked packets are routed to lo (table 133), where TPROXY hands
		// them to Envoy; established flows only need the mark.
		b.add("mangle", ChainDivert, nil, setMark(s.TProxyMark))
		b.add("mangle", ChainDivert, nil, accept)
		b.versioned(lo4, loopback6, "mangle", ChainTProxy, match(not(dst(familyAddr)), proto("tcp")),
			tproxy(s.TProxyMark, s.InboundCapturePort))
	}
	b.add(table, "PREROUTING", match(proto("tcp")), jump(ChainInbound))

	established := ctstate(CtRelated | CtEstablished)
	if s.InboundPorts.All {
		for _, p := range s.ExcludeInboundPorts {
			b.add(table, ChainInbound, match(proto("tcp"), dport(p)), ret)
		}
		if s.Mode == capture.TProxy {
			b.add("mangle", ChainInbound, match(proto("tcp"), established), jump(ChainDivert))
			b.add("mangle", ChainInbound, match(proto("tcp")), jump(ChainTProxy))
		} else {
			b.add("nat", ChainInbound, match(proto("tcp")), jump(ChainInRedirect))
		}
		return
	}
	for _, p := range s.InboundPorts.List {
		if s.Mode == capture.TProxy {
			b.add("mangle", ChainInbound, match(proto("tcp"), dport(p), established), jump(ChainDivert))
			b.add("mangle", ChainInbound, match(proto("tcp"), dport(p)), jump(ChainTProxy))
		} else {
			b.add("nat", ChainInbound, match(proto("tcp"), dport(p)), jump(ChainInRedirect))
		}
	}
}

func buildOutboundInclude(s capture.Spec, include []netip.Prefix, add func(table, chain string, pos int, ms []Match, v Verdict), reroute []string) {
	if s.OutboundCIDRs.All {
		add("nat", ChainOutput, 0, nil, jump(ChainRedirect))
		for _, nic := range reroute {
			add("nat", "PREROUTING", 1, match(in(nic)), jump(ChainRedirect))
		}
		return
	}
	for _, c := range include {
		for _, nic := range reroute {
			add("nat", "PREROUTING", 1, match(in(nic), dst(c)), jump(ChainRedirect))
		}
		add("nat", ChainOutput, 0, match(dst(c)), jump(ChainRedirect))
	}
}

// buildDNS sends the app's DNS to istio-agent on 15053 and splits the UDP
// flows into two conntrack zones (app<->agent, agent<->upstream), so that
// the two legs of one query don't collide in conntrack.
func buildDNS(b *builder, s capture.Spec, servers4, servers6 []netip.Prefix) {
	dnsPort := uint16(capture.DNSListenerPort)
	all := s.CaptureAllDNS
	b.add("raw", "OUTPUT", nil, jump(ChainOutputDNS))
	if all || len(servers4) > 0 {
		b.add4("nat", ChainOutput, 0, nil, jump(ChainOutputDNS))
	}
	if all || len(servers6) > 0 {
		b.add6("nat", ChainOutput, 0, nil, jump(ChainOutputDNS))
	}
	// Istio spells the two REDIRECT options differently (--to-ports for
	// TCP, --to-port for UDP); kept for parity.
	toPort := Verdict{Kind: Redirect, Port: dnsPort, ToPort: true}
	perServer := func(p string, v Verdict) {
		for _, a := range servers4 {
			b.add4("nat", ChainOutputDNS, 0, match(proto(p), dport(53), dst(a)), v)
		}
		for _, a := range servers6 {
			b.add6("nat", ChainOutputDNS, 0, match(proto(p), dport(53), dst(a)), v)
		}
	}
	if all {
		b.add("nat", ChainOutputDNS, match(proto("tcp"), dport(53)), redirect(dnsPort))
		b.add("nat", ChainOutputDNS, match(proto("udp"), dport(53)), toPort)
	} else {
		perServer("tcp", redirect(dnsPort))
		perServer("udp", toPort)
	}

	for _, owner := range owners(s) {
		b.add("raw", ChainOutputDNS, match(proto("udp"), dport(53), owner), ctZone(1))
		b.add("raw", ChainOutputDNS, match(proto("udp"), sport(dnsPort), owner), ctZone(2))
	}
	if all {
		b.add("raw", "PREROUTING", nil, jump(ChainInbound))
		b.add("raw", ChainOutputDNS, match(proto("udp"), dport(53)), ctZone(2))
		b.add("raw", ChainInbound, match(proto("udp"), sport(53)), ctZone(1))
		return
	}
	if len(servers4) > 0 {
		b.add4("raw", "PREROUTING", 0, nil, jump(ChainInbound))
	}
	for _, a := range servers4 {
		b.add4("raw", ChainOutputDNS, 0, match(proto("udp"), dport(53), dst(a)), ctZone(2))
		b.add4("raw", ChainInbound, 0, match(proto("udp"), sport(53), src(a)), ctZone(1))
	}
	if len(servers6) > 0 {
		b.add6("raw", "PREROUTING", 0, nil, jump(ChainInbound))
	}
	for _, a := range servers6 {
		b.add6("raw", ChainOutputDNS, 0, match(proto("udp"), dport(53), dst(a)), ctZone(2))
		b.add6("raw", ChainInbound, 0, match(proto("udp"), sport(53), src(a)), ctZone(1))
	}
}

// familyAddr, in a versioned rule's match, stands for the family's own
// address (an invalid prefix: no real match holds it).
var familyAddr netip.Prefix

// builder collects rules for both families the way Istio's rule builder
// does: shared rules go to both, versioned ones get a family-specific value.
type builder struct {
	v4, v6 []Rule
	ipv6   bool
}

func (b *builder) add4(table, chain string, pos int, ms []Match, v Verdict) {
	b.v4 = append(b.v4, Rule{Table: table, Chain: chain, Pos: pos, Matches: ms, Verdict: v})
}

func (b *builder) add6(table, chain string, pos int, ms []Match, v Verdict) {
	if b.ipv6 {
		b.v6 = append(b.v6, Rule{Table: table, Chain: chain, Pos: pos, Matches: ms, Verdict: v})
	}
}

func (b *builder) add(table, chain string, ms []Match, v Verdict) {
	b.add4(table, chain, 0, ms, v)
	b.add6(table, chain, 0, ms, v)
}

func (b *builder) insert(table, chain string, pos int, ms []Match, v Verdict) {
	b.add4(table, chain, pos, ms, v)
	b.add6(table, chain, pos, ms, v)
}

func (b *builder) versioned(v4, v6 netip.Prefix, table, chain string, ms []Match, v Verdict) {
	b.add4(table, chain, 0, replace(ms, v4), v)
	b.add6(table, chain, 0, replace(ms, v6), v)
}

func replace(ms []Match, p netip.Prefix) []Match {
	out := slices.Clone(ms)
	for i, m := range out {
		if m.Prefix == familyAddr && (m.Kind == MatchSrc || m.Kind == MatchDst) {
			out[i].Prefix = p
		}
	}
	return out
}

// The vocabulary Build writes rules in.

func match(ms ...Match) []Match               { return ms }
func not(m Match) Match                       { m.Neg = true; return m }
func proto(p string) Match                    { return Match{Kind: MatchProto, Proto: p} }
func in(nic string) Match                     { return Match{Kind: MatchIn, Iface: nic} }
func out(nic string) Match                    { return Match{Kind: MatchOut, Iface: nic} }
func src(p netip.Prefix) Match                { return Match{Kind: MatchSrc, Prefix: p} }
func dst(p netip.Prefix) Match                { return Match{Kind: MatchDst, Prefix: p} }
func dport(p uint16) Match                    { return Match{Kind: MatchDPort, Ports: []uint16{p}} }
func sport(p uint16) Match                    { return Match{Kind: MatchSPort, Ports: []uint16{p}} }
func dports(ps ...uint16) Match               { return Match{Kind: MatchDPorts, Ports: ps} }
func ctstate(s CtState) Match                 { return Match{Kind: MatchCtState, States: s} }
func mark(v uint32) Match                     { return Match{Kind: MatchMark, Value: v} }
func connmark(v uint32) Match                 { return Match{Kind: MatchConnmark, Value: v} }
func jump(chain string) Verdict               { return Verdict{Kind: Jump, Chain: chain} }
func redirect(port uint16) Verdict            { return Verdict{Kind: Redirect, Port: port} }
func setMark(v uint32) Verdict                { return Verdict{Kind: SetMark, Value: v} }
func ctZone(z uint32) Verdict                 { return Verdict{Kind: CTZone, Value: z} }
func tproxy(mark uint32, port uint16) Verdict { return Verdict{Kind: TProxy, Value: mark, Port: port} }

var (
	ret         = Verdict{Kind: Return}
	accept      = Verdict{Kind: Accept}
	drop        = Verdict{Kind: Drop}
	saveMark    = Verdict{Kind: SaveMark}
	restoreMark = Verdict{Kind: RestoreMark}
)

func splitFamilies(ps []netip.Prefix) (v4, v6 []netip.Prefix) {
	for _, p := range ps {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return v4, v6
}

func hasLoopback(ps []netip.Prefix) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr().IsLoopback() })
}
