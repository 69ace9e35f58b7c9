package rules_test

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/nftrules"
	"github.com/meshcni/meshcni/internal/rules"
)

// The vocabulary rules.Build speaks: every option, what its value must
// look like, and every target. An argument outside it is either a bug in
// Build or pod input that got through.
var (
	valueOf = map[string]func(string) bool{
		"-p": oneOf("tcp", "udp"),
		"-i": ifname, "-o": ifname,
		"-s": prefix, "-d": prefix,
		"-m":      oneOf("owner", "multiport", "conntrack", "mark", "connmark"),
		"--dport": port, "--sport": port, "--to-ports": port, "--to-port": port, "--on-port": port,
		"--dports": func(v string) bool {
			for _, p := range strings.Split(v, ",") {
				if !port(p) {
					return false
				}
			}
			return true
		},
		"--uid-owner": number, "--gid-owner": number, "--mark": number, "--set-mark": number, "--zone": number,
		"--ctstate":     oneOf("INVALID", "RELATED,ESTABLISHED"),
		"--tproxy-mark": func(v string) bool { n, m, ok := strings.Cut(v, "/"); return ok && number(n) && m == "0xffffffff" },
	}
	// Options without a value.
	flags   = []string{"--save-mark", "--restore-mark"}
	targets = []string{"RETURN", "ACCEPT", "DROP", "REDIRECT", "TPROXY", "MARK", "CONNMARK", "CT"}
)

func oneOf(vs ...string) func(string) bool {
	return func(v string) bool { return slices.Contains(vs, v) }
}

func port(v string) bool {
	n, err := strconv.ParseUint(v, 10, 16)
	return err == nil && n > 0 && strconv.FormatUint(n, 10) == v
}

func number(v string) bool {
	n, err := strconv.ParseUint(v, 10, 32)
	return err == nil && strconv.FormatUint(n, 10) == v
}

func prefix(v string) bool {
	p, err := netip.ParsePrefix(v)
	return err == nil && p == p.Masked() && p.String() == v
}

// ifname: what the kernel takes as a device name, and nothing iptables
// could read as an option.
func ifname(v string) bool {
	if len(v) < 1 || len(v) > 15 || v[0] == '-' || v[0] == '!' {
		return false
	}
	return safe(v)
}

// safe is the alphabet of every argument: printable ASCII without space,
// quotes or backslash (the only characters iptables-restore's tokenizer
// treats specially).
func safe(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c <= ' ' || c > '~' || c == '"' || c == '\'' || c == '\\' {
			return false
		}
	}
	return v != ""
}

// checkRule parses one rule's arguments with the grammar above.
func checkRule(r rules.Rule) string {
	if !slices.Contains(rules.Tables, r.Table) {
		return "table " + r.Table
	}
	if !rules.IsBuiltin(r.Chain) && !strings.HasPrefix(r.Chain, "ISTIO_") {
		return "chain " + r.Chain
	}
	jumps := 0
	args := r.Args()
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !safe(a) {
			return "unsafe argument " + strconv.Quote(a)
		}
		switch {
		case a == "!" || slices.Contains(flags, a):
		case a == "-j":
			i++
			jumps++
			if i >= len(args) || !(slices.Contains(targets, args[i]) || strings.HasPrefix(args[i], "ISTIO_")) {
				return "bad target after -j"
			}
		case valueOf[a] != nil:
			i++
			if i >= len(args) || !valueOf[a](args[i]) {
				return "bad value for " + a
			}
		default:
			return "unexpected argument " + strconv.Quote(a)
		}
	}
	if jumps != 1 {
		return "rule without exactly one -j"
	}
	return ""
}

// FuzzBuildFromAnnotations is the property test of hostile input: for any
// annotations and sidecar identity, whatever capture.FromPod accepts
// renders rules whose every argument is in the grammar and alphabet
// above, restore text with exactly one line per rule (nothing a value
// could split), and an nftables translation.
func FuzzBuildFromAnnotations(f *testing.F) {
	keys := capture.KnownAnnotations()
	f.Add(uint16(0xffff), "TPROXY", "10.0.0.0/8,fd00::/8", "10.96.0.1", "9080", "15020", "443", "3306", "net1,eth+", "vm0", "vm1", int64(1337), true, true)
	f.Add(uint16(0x0001), "REDIRECT", "*", "", "*", "", "", "", "", "", "", int64(0), false, false)
	f.Add(uint16(0x03ff), "-j ACCEPT", "10.0.0.0/8 -j ACCEPT", "1.1.1.1\n-A", "80 -j", "eth0 --dport", "!", "-A", "a#b,c;d", "{x},*", "+", int64(-1), true, false)
	f.Add(uint16(0x0100), "", "", "", "", "", "", "", "a`b,x!y,%s", "", "", int64(4294968633), false, true)
	f.Fuzz(func(t *testing.T, mask uint16, v0, v1, v2, v3, v4, v5, v6, v7, v8, v9 string, uid int64, dns, ipv6 bool) {
		values := []string{v0, v1, v2, v3, v4, v5, v6, v7, v8, v9}
		ann := map[string]string{}
		for i, k := range keys {
			if mask&(1<<i) != 0 {
				ann[k] = values[i%len(values)]
			}
		}
		proxy := capture.Proxy{UID: &uid, Env: map[string]string{capture.EnvDNSCapture: strconv.FormatBool(dns)}}
		addr := netip.MustParseAddr("10.0.0.5")
		if ipv6 {
			addr = netip.MustParseAddr("fd00::5")
		}
		spec, err := capture.FromPod(capture.Default(), ann, proxy, []netip.Addr{addr})
		if err != nil {
			return
		}
		for _, rs := range rules.Build(spec).Sets {
			for _, r := range rs.Rules {
				if why := checkRule(r); why != "" {
					t.Fatalf("%s: rule %q from %q", why, r.String(), ann)
				}
			}
			restore := rs.Restore()
			lines := strings.Count(restore, "\n")
			chains := 0
			for _, cs := range rs.Chains() {
				chains += len(cs)
			}
			// "* table" and "COMMIT" per table, "-N" per chain, a line per rule.
			if want := 2*len(rs.UsedTables()) + chains + len(rs.Rules); lines != want {
				t.Fatalf("restore text has %d lines, want %d:\n%s", lines, want, restore)
			}
		}
		// The nftables backend translates the same rules; it must cover
		// whatever capture accepts.
		if _, err := nftrules.Build(spec); err != nil {
			t.Fatalf("nftables translation of an accepted spec: %v (annotations %q)", err, ann)
		}
	})
}

// The grammar is not vacuous: what an injected value would look like in a
// rule is caught, and everything Build makes for a rich spec passes.
func TestBuildGrammar(t *testing.T) {
	// With typed rules a doubled -j or an option without its value
	// cannot be written; what pod input can still reach is a value.
	ret := rules.Verdict{Kind: rules.Return}
	iface := func(name string) []rules.Match { return []rules.Match{{Kind: rules.MatchIn, Iface: name}} }
	for _, bad := range []rules.Rule{
		{Table: "nat", Chain: "PREROUTING", Matches: iface("-j"), Verdict: ret},
		{Table: "nat", Chain: "PREROUTING", Matches: iface("eth0 -j ACCEPT"), Verdict: ret},
		{Table: "nat", Chain: "OUTPUT", Matches: iface("eth0\n-A"), Verdict: ret},
		{Table: "nat", Chain: "OUTPUT", Matches: []rules.Match{{Kind: rules.MatchDst, Prefix: netip.MustParsePrefix("10.0.0.1/8")}}, Verdict: ret},
		{Table: "nat", Chain: "OUTPUT", Verdict: rules.Verdict{Kind: rules.Jump, Chain: "KUBE-SERVICES"}},
		{Table: "filter", Chain: "KUBE-SERVICES", Verdict: ret},
		{Table: "security", Chain: "OUTPUT", Verdict: ret},
	} {
		if checkRule(bad) == "" {
			t.Errorf("grammar accepts %q", bad.String())
		}
	}
	s := capture.Default()
	s.Mode, s.RedirectDNS, s.CaptureAllDNS, s.DropInvalid, s.IPv6 = capture.TProxy, true, true, true, true
	s.ExcludeInterfaces, s.RerouteInterfaces = []string{"net1", "eth+"}, []string{"vm0"}
	s.ProxyGIDs = []uint32{1337, 1338}
	s.OutboundCIDRs = capture.CIDRs{List: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}}
	s.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.1/32")}
	s.InboundPorts = capture.Ports{List: []uint16{9080}}
	s.OutboundPorts = []uint16{443}
	s.DNSServers = []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")}
	n := 0
	for _, rs := range rules.Build(s).Sets {
		for _, r := range rs.Rules {
			n++
			if why := checkRule(r); why != "" {
				t.Errorf("%s: %q", why, r.String())
			}
		}
	}
	t.Logf("%d rules in the grammar", n)
}
