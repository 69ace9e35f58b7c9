//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
)

// Where a probe starts: the app in the pod (root, so captured), the proxy
// in the pod (uid 1337, never captured), or the peer across the veth.
const (
	fromApp   = "app"
	fromProxy = "proxy"
	fromPeer  = "peer"
)

// probe is one connection (or datagram) and where it must land: the name
// of a server started by startServers ("pod:15001", "peer:8080").
type probe struct {
	from string
	udp  bool
	to   string
	want string
	// tproxy: the connection is delivered without NAT, so the accepted
	// socket's local address is the original destination.
	tproxy bool
}

func (p probe) String() string {
	proto := "tcp"
	if p.udp {
		proto = "udp"
	}
	return fmt.Sprintf("%s %s -> %s", p.from, proto, p.to)
}

var (
	podPorts  = []uint16{15001, 15006, 9080, 9081, 15020, 15021, 15090}
	peerPorts = []uint16{8080, 3306, 15020}
)

// startServers listens on every port a probe may land on, IPv4 and IPv6:
// the proxy's 15001/15006 (15006 transparent in TPROXY mode), the pod's
// app and status ports, the peer's services; UDP 15053 in the pod
// (istio-agent's DNS) and 53 in the peer.
func startServers(t *testing.T, tp *topology, spec capture.Spec) map[string]*server {
	t.Helper()
	servers := map[string]*server{}
	tcp := func(n ns.NetNS, where string, port uint16, transparent bool) {
		s := newServer(where + ":" + strconv.Itoa(int(port)))
		s.listenTCP(t, n, fmt.Sprintf("0.0.0.0:%d", port), transparent)
		s.listenTCP(t, n, fmt.Sprintf("[::]:%d", port), transparent)
		servers[s.name] = s
	}
	for _, p := range podPorts {
		tcp(tp.pod, "pod", p, p == spec.InboundCapturePort && spec.Mode == capture.TProxy)
	}
	for _, p := range peerPorts {
		tcp(tp.peer, "peer", p, false)
	}
	dns := newServer("pod:15053/udp")
	dns.listenUDP(t, tp.pod, "0.0.0.0:15053")
	servers[dns.name] = dns
	upstream := newServer("peer:53/udp")
	upstream.listenUDP(t, tp.peer, "0.0.0.0:53")
	servers[upstream.name] = upstream
	return servers
}

func (p probe) run(t *testing.T, tp *topology, servers map[string]*server) {
	t.Helper()
	srv := servers[p.want]
	if srv == nil {
		t.Fatalf("%s: no server %q", p, p.want)
	}
	n := tp.pod
	if p.from == fromPeer {
		n = tp.peer
	}
	if p.udp {
		var err error
		if p.from == fromProxy {
			_, err = dialAs(t, n, capture.DefaultProxyUID, "udp", p.to)
		} else {
			err = sendUDP(n, p.to)
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		srv.next(t)
		return
	}

	var landed string
	var err error
	if p.from == fromProxy {
		landed, err = dialAs(t, n, capture.DefaultProxyUID, "tcp", p.to)
	} else {
		landed, err = dialTCP(n, p.to)
	}
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if landed != p.want {
		t.Fatalf("%s: landed on %s, want %s", p, landed, p.want)
	}
	l := srv.next(t)
	dst := netip.MustParseAddrPort(p.to)
	switch {
	case p.tproxy || strings.HasSuffix(p.want, ":"+strconv.Itoa(int(dst.Port()))):
		// Not translated: TPROXY delivery, or not captured at all.
		if l.local != dst {
			t.Errorf("%s: accepted socket's local address %v, want the original destination %v", p, l.local, dst)
		}
	default:
		if l.origErr != nil || l.origDst != dst {
			t.Errorf("%s: SO_ORIGINAL_DST = %v (%v), want %v", p, l.origDst, l.origErr, dst)
		}
	}
}

func hostPort(host string, port int) string {
	return netip.AddrPortFrom(netip.MustParseAddr(host), uint16(port)).String()
}

// redirectCases are capture.Default() variants and what each must do to
// real connections.
var redirectCases = []struct {
	name   string
	mod    func(*capture.Spec)
	probes []probe
}{
	{"defaults", nil, []probe{
		{from: fromApp, to: hostPort(peer4, 8080), want: "pod:15001"},
		{from: fromApp, to: hostPort(peer4b, 3306), want: "pod:15001"},
		{from: fromProxy, to: hostPort(peer4, 8080), want: "peer:8080"},
		{from: fromPeer, to: hostPort(pod4, 9080), want: "pod:15006"},
		{from: fromPeer, to: hostPort(pod4, 15020), want: "pod:15020"},
		{from: fromPeer, to: hostPort(pod4, 15021), want: "pod:15021"},
		{from: fromPeer, to: hostPort(pod4, 15090), want: "pod:15090"},
		// localhost and the app's own IP are not captured for the app...
		{from: fromApp, to: hostPort("127.0.0.1", 9080), want: "pod:9080"},
		{from: fromApp, to: hostPort(pod4, 9080), want: "pod:9080"},
		// ...but the proxy calling the pod IP goes to inbound (what
		// validation relies on).
		{from: fromProxy, to: hostPort(pod4, 9080), want: "pod:15006"},
		{from: fromApp, to: hostPort(peer4, 15020), want: "peer:15020"},
	}},
	{"excluded-outbound-ports", func(s *capture.Spec) { s.ExcludeOutboundPorts = []uint16{15020, 3306} }, []probe{
		{from: fromApp, to: hostPort(peer4, 3306), want: "peer:3306"},
		{from: fromApp, to: hostPort(peer4, 8080), want: "pod:15001"},
	}},
	{"excluded-outbound-cidr", func(s *capture.Spec) {
		s.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix(peer4 + "/32")}
	}, []probe{
		{from: fromApp, to: hostPort(peer4, 8080), want: "peer:8080"},
		{from: fromApp, to: hostPort(peer4b, 8080), want: "pod:15001"},
	}},
	{"included-outbound-cidr", func(s *capture.Spec) {
		s.OutboundCIDRs = capture.CIDRs{List: []netip.Prefix{netip.MustParsePrefix("10.248.1.0/24")}}
	}, []probe{
		{from: fromApp, to: hostPort(peer4b, 8080), want: "pod:15001"},
		{from: fromApp, to: hostPort(peer4, 8080), want: "peer:8080"},
	}},
	{"included-outbound-ports", func(s *capture.Spec) {
		s.OutboundCIDRs = capture.CIDRs{}
		s.OutboundPorts = []uint16{8080}
	}, []probe{
		{from: fromApp, to: hostPort(peer4, 8080), want: "pod:15001"},
		{from: fromApp, to: hostPort(peer4, 3306), want: "peer:3306"},
	}},
	{"included-inbound-ports", func(s *capture.Spec) { s.InboundPorts = capture.Ports{List: []uint16{9080}} }, []probe{
		{from: fromPeer, to: hostPort(pod4, 9080), want: "pod:15006"},
		{from: fromPeer, to: hostPort(pod4, 9081), want: "pod:9081"},
	}},
	{"no-inbound-capture", func(s *capture.Spec) { s.InboundPorts = capture.Ports{} }, []probe{
		{from: fromPeer, to: hostPort(pod4, 9080), want: "pod:9080"},
		{from: fromApp, to: hostPort(peer4, 8080), want: "pod:15001"},
	}},
	{"tproxy", func(s *capture.Spec) { s.Mode = capture.TProxy }, []probe{
		{from: fromPeer, to: hostPort(pod4, 9080), want: "pod:15006", tproxy: true},
		{from: fromPeer, to: hostPort(pod4, 15021), want: "pod:15021"},
		{from: fromApp, to: hostPort(peer4, 8080), want: "pod:15001"},
		{from: fromProxy, to: hostPort(peer4, 8080), want: "peer:8080"},
	}},
	{"ipv6", func(s *capture.Spec) { s.IPv6 = true }, []probe{
		{from: fromApp, to: hostPort(peer6, 8080), want: "pod:15001"},
		{from: fromProxy, to: hostPort(peer6, 8080), want: "peer:8080"},
		{from: fromPeer, to: hostPort(pod6, 9080), want: "pod:15006"},
		{from: fromPeer, to: hostPort(pod6, 15090), want: "pod:15090"},
		{from: fromApp, to: hostPort("::1", 9080), want: "pod:9080"},
		{from: fromApp, to: hostPort(peer4, 8080), want: "pod:15001"},
	}},
	{"ipv6-tproxy", func(s *capture.Spec) { s.IPv6 = true; s.Mode = capture.TProxy }, []probe{
		{from: fromPeer, to: hostPort(pod6, 9080), want: "pod:15006", tproxy: true},
		{from: fromPeer, to: hostPort(pod4, 9080), want: "pod:15006", tproxy: true},
		{from: fromApp, to: hostPort(peer6, 8080), want: "pod:15001"},
	}},
	{"dns-capture-all", func(s *capture.Spec) { s.RedirectDNS = true; s.CaptureAllDNS = true }, []probe{
		{from: fromApp, udp: true, to: hostPort(peer4, 53), want: "pod:15053/udp"},
		{from: fromProxy, udp: true, to: hostPort(peer4, 53), want: "peer:53/udp"},
		{from: fromApp, to: hostPort(peer4, 8080), want: "pod:15001"},
	}},
}

// backends are the ways a node may program pods: the two iptables
// implementations and meshcni's native nftables tables. Every socket
// proof runs against each.
var backends = []netfilter.Backend{netfilter.Legacy, netfilter.NFT, netfilter.Nftables}

// TestRedirect applies each case in a pod netns, with each backend, and
// proves with real sockets where connections land.
func TestRedirect(t *testing.T) {
	requireRoot(t)
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			a := netfilter.New(netfilter.Options{Backend: backend, LockDir: t.TempDir()})
			for _, tc := range redirectCases {
				t.Run(tc.name, func(t *testing.T) {
					spec := capture.Default()
					if tc.mod != nil {
						tc.mod(&spec)
					}
					tp := newTopology(t)
					servers := startServers(t, tp, spec)
					if err := a.Apply(context.Background(), tp.pod.Path(), spec); err != nil {
						t.Fatalf("apply: %v", err)
					}
					for _, p := range tc.probes {
						p.run(t, tp, servers)
					}
				})
			}
		})
	}
}

// TestNoRulesNoRedirect is the control: the same probes without rules
// reach the real servers, so the landings above are the rules' doing.
func TestNoRulesNoRedirect(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	servers := startServers(t, tp, capture.Default())
	for _, p := range []probe{
		{from: fromApp, to: hostPort(peer4, 8080), want: "peer:8080"},
		{from: fromPeer, to: hostPort(pod4, 9080), want: "pod:9080"},
		{from: fromApp, to: hostPort(peer6, 8080), want: "peer:8080"},
		{from: fromPeer, to: hostPort(pod6, 9080), want: "pod:9080"},
		{from: fromApp, udp: true, to: hostPort(peer4, 53), want: "peer:53/udp"},
	} {
		p.run(t, tp, servers)
	}
}

// TestTProxyWithoutListenerDrops: iptables' TPROXY drops a new inbound
// connection when no transparent socket listens on the capture port, so
// it never reaches the app behind the proxy's back. nft's tproxy alone
// would let it through; the nftables backend must drop it too.
func TestTProxyWithoutListenerDrops(t *testing.T) {
	requireRoot(t)
	spec := capture.Default()
	spec.Mode = capture.TProxy
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			tp := newTopology(t)
			app := newServer("pod:9080")
			app.listenTCP(t, tp.pod, "0.0.0.0:9080", false)
			a := netfilter.New(netfilter.Options{Backend: backend, LockDir: t.TempDir()})
			if err := a.Apply(context.Background(), tp.pod.Path(), spec); err != nil {
				t.Fatalf("apply: %v", err)
			}
			if landed, err := dialTCP(tp.peer, hostPort(pod4, 9080)); err == nil {
				t.Fatalf("connection landed on %q with no proxy listening; want it dropped", landed)
			}
			select {
			case l := <-app.got:
				t.Fatalf("the app got a connection past the proxy: %+v", l)
			default:
			}
		})
	}
}
