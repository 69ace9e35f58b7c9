package capture

import (
	"strings"
	"testing"
)

// FuzzFromPod feeds arbitrary annotation values through every parser. It
// must never panic, and whatever it accepts must be safe to hand to
// iptables: no whitespace, no option-looking token.
func FuzzFromPod(f *testing.F) {
	keys := KnownAnnotations()
	for _, seed := range []string{"*", "80,443", "10.0.0.0/8,fd00::/8", "eth0", "TPROXY", "", " , ,", "-j ACCEPT", "1,2,3,65535", "::1", "10.0.0.1"} {
		for i := range keys {
			f.Add(uint8(i), seed)
		}
	}
	f.Fuzz(func(t *testing.T, key uint8, value string) {
		k := keys[int(key)%len(keys)]
		s, err := FromPod(Default(), map[string]string{k: value}, Proxy{}, nil)
		if err != nil {
			if !strings.Contains(err.Error(), k) {
				t.Fatalf("error %q does not name annotation %s", err, k)
			}
			return
		}
		for _, name := range append(append([]string(nil), s.ExcludeInterfaces...), s.RerouteInterfaces...) {
			if strings.ContainsAny(name, " \t\n") || strings.HasPrefix(name, "-") || strings.HasPrefix(name, "!") {
				t.Fatalf("accepted unsafe interface %q", name)
			}
		}
		for _, p := range append(s.OutboundCIDRs.List, s.ExcludeOutboundCIDRs...) {
			if !p.IsValid() || strings.ContainsAny(p.String(), " \t\n") {
				t.Fatalf("accepted invalid prefix %v", p)
			}
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("FromPod returned a spec that does not validate: %v", err)
		}
	})
}

func FuzzParsePorts(f *testing.F) {
	for _, s := range []string{"*", "80", "80,443", "0", "65536", " 1 , 2 ", "-1", "1e3", "0x50"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePorts(s)
		if err != nil {
			return
		}
		for _, port := range p.List {
			if port == 0 {
				t.Fatalf("accepted port 0 from %q", s)
			}
		}
	})
}
