//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/initcmd"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/plugin"
	"github.com/meshcni/meshcni/internal/podinfo"
	"github.com/meshcni/meshcni/internal/podspec"
	"github.com/meshcni/meshcni/internal/rules"
)

// TestKernelListsIPv4First is the premise of capture.EnableIPv6: Istio
// takes "the pod's first address" from net.InterfaceAddrs, and the kernel
// lists every IPv4 address before any IPv6 one, whatever order they were
// added in. Here the IPv6 address is added first.
func TestKernelListsIPv4First(t *testing.T) {
	requireRoot(t)
	pod := newNS(t)
	var listed []netip.Addr
	err := pod.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		if _, err := configure("eth0", pod6+"/64", pod4+"/24"); err != nil {
			return err
		}
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok && !ip.Unmap().IsLoopback() && !ip.IsLinkLocalUnicast() {
					listed = append(listed, ip.Unmap())
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(listed) != 2 || !listed[0].Is4() || !listed[1].Is6() {
		t.Fatalf("net.InterfaceAddrs listed %v; want %s before %s", listed, pod4, pod6)
	}
	// And the listing meshcni-iptables and verify use gives the same.
	local, err := initcmd.LocalAddrs(pod.Path())
	if err != nil {
		t.Fatal(err)
	}
	if capture.EnableIPv6(local, false) || !capture.EnableIPv6(local, true) {
		t.Fatalf("EnableIPv6(%v): want IPv4 only without dual stack, IPv6 with it", local)
	}
}

// onePod serves one pod as the API would.
type onePod struct{ pod *podspec.Pod }

func (o onePod) GetPod(context.Context, string, string) (*podspec.Pod, error) { return o.pod, nil }
func (o onePod) Ready(context.Context) error                                  { return nil }

// TestPluginDualStackPod runs ADD for a dual-stack pod in a real netns,
// with prevResult listing its IPv6 address first: without ISTIO_DUAL_STACK
// the pod gets Istio's IPv4-only rule set, and no ip6tables rules; with
// it, both.
func TestPluginDualStackPod(t *testing.T) {
	requireRoot(t)
	for _, backend := range backends {
		for _, dual := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/ISTIO_DUAL_STACK=%v", backend, dual), func(t *testing.T) {
				tp := newTopology(t)
				pod := &podspec.Pod{}
				pod.Name, pod.Namespace, pod.UID = "web", "shop", "uid-web"
				pod.Spec.Containers = []podspec.Container{{Name: "app"}, {Name: "istio-proxy"}}
				if dual {
					pod.Spec.Containers[1].Env = []podspec.EnvVar{{Name: "ISTIO_DUAL_STACK", Value: "true"}}
				}
				a := netfilter.New(netfilter.Options{Backend: backend, LockDir: t.TempDir()})
				var log bytes.Buffer
				p := &plugin.Plugin{
					Rules: a,
					API:   podinfo.Local{New: func(string, time.Duration) (podinfo.API, error) { return onePod{pod}, nil }},
					LogTo: slog.New(slog.NewJSONHandler(&log, nil)),
				}
				conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"net","type":"meshcni","kubeconfig":"/nonexistent",
				 "iptablesBackend":%q,"lockDir":%q,
				 "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":%q}],
				  "ips":[{"address":"%s/64","interface":0},{"address":"%s/24","interface":0}]}}`,
					backend, t.TempDir(), tp.pod.Path(), pod6, pod4)
				args := &skel.CmdArgs{ContainerID: "c-web", Netns: tp.pod.Path(), IfName: "eth0",
					Args: "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_UID=uid-web", StdinData: []byte(conf)}
				if _, _, err := testutils.CmdAddWithArgs(args, func() error { return p.CmdAdd(args) }); err != nil {
					t.Fatalf("ADD: %v\n%s", err, log.String())
				}
				want := capture.Default()
				want.IPv6 = dual
				if err := a.Check(context.Background(), tp.pod.Path(), want); err != nil {
					t.Fatalf("rules differ from Istio's for this pod: %v", err)
				}
				v6, _, err := a.Save(context.Background(), tp.pod.Path(), rules.IPv6)
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.Contains(strings.ToUpper(v6), "ISTIO_"); got != dual {
					t.Fatalf("IPv6 rules present %v, want %v:\n%s", got, dual, v6)
				}
			})
		}
	}
}
