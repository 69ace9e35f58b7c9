package capture

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func ptr[T any](v T) *T { return &v }

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestFromPod(t *testing.T) {
	cases := []struct {
		name  string
		ann   map[string]string
		proxy Proxy
		addrs []netip.Addr
		check func(t *testing.T, s Spec)
	}{
		{"defaults", nil, Proxy{}, nil, func(t *testing.T, s Spec) {
			if !s.InboundPorts.All || !s.OutboundCIDRs.All || s.Mode != Redirect {
				t.Errorf("want capture-all REDIRECT, got %+v", s)
			}
			if !slices.Equal(s.ExcludeInboundPorts, []uint16{15020, 15021, 15090}) {
				t.Errorf("proxy ports must be excluded inbound, got %v", s.ExcludeInboundPorts)
			}
			if !slices.Equal(s.ExcludeOutboundPorts, []uint16{15020}) {
				t.Errorf("Istio excludes 15020 outbound by default, got %v", s.ExcludeOutboundPorts)
			}
		}},
		{"tproxy and lists", map[string]string{
			AnnotationInterceptionMode:     "TPROXY",
			AnnotationIncludeInboundPorts:  "9080, 8080",
			AnnotationExcludeInboundPorts:  "7777,15090",
			AnnotationIncludeOutboundCIDRs: "10.96.0.0/12,fd00::/8",
			AnnotationExcludeOutboundCIDRs: "10.96.0.1",
			AnnotationIncludeOutboundPorts: "443",
			AnnotationExcludeOutboundPorts: "3306",
			AnnotationExcludeInterfaces:    "net1",
		}, Proxy{}, nil, func(t *testing.T, s Spec) {
			if s.Mode != TProxy {
				t.Errorf("mode %q", s.Mode)
			}
			if !slices.Equal(s.InboundPorts.List, []uint16{9080, 8080}) || s.InboundPorts.All {
				t.Errorf("inbound %v", s.InboundPorts)
			}
			if !slices.Equal(s.ExcludeInboundPorts, []uint16{7777, 15090, 15020, 15021}) {
				t.Errorf("exclude inbound %v", s.ExcludeInboundPorts)
			}
			want := []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("fd00::/8")}
			if !slices.Equal(s.OutboundCIDRs.List, want) {
				t.Errorf("outbound cidrs %v", s.OutboundCIDRs)
			}
			if !slices.Equal(s.ExcludeOutboundCIDRs, []netip.Prefix{netip.MustParsePrefix("10.96.0.1/32")}) {
				t.Errorf("bare address must become a /32, got %v", s.ExcludeOutboundCIDRs)
			}
			if !slices.Equal(s.ExcludeOutboundPorts, []uint16{3306}) || !slices.Equal(s.OutboundPorts, []uint16{443}) {
				t.Errorf("outbound ports %v / %v", s.OutboundPorts, s.ExcludeOutboundPorts)
			}
			if !slices.Equal(s.ExcludeInterfaces, []string{"net1"}) {
				t.Errorf("exclude interfaces %v", s.ExcludeInterfaces)
			}
		}},
		{"reroute wins over deprecated kubevirt", map[string]string{
			AnnotationKubevirtInterfaces: "old0",
			AnnotationRerouteInterfaces:  "new0,new1",
		}, Proxy{}, nil, func(t *testing.T, s Spec) {
			if !slices.Equal(s.RerouteInterfaces, []string{"new0", "new1"}) {
				t.Errorf("reroute %v", s.RerouteInterfaces)
			}
		}},
		{"kubevirt alone", map[string]string{AnnotationKubevirtInterfaces: "vm0"}, Proxy{}, nil, func(t *testing.T, s Spec) {
			if !slices.Equal(s.RerouteInterfaces, []string{"vm0"}) {
				t.Errorf("reroute %v", s.RerouteInterfaces)
			}
		}},
		{"proxy identity and env", nil, Proxy{
			UID: ptr[int64](2000), GID: ptr[int64](3000),
			Env: map[string]string{EnvDNSCapture: "true", EnvInvalidDrop: "1"},
		}, nil, func(t *testing.T, s Spec) {
			if !slices.Equal(s.ProxyUIDs, []uint32{2000}) || !slices.Equal(s.ProxyGIDs, []uint32{3000}) {
				t.Errorf("ids %v %v", s.ProxyUIDs, s.ProxyGIDs)
			}
			if !s.RedirectDNS || !s.CaptureAllDNS || !s.DropInvalid {
				t.Errorf("dns %v/%v drop %v", s.RedirectDNS, s.CaptureAllDNS, s.DropInvalid)
			}
		}},
		{"uid 0 keeps the default", nil, Proxy{UID: ptr[int64](0)}, nil, func(t *testing.T, s Spec) {
			if !slices.Equal(s.ProxyUIDs, []uint32{1337}) {
				t.Errorf("ids %v", s.ProxyUIDs)
			}
		}},
		{"ipv6 pod", nil, Proxy{}, addrs("fd00::5"), func(t *testing.T, s Spec) {
			if !s.IPv6 {
				t.Error("an IPv6 pod needs ip6tables rules")
			}
		}},
		{"dual stack env", nil, Proxy{Env: map[string]string{EnvDualStack: "true"}}, addrs("10.0.0.5", "fd00::5"), func(t *testing.T, s Spec) {
			if !s.IPv6 {
				t.Error("ISTIO_DUAL_STACK=true on a dual-stack pod needs ip6tables rules")
			}
		}},
		{"dual-stack pod without dual stack", nil, Proxy{}, addrs("fd00::5", "10.0.0.5"), func(t *testing.T, s Spec) {
			if s.IPv6 {
				t.Error("Istio programs IPv4 only for a dual-stack pod without ISTIO_DUAL_STACK")
			}
		}},
		{"dual stack env on an IPv4 pod", nil, Proxy{Env: map[string]string{EnvDualStack: "true"}}, addrs("10.0.0.5"), func(t *testing.T, s Spec) {
			if s.IPv6 {
				t.Error("dual stack without an IPv6 address programs no IPv6")
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := FromPod(Default(), tc.ann, tc.proxy, tc.addrs)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, s)
		})
	}
}

func TestFromPodRejectsBadInput(t *testing.T) {
	cases := []struct {
		ann     map[string]string
		wantKey string
		wantMsg string
	}{
		{ann: map[string]string{AnnotationInterceptionMode: "NONE"}, wantKey: AnnotationInterceptionMode, wantMsg: "REDIRECT or TPROXY"},
		{ann: map[string]string{AnnotationIncludeInboundPorts: "80,http"}, wantKey: AnnotationIncludeInboundPorts, wantMsg: `port "http"`},
		{ann: map[string]string{AnnotationExcludeInboundPorts: "70000"}, wantKey: AnnotationExcludeInboundPorts, wantMsg: "1-65535"},
		{ann: map[string]string{AnnotationExcludeOutboundPorts: "0"}, wantKey: AnnotationExcludeOutboundPorts, wantMsg: "1-65535"},
		{ann: map[string]string{AnnotationIncludeOutboundCIDRs: "10.0.0.0/33"}, wantKey: AnnotationIncludeOutboundCIDRs, wantMsg: "CIDR"},
		{ann: map[string]string{AnnotationExcludeOutboundCIDRs: "10.0.0.0/8 -j ACCEPT"}, wantKey: AnnotationExcludeOutboundCIDRs, wantMsg: "CIDR"},
		{ann: map[string]string{AnnotationExcludeInterfaces: "-j ACCEPT"}, wantKey: AnnotationExcludeInterfaces, wantMsg: "interface"},
		{ann: map[string]string{AnnotationExcludeInterfaces: "eth0 --dport"}, wantKey: AnnotationExcludeInterfaces, wantMsg: "invalid character"},
		{ann: map[string]string{AnnotationRerouteInterfaces: "averyveryverylongname"}, wantKey: AnnotationRerouteInterfaces, wantMsg: "1-15"},
	}
	for _, tc := range cases {
		_, err := FromPod(Default(), tc.ann, Proxy{}, nil)
		if err == nil {
			t.Errorf("%v: want an error", tc.ann)
			continue
		}
		if !strings.Contains(err.Error(), tc.wantMsg) {
			t.Errorf("%v: error %q does not say %q", tc.ann, err, tc.wantMsg)
		}
		var ae *AnnotationError
		if !errors.As(err, &ae) || ae.Key != tc.wantKey {
			t.Errorf("%v: error %q must name annotation %s", tc.ann, err, tc.wantKey)
		}
	}
}

func TestFromPodDoesNotAliasBase(t *testing.T) {
	base := Default()
	s, err := FromPod(base, map[string]string{AnnotationExcludeInboundPorts: "1"}, Proxy{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.ProxyUIDs[0] = 1
	if base.ProxyUIDs[0] != DefaultProxyUID || !slices.Equal(base.ExcludeInboundPorts, ProxyPorts) {
		t.Fatalf("FromPod shared slices with its base: %+v", base)
	}
}

func TestWildcards(t *testing.T) {
	p, err := ParsePorts(" * ")
	if err != nil || !p.All {
		t.Fatalf("ports *: %v %v", p, err)
	}
	c, err := ParseCIDRs("*")
	if err != nil || !c.All {
		t.Fatalf("cidrs *: %v %v", c, err)
	}
	if p, _ := ParsePorts(""); !p.Empty() {
		t.Fatalf("empty list must capture nothing, got %v", p)
	}
	if l, _ := ParsePortList("80,80,443"); !slices.Equal(l, []uint16{80, 443}) {
		t.Fatalf("duplicates must collapse, got %v", l)
	}
}
