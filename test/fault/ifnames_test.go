//go:build integration

package fault

import (
	"context"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/rules"
)

// oddNames are interface names the kernel accepts (dev_valid_name) and
// capture lets through, with every character iptables-restore or nft
// could conceivably treat specially, and iptables' prefix wildcard. A lone
// "+" (every interface) is refused: see TestEveryInterfaceRefused.
var oddNames = []string{"a#b", "c;d", "e$f", "g*h", "{x}", "x!y", "%s", "a`b", "a(b)", "a|b&c", "eth+", "x*", "*"}

// Valid but odd interface names reach the kernel verbatim, as one
// argument, on every backend: ADD and CHECK pass, and the rules name the
// interface exactly. An interface of that name, created in the pod, is
// accepted by the kernel too (it is a real name, not an injection).
func TestOddInterfaceNames(t *testing.T) {
	for _, b := range backends {
		for _, name := range oddNames {
			t.Run(string(b)+"/"+name, func(t *testing.T) {
				n := newNS(t)
				if !strings.ContainsAny(name, "*+%") {
					// The interface exists: the kernel takes the name. (It
					// reads "%" as a template, and the wildcards are no one
					// interface.)
					err := n.Do(func(ns.NetNS) error {
						return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
					})
					if err != nil {
						t.Fatalf("create interface %q: %v", name, err)
					}
				}
				ip := newInproc(t, b, nil)
				pod := richMeshPod("fault-ifnames", "pod")
				pod.Annotations["traffic.sidecar.istio.io/excludeInterfaces"] = name
				pod.Annotations["istio.io/reroute-virtual-interfaces"] = name
				ip.pods.add(pod)
				a := ip.args(t, pod, n.Path(), false)
				if cniErr, err := ip.add(a); err != nil || cniErr != nil {
					t.Fatalf("ADD: %v %v", cniErr, err)
				}
				if cniErr, err := ip.check(a); err != nil || cniErr != nil {
					t.Fatalf("CHECK: %v %v", cniErr, err)
				}
				save, _, err := netfilter.New(netfilter.Options{Backend: b, LockDir: t.TempDir(), Run: guard(netfilter.ExecRunner, nil)}).
					Save(context.Background(), n.Path(), rules.IPv4)
				if err != nil {
					t.Fatal(err)
				}
				want := "-i " + name + " -j RETURN"
				if b == netfilter.Nftables {
					want = `iifname "` + nftName(name) + `" return`
				}
				if !strings.Contains(save, want) {
					t.Errorf("rules do not hold %q:\n%s", want, save)
				}
			})
		}
	}
}

// nftName is how nft lists an interface name: iptables' "eth+" is nft's
// "eth*"; a literal "*" is escaped.
func nftName(name string) string {
	switch {
	case strings.HasSuffix(name, "+"):
		return strings.TrimSuffix(name, "+") + "*"
	case strings.HasSuffix(name, "*"):
		return strings.TrimSuffix(name, "*") + `\*`
	}
	return name
}

// A lone "+" is iptables' "every interface": as excludeInterfaces it would
// turn the pod's capture off, so it is refused on every backend (code 7,
// naming the annotation), and nothing is programmed.
func TestEveryInterfaceRefused(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			n := newNS(t)
			ip := newInproc(t, b, nil)
			pod := richMeshPod("fault-ifnames", "every")
			pod.Annotations["traffic.sidecar.istio.io/excludeInterfaces"] = "+"
			ip.pods.add(pod)
			cniErr, err := ip.add(ip.args(t, pod, n.Path(), false))
			if err != nil {
				t.Fatal(err)
			}
			if cniErr == nil || cniErr.Code != 7 || !strings.Contains(cniErr.Msg, "excludeInterfaces") {
				t.Fatalf("ADD with excludeInterfaces \"+\": want code 7 naming the annotation, got %+v", cniErr)
			}
			assertNoResidue(t, n.Path())
		})
	}
}
