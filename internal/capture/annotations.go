package capture

import (
	"fmt"
	"math"
	"net/netip"
	"sort"
	"strconv"
)

// Istio's pod annotations and proxy environment that shape capture.
const (
	AnnotationInject               = "sidecar.istio.io/inject"
	AnnotationInterceptionMode     = "sidecar.istio.io/interceptionMode"
	AnnotationIncludeOutboundCIDRs = "traffic.sidecar.istio.io/includeOutboundIPRanges"
	AnnotationExcludeOutboundCIDRs = "traffic.sidecar.istio.io/excludeOutboundIPRanges"
	AnnotationIncludeInboundPorts  = "traffic.sidecar.istio.io/includeInboundPorts"
	AnnotationExcludeInboundPorts  = "traffic.sidecar.istio.io/excludeInboundPorts"
	AnnotationIncludeOutboundPorts = "traffic.sidecar.istio.io/includeOutboundPorts"
	AnnotationExcludeOutboundPorts = "traffic.sidecar.istio.io/excludeOutboundPorts"
	AnnotationExcludeInterfaces    = "traffic.sidecar.istio.io/excludeInterfaces"
	AnnotationRerouteInterfaces    = "istio.io/reroute-virtual-interfaces"
	// AnnotationKubevirtInterfaces is deprecated; the reroute annotation wins.
	AnnotationKubevirtInterfaces = "traffic.sidecar.istio.io/kubevirtInterfaces"

	EnvDNSCapture  = "ISTIO_META_DNS_CAPTURE"
	EnvInvalidDrop = "INVALID_DROP"
	EnvDualStack   = "ISTIO_DUAL_STACK"
)

// Proxy is what the pod's istio-proxy container says about itself.
type Proxy struct {
	UID *int64
	GID *int64
	Env map[string]string
}

// annotationParsers is Istio's (annotation, validator) registry, each entry
// writing its typed value into the spec. Absent annotations keep the base.
var annotationParsers = []struct {
	key   string
	apply func(*Spec, string) error
}{
	{AnnotationInterceptionMode, func(s *Spec, v string) (err error) { s.Mode, err = ParseMode(v); return }},
	{AnnotationIncludeOutboundCIDRs, func(s *Spec, v string) (err error) { s.OutboundCIDRs, err = ParseCIDRs(v); return }},
	{AnnotationExcludeOutboundCIDRs, func(s *Spec, v string) (err error) {
		s.ExcludeOutboundCIDRs, err = ParseCIDRList(v)
		return
	}},
	{AnnotationIncludeInboundPorts, func(s *Spec, v string) (err error) { s.InboundPorts, err = ParsePorts(v); return }},
	{AnnotationExcludeInboundPorts, func(s *Spec, v string) (err error) {
		s.ExcludeInboundPorts, err = ParsePortList(v)
		return
	}},
	{AnnotationIncludeOutboundPorts, func(s *Spec, v string) (err error) { s.OutboundPorts, err = ParsePortList(v); return }},
	{AnnotationExcludeOutboundPorts, func(s *Spec, v string) (err error) {
		s.ExcludeOutboundPorts, err = ParsePortList(v)
		return
	}},
	{AnnotationExcludeInterfaces, func(s *Spec, v string) (err error) {
		s.ExcludeInterfaces, err = ParseInterfaces(v)
		return
	}},
	{AnnotationKubevirtInterfaces, func(s *Spec, v string) (err error) {
		s.RerouteInterfaces, err = ParseInterfaces(v)
		return
	}},
	// After kubevirtInterfaces, so that it wins when both are set.
	{AnnotationRerouteInterfaces, func(s *Spec, v string) (err error) {
		s.RerouteInterfaces, err = ParseInterfaces(v)
		return
	}},
}

// AnnotationError names the annotation and value that could not be used.
type AnnotationError struct {
	Key, Value string
	Err        error
}

func (e *AnnotationError) Error() string {
	return fmt.Sprintf("annotation %s=%s: %v", e.Key, quote(e.Value), e.Err)
}

func (e *AnnotationError) Unwrap() error { return e.Err }

// FromPod derives a pod's spec from base (the node's defaults), its
// annotations and its proxy container, the way Istio's CNI plug-in does
// (cni/pkg/plugin/sidecar_redirect.go, NewRedirect). addrs are the pod's
// addresses, from which EnableIPv6 decides IPv6. A spec over RuleBudget is
// refused here, before any rule is built, so that every caller honours it.
func FromPod(base Spec, annotations map[string]string, proxy Proxy, addrs []netip.Addr) (Spec, error) {
	s := base.clone()
	for _, p := range annotationParsers {
		v, ok := annotations[p.key]
		if !ok {
			continue
		}
		if err := p.apply(&s, v); err != nil {
			return Spec{}, &AnnotationError{Key: p.key, Value: v, Err: err}
		}
	}
	// The proxy's own ports stay reachable whatever the annotation says.
	s.ExcludeInboundPorts = mergePorts(s.ExcludeInboundPorts, ProxyPorts)

	for _, id := range []struct {
		field string
		v     *int64
		dst   *[]uint32
	}{{"runAsUser", proxy.UID, &s.ProxyUIDs}, {"runAsGroup", proxy.GID, &s.ProxyGIDs}} {
		if id.v == nil || *id.v == 0 {
			continue
		}
		// What the API server admits; anything else would wrap around
		// in uint32 (-1 became 4294967295, 2^32+1337 became 1337).
		if *id.v < 0 || *id.v > math.MaxInt32 {
			return Spec{}, fmt.Errorf("istio-proxy %s %d: must be 0-%d", id.field, *id.v, math.MaxInt32)
		}
		*id.dst = []uint32{uint32(*id.v)}
	}
	s.RedirectDNS = proxy.Flag(EnvDNSCapture)
	s.DropInvalid = proxy.Flag(EnvInvalidDrop)
	// The plug-in cannot read the pod's resolv.conf, so DNS capture
	// captures every destination on port 53, as Istio's CNI does.
	if s.RedirectDNS {
		s.CaptureAllDNS = true
	}
	s.IPv6 = EnableIPv6(addrs, proxy.Flag(EnvDualStack))
	if err := s.Validate(); err != nil {
		return Spec{}, err
	}
	if n := s.RuleCount(); n > RuleBudget {
		return Spec{}, budgetError(n, annotations)
	}
	return s, nil
}

// proxyFlags are the proxy's environment variables Istio's CNI plug-in
// reads as booleans. It does not read ISTIO_AGENT_DUAL_STACK.
var proxyFlags = []string{EnvDNSCapture, EnvInvalidDrop, EnvDualStack}

// Flag reads a proxy variable as Istio's CNI plug-in does: strconv.ParseBool
// of the value as written, and anything it refuses ("", a value from
// valueFrom, "yes", " true") is false. Istio logs a warning and carries on;
// FlagWarnings says the same for meshcni's log.
func (p Proxy) Flag(name string) bool {
	b, _ := strconv.ParseBool(p.Env[name])
	return b
}

// FlagWarnings names the proxy flag variables that are set but read as
// false because strconv.ParseBool refuses them.
func (p Proxy) FlagWarnings() []string {
	var out []string
	for _, name := range proxyFlags {
		v, ok := p.Env[name]
		if !ok {
			continue
		}
		if _, err := strconv.ParseBool(v); err != nil {
			out = append(out, fmt.Sprintf("istio-proxy env %s=%s is not a boolean (or is set through valueFrom); read as false, as Istio does", name, quote(v)))
		}
	}
	return out
}

// KnownAnnotations lists the annotations FromPod reads, sorted.
func KnownAnnotations() []string {
	var out []string
	for _, p := range annotationParsers {
		out = append(out, p.key)
	}
	sort.Strings(out)
	return out
}

func mergePorts(a, b []uint16) []uint16 {
	out := append([]uint16(nil), a...)
	for _, p := range b {
		found := false
		for _, q := range out {
			found = found || p == q
		}
		if !found {
			out = append(out, p)
		}
	}
	return out
}

func (s Spec) clone() Spec {
	c := s
	c.ProxyUIDs = append([]uint32(nil), s.ProxyUIDs...)
	c.ProxyGIDs = append([]uint32(nil), s.ProxyGIDs...)
	c.InboundPorts.List = append([]uint16(nil), s.InboundPorts.List...)
	c.ExcludeInboundPorts = append([]uint16(nil), s.ExcludeInboundPorts...)
	c.OutboundCIDRs.List = append(c.OutboundCIDRs.List[:0:0], s.OutboundCIDRs.List...)
	c.ExcludeOutboundCIDRs = append(c.ExcludeOutboundCIDRs[:0:0], s.ExcludeOutboundCIDRs...)
	c.OutboundPorts = append([]uint16(nil), s.OutboundPorts...)
	c.ExcludeOutboundPorts = append([]uint16(nil), s.ExcludeOutboundPorts...)
	c.ExcludeInterfaces = append([]string(nil), s.ExcludeInterfaces...)
	c.RerouteInterfaces = append([]string(nil), s.RerouteInterfaces...)
	c.DNSServers = append(c.DNSServers[:0:0], s.DNSServers...)
	return c
}
