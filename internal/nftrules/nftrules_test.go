package nftrules

import (
	"context"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/rules"
)

var refresh = flag.Bool("refresh-golden", os.Getenv("REFRESH_GOLDEN") == "true", "rewrite golden files")

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// goldenCases are internal/rules' cases, name for name (a test checks),
// so that each nft golden sits next to the iptables rules it translates.
var goldenCases = []struct {
	name string
	mod  func(*capture.Spec)
}{
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

func specOf(t testing.TB, mod func(*capture.Spec)) capture.Spec {
	t.Helper()
	s := capture.Default()
	mod(&s)
	if err := s.Validate(); err != nil {
		t.Fatalf("case spec invalid: %v", err)
	}
	return s
}

func TestBuildGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			ts, err := Build(specOf(t, tc.mod))
			if err != nil {
				t.Fatal(err)
			}
			got := Script(ts)
			path := filepath.Join("testdata", tc.name+".golden")
			if *refresh {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with REFRESH_GOLDEN=true to create)", err)
			}
			if got != string(want) {
				t.Errorf("rules differ from %s (REFRESH_GOLDEN=true rewrites it):\n%s", path, lineDiff(string(want), got))
			}
		})
	}
}

// TestSameCasesAsRules keeps the two golden sets side by side.
func TestSameCasesAsRules(t *testing.T) {
	theirs, err := filepath.Glob("../rules/testdata/*.golden")
	if err != nil || len(theirs) == 0 {
		t.Fatalf("no iptables goldens: %v", err)
	}
	var names []string
	for _, tc := range goldenCases {
		names = append(names, tc.name)
	}
	for _, p := range theirs {
		if n := strings.TrimSuffix(filepath.Base(p), ".golden"); !slices.Contains(names, n) {
			t.Errorf("internal/rules has case %q, nftrules does not", n)
		}
	}
}

// TestRuleForRule: every iptables rule becomes exactly one nft rule in the
// chain of the same name, except TPROXY, which needs its drop rule too.
func TestRuleForRule(t *testing.T) {
	for _, tc := range goldenCases {
		spec := specOf(t, tc.mod)
		ts, err := Build(spec)
		if err != nil {
			t.Fatal(err)
		}
		for i, rs := range rules.Build(spec) {
			want := map[string]int{}
			for _, r := range rs.Rules {
				want[ChainName(r.Table, r.Chain)]++
				if r.Target() == "TPROXY" {
					want[ChainName(r.Table, r.Chain)]++
				}
			}
			for _, c := range ts[i].Chains {
				if len(c.Rules) != want[c.Name] {
					t.Errorf("%s %s chain %s: %d nft rules for %d iptables rules", tc.name, rs.Family, c.Name, len(c.Rules), want[c.Name])
				}
				delete(want, c.Name)
			}
			for c := range want {
				t.Errorf("%s %s: no nft chain %s", tc.name, rs.Family, c)
			}
		}
	}
}

// knftablesTx is Script's transaction built with knftables' objects: the
// reference for the text, and the input of its Fake.
func knftablesTx(ts []Table) *knftables.Transaction {
	tx := knftables.NewFake("", "").NewTransaction()
	for _, t := range ts {
		fam := knftables.Family(NFTFamily(t.Family))
		tx.Add(&knftables.Table{Family: fam, Name: TableName})
		tx.Flush(&knftables.Table{Family: fam, Name: TableName})
		for _, c := range t.Chains {
			ch := &knftables.Chain{Family: fam, Table: TableName, Name: c.Name}
			if c.IsBase() {
				typ, hook := knftables.BaseChainType(c.Type), knftables.BaseChainHook(c.Hook)
				prio := knftables.BaseChainPriority(strconv.Itoa(c.Priority))
				ch.Type, ch.Hook, ch.Priority = &typ, &hook, &prio
			}
			tx.Add(ch)
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				tx.Add(&knftables.Rule{Family: fam, Table: TableName, Chain: c.Name, Rule: r})
			}
		}
	}
	return tx
}

// TestScriptIsKnftables: Script renders what knftables renders for the
// same objects, and knftables' Fake, which rejects jumps to missing
// chains and malformed objects, takes it; a second run (the same spec over
// the table) leaves the same contents, and the delete leaves nothing.
func TestScriptIsKnftables(t *testing.T) {
	for _, tc := range goldenCases {
		ts, err := Build(specOf(t, tc.mod))
		if err != nil {
			t.Fatal(err)
		}
		tx := knftablesTx(ts)
		if want := tx.String(); Script(ts) != want {
			t.Fatalf("%s: Script differs from knftables:\n%s", tc.name, lineDiff(want, Script(ts)))
		}
		fake := knftables.NewFake("", "")
		if err := fake.Run(context.Background(), tx); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		first := fake.Dump()
		if err := fake.Run(context.Background(), knftablesTx(ts)); err != nil {
			t.Fatalf("%s: rerun: %v", tc.name, err)
		}
		if second := fake.Dump(); second != first {
			t.Fatalf("%s: rerun changed the tables:\n%s", tc.name, lineDiff(first, second))
		}
		del := fake.NewTransaction()
		for _, f := range families(ts) {
			del.Delete(&knftables.Table{Family: knftables.Family(NFTFamily(f)), Name: TableName})
		}
		if del.String() != DeleteScript(families(ts)...) {
			t.Fatalf("DeleteScript %q, knftables %q", DeleteScript(families(ts)...), del.String())
		}
		if err := fake.Run(context.Background(), del); err != nil {
			t.Fatalf("%s: delete: %v", tc.name, err)
		}
		if d := fake.Dump(); d != "" {
			t.Fatalf("%s: left after delete:\n%s", tc.name, d)
		}
	}
}

func families(ts []Table) []rules.Family {
	var out []rules.Family
	for _, t := range ts {
		out = append(out, t.Family)
	}
	return out
}

func TestIPv4OnlyHasNoIPv6Table(t *testing.T) {
	ts, err := Build(capture.Default())
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].Family != rules.IPv4 {
		t.Fatalf("an IPv4-only spec must program only ip meshcni, got %d tables", len(ts))
	}
	if tx := Script(ts); strings.Contains(tx, "ip6") {
		t.Fatalf("IPv6 in an IPv4-only transaction:\n%s", tx)
	}
}

func TestTranslateRejectsUnknown(t *testing.T) {
	for _, args := range [][]string{
		{"-p", "tcp", "-j", "LOG"},
		{"-m", "comment", "--comment", "x", "-j", "RETURN"},
		{"--dport", "80", "-j", "RETURN"},
		{"!", "-p", "tcp", "-j", "RETURN"},
		{"-p", "tcp", "-j", "TPROXY", "--on-port", "1", "--tproxy-mark", "1/0xff"},
		{"-p", "tcp"},
	} {
		if got, err := translate(rules.IPv4, rules.Rule{Table: "nat", Chain: "OUTPUT", Args: args}); err == nil {
			t.Errorf("%v: want an error, got %q", args, got)
		}
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct{ in, want string }{{"eth0", `"eth0"`}, {"eth+", `"eth*"`}, {"odd*", `"odd\*"`}} {
		if got := ifname(tc.in); got != tc.want {
			t.Errorf("ifname(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct{ table, chain, want string }{
		{"nat", "OUTPUT", "nat_output"}, {"nat", "ISTIO_INBOUND", "istio_inbound"},
		{"mangle", "ISTIO_INBOUND", "mangle_istio_inbound"}, {"mangle", "ISTIO_DIVERT", "istio_divert"},
		{"raw", "ISTIO_OUTPUT_DNS", "raw_istio_output_dns"}, {"nat", "ISTIO_OUTPUT_DNS", "istio_output_dns"},
	} {
		if got := ChainName(tc.table, tc.chain); got != tc.want {
			t.Errorf("ChainName(%s, %s) = %s, want %s", tc.table, tc.chain, got, tc.want)
		}
	}
}

func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("  want: " + wl + "\n  got:  " + gl + "\n")
		}
	}
	return b.String()
}
