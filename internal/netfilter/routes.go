package netfilter

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// passthrough6 is the source address Envoy binds for inbound passthrough
// over IPv6; IPv4 has all of 127/8 on lo already.
var passthrough6 = &net.IPNet{IP: net.ParseIP("::6"), Mask: net.CIDRMask(128, 128)}

// programRoutes adds what rules alone cannot: for TPROXY the policy route
// (fwmark → table → local via lo), for IPv6 the ::6 address on lo. Runs in
// the target netns; every step is idempotent.
func programRoutes(r rules.Routes) error {
	lo, up, err := loopback()
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	// The runtime's loopback plug-in brings lo up; the init-container and
	// repair paths may come first, and a local route needs lo up.
	if !up {
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("bring lo up: %w", err)
		}
	}
	if r.IPv6 {
		if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: passthrough6}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add ::6/128 to lo: %w", err)
		}
	}
	if !r.TProxy {
		return nil
	}
	for _, fam := range families(r) {
		if err := netlink.RuleAdd(tproxyRule(r, fam)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add rule fwmark %d lookup %d: %w", r.Mark, r.Table, err)
		}
		if err := netlink.RouteReplace(tproxyRoute(r, fam, lo.Attrs().Index)); err != nil {
			return fmt.Errorf("add local default route via lo in table %d: %w", r.Table, err)
		}
	}
	return nil
}

func checkRoutes(r rules.Routes) error {
	if !r.TProxy {
		return nil
	}
	for _, fam := range families(r) {
		rs, err := netlink.RuleListFiltered(fam, tproxyRule(r, fam), netlink.RT_FILTER_TABLE|netlink.RT_FILTER_MARK)
		if err != nil {
			return fmt.Errorf("list rules: %w", err)
		}
		if len(rs) == 0 {
			return fmt.Errorf("%w: no policy rule fwmark %d lookup %d", ErrMismatch, r.Mark, r.Table)
		}
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: r.Table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		if len(routes) == 0 {
			return fmt.Errorf("%w: route table %d is empty", ErrMismatch, r.Table)
		}
	}
	return nil
}

// removeRoutes deletes the TPROXY policy rules meshcni may have added
// (any mark/table pair is found by its priority-less fwmark rule).
func removeRoutes() error {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := netlink.RuleList(fam)
		if err != nil {
			if errors.Is(err, unix.EAFNOSUPPORT) || os.IsNotExist(err) {
				continue
			}
			return fmt.Errorf("list rules: %w", err)
		}
		for _, r := range rs {
			if r.Mark == capture.DefaultTProxyMark && r.Table == capture.DefaultTProxyRouteTable {
				r := r
				if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("delete rule: %w", err)
				}
			}
		}
	}
	return nil
}

func families(r rules.Routes) []int {
	if r.IPv6 {
		return []int{netlink.FAMILY_V4, netlink.FAMILY_V6}
	}
	return []int{netlink.FAMILY_V4}
}

// loopback returns the current netns's lo and whether it is up, from two
// ioctls: on every ADD this replaces a netlink link dump that cost a fresh
// plug-in process more than the rest of a REDIRECT pod's routing work.
func loopback() (netlink.Link, bool, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, false, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return nil, false, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return nil, false, err
	}
	lo := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "lo", Index: int(ifr.Uint32())}}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return nil, false, err
	}
	return lo, ifr.Uint16()&unix.IFF_UP != 0, nil
}

func tproxyRule(r rules.Routes, fam int) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = fam
	rule.Mark = r.Mark
	rule.Table = r.Table
	return rule
}

func tproxyRoute(r rules.Routes, fam, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if fam == netlink.FAMILY_V6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		LinkIndex: lo,
		Dst:       dst,
		Table:     r.Table,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Family:    fam,
	}
}
