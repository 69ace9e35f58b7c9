package capture

import "net/netip"

// EnableIPv6 is Istio's decision to program IPv6 (ip6tables) for a pod, made
// once for the plug-in, repair, verify and init mode. addrs are the pod's
// addresses in any order; dualStack is ISTIO_DUAL_STACK on the proxy (the
// CNI plug-in) or --dual-stack (istio-iptables).
//
// Istio decides in getLocalIP, tools/istio-iptables/pkg/config/config.go
// (istio/istio; the CNI plug-in calls it through FillConfigFromEnvironment
// in the pod's netns, cni/pkg/plugin/sidecar_iptables_linux.go). It walks
// net.InterfaceAddrs, skipping loopback and link-local addresses: without
// dual stack the first address decides; with dual stack, any IPv6 address
// turns IPv6 on. net.InterfaceAddrs returns the kernel's RTM_GETADDR dump,
// in which every IPv4 address comes before any IPv6 one (the dump walks
// the families in order, AF_INET before AF_INET6), so "the first address"
// is IPv4 whenever the pod has one, whatever the order of prevResult or
// status.podIPs. TestKernelListsIPv4First checks that premise in a real
// netns. The result: a dual-stack pod without dual stack gets IPv4 rules
// only, as with Istio, where Envoy has no IPv6 listener to capture to.
func EnableIPv6(addrs []netip.Addr, dualStack bool) bool {
	var v4, v6 bool
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
			continue
		}
		if a.Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	if dualStack {
		return v6
	}
	return v6 && !v4
}
