package rules

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshcni/meshcni/internal/capture"
)

var refresh = flag.Bool("refresh-golden", os.Getenv("REFRESH_GOLDEN") == "true", "rewrite golden files")

func prefixes(s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// goldenCases are the settings of Istio's own golden tests, so that a diff
// against istio-iptables for the same flags is a diff of one file each.
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

func render(sets []Ruleset) string {
	var b strings.Builder
	for _, rs := range sets {
		b.WriteString("# " + rs.Family.String() + " restore\n" + rs.Restore())
	}
	for _, rs := range sets {
		b.WriteString("# " + rs.Family.String() + " cleanup\n" + rs.Cleanup())
	}
	return b.String()
}

func TestBuildGolden(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.name, func(t *testing.T) {
			spec := capture.Default()
			tc.mod(&spec)
			if err := spec.Validate(); err != nil {
				t.Fatalf("case spec invalid: %v", err)
			}
			got := render(Build(spec))
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
			b.WriteString("line " + itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl + "\n")
		}
	}
	return b.String()
}
