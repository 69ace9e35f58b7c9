package capture

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"unicode"
)

// FuzzParsers drives each list parser (ports, CIDRs, interfaces, IDs) and
// the mode parser with the same input. Whatever one accepts is bounded,
// well-formed and survives a round trip through its own rendering;
// whatever it refuses gets a short, one-line message.
func FuzzParsers(f *testing.F) {
	for _, s := range []string{
		"*", "80,443", " 1 , 2 ", "0", "65536", "10.0.0.0/8,fd00::/8", "10.0.0.1", "::ffff:10.0.0.0/104",
		"fe80::1%eth0", "eth0,net1", "-j", "eth0 --dport", "REDIRECT", "TPROXY", " TPROXY\n", "1337,1338",
		"4294967296", "８０", "a#b", strings.Repeat("1,", 300),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		short := func(what string, err error) {
			if err == nil {
				return
			}
			msg := err.Error()
			if len(msg) > 256 || strings.IndexFunc(msg, unicode.IsControl) >= 0 {
				t.Fatalf("%s(%q): message %q is long or not one line", what, s, msg)
			}
		}

		ports, err := ParsePortList(s)
		short("ParsePortList", err)
		if err == nil {
			if slices.Contains(ports, 0) {
				t.Fatalf("ParsePortList(%q) = %v", s, ports)
			}
			if again, err := ParsePortList(joinPorts(ports)); err != nil || !slices.Equal(again, ports) {
				t.Fatalf("ports %v do not round-trip: %v %v", ports, again, err)
			}
		}

		cidrs, err := ParseCIDRList(s)
		short("ParseCIDRList", err)
		if err == nil {
			for _, p := range cidrs {
				if !p.IsValid() || p != p.Masked() || p.Addr().Zone() != "" {
					t.Fatalf("ParseCIDRList(%q) gave %v", s, p)
				}
				if again, err := netip.ParsePrefix(p.String()); err != nil || again != p {
					t.Fatalf("prefix %v does not round-trip: %v", p, err)
				}
			}
		}

		names, err := ParseInterfaces(s)
		short("ParseInterfaces", err)
		if err == nil {
			for _, n := range names {
				if len(n) < 1 || len(n) > 15 || n[0] == '-' || n[0] == '!' || strings.ContainsAny(n, " \t\r\n\"'\\,/:") {
					t.Fatalf("ParseInterfaces(%q) accepted %q", s, n)
				}
				for _, r := range n {
					if r <= ' ' || r > '~' {
						t.Fatalf("ParseInterfaces(%q) accepted %q with %q", s, n, r)
					}
				}
			}
		}

		_, err = ParseIDList(s)
		short("ParseIDList", err)

		m, err := ParseMode(s)
		short("ParseMode", err)
		if err == nil && m != Redirect && m != TProxy {
			t.Fatalf("ParseMode(%q) = %q", s, m)
		}
	})
}
