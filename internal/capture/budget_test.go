package capture_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/rules"
)

// randomSpec draws a spec from every setting that changes how many rules
// Build makes, so that the count is checked on their combinations.
func randomSpec(r *rand.Rand) capture.Spec {
	s := capture.Default()
	pick := func(n int) int { return r.IntN(n + 1) }
	if r.IntN(2) == 0 {
		s.Mode = capture.TProxy
	}
	s.IPv6 = r.IntN(2) == 0
	s.DropInvalid = r.IntN(2) == 0
	s.RedirectDNS = r.IntN(2) == 0
	s.CaptureAllDNS = r.IntN(2) == 0
	prefixes := []string{"10.0.0.0/8", "fd00::/8", "127.0.0.1/32", "::1/128", "192.168.0.0/16", "2001:db8::/32"}
	for range pick(4) {
		s.DNSServers = append(s.DNSServers, netip.MustParsePrefix(prefixes[r.IntN(len(prefixes))]).Addr())
	}
	switch r.IntN(3) {
	case 0:
		s.InboundPorts = capture.Ports{}
	case 1:
		for range pick(4) {
			s.InboundPorts.List = append(s.InboundPorts.List, uint16(1+r.IntN(60000)))
		}
		s.InboundPorts.All = false
	}
	if r.IntN(2) == 0 {
		s.OutboundCIDRs = capture.CIDRs{}
		for range pick(5) {
			s.OutboundCIDRs.List = append(s.OutboundCIDRs.List, netip.MustParsePrefix(prefixes[r.IntN(len(prefixes))]))
		}
	}
	for range pick(4) {
		s.ExcludeOutboundCIDRs = append(s.ExcludeOutboundCIDRs, netip.MustParsePrefix(prefixes[r.IntN(len(prefixes))]))
	}
	for range pick(3) {
		s.ExcludeInboundPorts = append(s.ExcludeInboundPorts, uint16(1+r.IntN(60000)))
	}
	for range pick(3) {
		s.OutboundPorts = append(s.OutboundPorts, uint16(1+r.IntN(60000)))
	}
	for range pick(3) {
		s.ExcludeOutboundPorts = append(s.ExcludeOutboundPorts, uint16(1+r.IntN(60000)))
	}
	for i := range pick(3) {
		s.ExcludeInterfaces = append(s.ExcludeInterfaces, fmt.Sprintf("net%d", i))
	}
	for i := range pick(3) {
		s.RerouteInterfaces = append(s.RerouteInterfaces, fmt.Sprintf("vm%d", i))
	}
	for range pick(2) {
		s.ProxyUIDs = append(s.ProxyUIDs, uint32(r.IntN(5000)))
	}
	for range pick(2) {
		s.ProxyGIDs = append(s.ProxyGIDs, uint32(r.IntN(5000)))
	}
	return s
}

// RuleCount is what lets the budget refuse a spec before building it; it
// must be exactly what Build makes, or the budget is not the one measured.
func TestRuleCountMatchesBuild(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		s := randomSpec(r)
		built := 0
		for _, rs := range rules.Build(s).Sets {
			built += len(rs.Rules)
		}
		if got := s.RuleCount(); got != built {
			t.Fatalf("spec %d: RuleCount %d, Build made %d rules: %+v", i, got, built, s)
		}
	}
	if n := capture.Default().RuleCount(); n != 20 {
		t.Errorf("a default pod: %d rules, the budget's comment says 20", n)
	}
}

func podFromAnnotations(t *testing.T, ann map[string]string, addrs ...string) (capture.Spec, error) {
	t.Helper()
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	return capture.FromPod(capture.Default(), ann, capture.Proxy{}, as)
}

func cidrList(n int, v6 bool) string {
	var l []string
	for i := range n {
		if v6 {
			l = append(l, fmt.Sprintf("fd00:%x::/32", i))
		} else {
			l = append(l, fmt.Sprintf("10.%d.%d.0/24", i/256, i%256))
		}
	}
	return strings.Join(l, ",")
}

// Istio bounds no list: a pod with 257 CIDRs, or 257 ports, that Istio's
// CNI plug-in accepts must start under meshcni too.
func TestIstioSizedListsAreAccepted(t *testing.T) {
	var ports []string
	for i := range 257 {
		ports = append(ports, fmt.Sprint(20000+i))
	}
	s, err := podFromAnnotations(t, map[string]string{
		capture.AnnotationExcludeOutboundCIDRs: cidrList(257, false),
		capture.AnnotationIncludeOutboundCIDRs: cidrList(257, false),
		capture.AnnotationExcludeInboundPorts:  strings.Join(ports, ","),
	}, "10.0.0.5")
	if err != nil {
		t.Fatalf("257 items per list: %v", err)
	}
	if len(s.ExcludeOutboundCIDRs) != 257 || len(s.OutboundCIDRs.List) != 257 {
		t.Fatalf("lists cut: %d %d", len(s.ExcludeOutboundCIDRs), len(s.OutboundCIDRs.List))
	}
}

// The rule-multiplying pod of the hardening review (4.7 KB of annotations,
// 66,067 rules; 223 MB of heap and 6 s for one nftables ADD): 256 include
// CIDRs times 256 rerouted interfaces. FromPod refuses it before any rule
// is built, in milliseconds and a few hundred KB, and the message names
// the annotations and the budget.
func TestRuleMultiplyingPodIsRefused(t *testing.T) {
	var nics []string
	for i := range 256 {
		nics = append(nics, fmt.Sprintf("v%x", i))
	}
	ann := map[string]string{
		capture.AnnotationIncludeOutboundCIDRs: cidrList(256, false),
		capture.AnnotationRerouteInterfaces:    strings.Join(nics, ","),
	}
	size := 0
	for k, v := range ann {
		size += len(k) + len(v)
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	_, err := podFromAnnotations(t, ann, "10.0.0.5")
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	if err == nil {
		t.Fatal("a pod of 66,067 rules was accepted")
	}
	for _, want := range []string{"66067 rules", capture.AnnotationIncludeOutboundCIDRs + " (256 items)",
		capture.AnnotationRerouteInterfaces + " (256 items)", fmt.Sprintf("budget of %d", capture.RuleBudget)} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not say %q", err, want)
		}
	}
	if allocated > 1<<20 || took > time.Second {
		t.Errorf("refusing %d bytes of annotations took %v and %d bytes of heap", size, took, allocated)
	}
	t.Logf("%d bytes of annotations refused in %v, %d bytes allocated: %v", size, took, allocated, err)
}

// EnableIPv6 as Istio's getLocalIP decides, over address orders and the
// dual-stack flag.
func TestEnableIPv6(t *testing.T) {
	for _, tc := range []struct {
		addrs     []string
		dualStack bool
		want      bool
	}{
		{nil, false, false},
		{nil, true, false},
		{[]string{"10.0.0.5"}, false, false},
		{[]string{"10.0.0.5"}, true, false},
		{[]string{"fd00::5"}, false, true},
		{[]string{"fd00::5"}, true, true},
		// Dual stack, either order: the kernel lists IPv4 first, so
		// without the flag the IPv4 address decides.
		{[]string{"10.0.0.5", "fd00::5"}, false, false},
		{[]string{"fd00::5", "10.0.0.5"}, false, false},
		{[]string{"10.0.0.5", "fd00::5"}, true, true},
		{[]string{"fd00::5", "10.0.0.5"}, true, true},
		// Loopback and link-local addresses are not the pod's.
		{[]string{"fe80::1", "::1", "127.0.0.1"}, true, false},
		{[]string{"fe80::1", "10.0.0.5"}, true, false},
		{[]string{"169.254.1.1", "fd00::5"}, false, true},
		{[]string{"127.0.0.1", "fd00::5"}, false, true},
		// An IPv4-mapped address is IPv4, as Istio unmaps it.
		{[]string{"::ffff:10.0.0.5", "fd00::5"}, false, false},
	} {
		var as []netip.Addr
		for _, a := range tc.addrs {
			as = append(as, netip.MustParseAddr(a))
		}
		if got := capture.EnableIPv6(as, tc.dualStack); got != tc.want {
			t.Errorf("EnableIPv6(%v, dual stack %v) = %v, want %v", tc.addrs, tc.dualStack, got, tc.want)
		}
	}
}

// Istio's CNI plug-in reads ISTIO_META_DNS_CAPTURE, INVALID_DROP and
// ISTIO_DUAL_STACK with strconv.ParseBool and takes an error as false
// (cni/pkg/plugin/sidecar_redirect.go): "" (also what a variable set
// through valueFrom reads as) is false, not a failed ADD.
func TestProxyFlagsAsIstioReadsThem(t *testing.T) {
	for _, tc := range []struct {
		value string
		want  bool
		warn  bool
	}{
		{"true", true, false}, {"1", true, false}, {"t", true, false}, {"T", true, false}, {"TRUE", true, false}, {"True", true, false},
		{"false", false, false}, {"0", false, false}, {"F", false, false},
		{"", false, true}, {"yes", false, true}, {" true", false, true}, {"tRuE", false, true},
	} {
		for _, name := range []string{capture.EnvDNSCapture, capture.EnvInvalidDrop, capture.EnvDualStack} {
			proxy := capture.Proxy{Env: map[string]string{name: tc.value}}
			s, err := capture.FromPod(capture.Default(), nil, proxy, []netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")})
			if err != nil {
				t.Fatalf("%s=%q: %v", name, tc.value, err)
			}
			got := map[string]bool{capture.EnvDNSCapture: s.RedirectDNS, capture.EnvInvalidDrop: s.DropInvalid, capture.EnvDualStack: s.IPv6}[name]
			if got != tc.want {
				t.Errorf("%s=%q read as %v, want %v", name, tc.value, got, tc.want)
			}
			if w := proxy.FlagWarnings(); (len(w) > 0) != tc.warn {
				t.Errorf("%s=%q: warnings %q, want a warning: %v", name, tc.value, w, tc.warn)
			}
		}
	}
	// ISTIO_AGENT_DUAL_STACK is not what Istio's CNI plug-in reads.
	s, _ := capture.FromPod(capture.Default(), nil, capture.Proxy{Env: map[string]string{"ISTIO_AGENT_DUAL_STACK": "true"}},
		[]netip.Addr{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")})
	if s.IPv6 {
		t.Error("ISTIO_AGENT_DUAL_STACK turned IPv6 on; Istio's CNI plug-in reads ISTIO_DUAL_STACK only")
	}
}
