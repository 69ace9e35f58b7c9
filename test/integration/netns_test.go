//go:build integration

package integration

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The test network: only inside the namespaces below.
const (
	pod4   = "10.248.0.1"
	peer4  = "10.248.0.2"
	peer4b = "10.248.1.2" // a second peer network, routed via peer4
	pod6   = "fd48:248::1"
	peer6  = "fd48:248::2"
)

// created lists every netns path this package made, for the final
// leftover check in TestMain.
var created struct {
	sync.Mutex
	paths map[string]string // path -> "net:[inode]"
}

// newNS creates a netns with lo up, removed when the test ends; cleanup
// then asserts nothing of it is left (see assertReleased).
func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	path := n.Path()
	id, err := nsID(path)
	if err != nil {
		t.Fatal(err)
	}
	created.Lock()
	if created.paths == nil {
		created.paths = map[string]string{}
	}
	created.paths[path] = id
	created.Unlock()
	t.Cleanup(func() {
		n.Close()
		if err := testutils.UnmountNS(n); err != nil {
			t.Errorf("remove netns: %v", err)
		}
		if err := assertReleased(path, id); err != nil {
			t.Error(err)
		}
	})
	err = n.Do(func(ns.NetNS) error {
		lo, err := netlinksafe.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		t.Fatalf("lo up in %s: %v", path, err)
	}
	return n
}

// assertReleased checks that this process no longer holds the netns:
// no mount, no file, no thread inside it, no open handle on it. Sockets
// are closed by their own cleanups, which run first.
func assertReleased(path, id string) error {
	var problems []string
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		problems = append(problems, "its file still exists")
	}
	if mounted(path) {
		problems = append(problems, "it is still mounted")
	}
	for _, glob := range []string{"/proc/self/task/*/ns/net", "/proc/self/fd/*"} {
		links, _ := filepath.Glob(glob)
		for _, l := range links {
			if target, err := os.Readlink(l); err == nil && (target == id || target == path) {
				problems = append(problems, l+" still refers to it")
			}
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("netns %s (%s) left behind: %s", path, id, strings.Join(problems, "; "))
	}
	return nil
}

func mounted(path string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && fields[4] == path {
			return true
		}
	}
	return false
}

// assertNoLeftovers re-checks every netns the package created.
func assertNoLeftovers() error {
	created.Lock()
	defer created.Unlock()
	var errs []error
	for path, id := range created.paths {
		errs = append(errs, assertReleased(path, id))
	}
	return errors.Join(errs...)
}

// topology is a pod and a peer joined by a veth pair:
//
//	pod  eth0 10.248.0.1/24 fd48:248::1/64  (route 10.248.1.0/24 via peer)
//	peer eth0 10.248.0.2/24 10.248.1.2/24 fd48:248::2/64
type topology struct {
	pod, peer ns.NetNS
}

func newTopology(t *testing.T) *topology {
	t.Helper()
	tp := &topology{pod: newNS(t), peer: newNS(t)}
	// The pair is created inside the pod and one end moved to the peer:
	// no end ever exists in the host's namespace.
	err := tp.pod.Do(func(ns.NetNS) error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer-end"}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("add veth: %w", err)
		}
		end, err := netlinksafe.LinkByName("peer-end")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(end, int(tp.peer.Fd())); err != nil {
			return fmt.Errorf("move veth end to peer: %w", err)
		}
		link, err := configure("eth0", pod4+"/24", pod6+"/64")
		if err != nil {
			return err
		}
		_, dst, _ := net.ParseCIDR("10.248.1.0/24")
		return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: dst, Gw: net.ParseIP(peer4)})
	})
	if err != nil {
		t.Fatalf("pod side: %v", err)
	}
	err = tp.peer.Do(func(ns.NetNS) error {
		link, err := netlinksafe.LinkByName("peer-end")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetName(link, "eth0"); err != nil {
			return err
		}
		_, err = configure("eth0", peer4+"/24", peer4b+"/24", peer6+"/64")
		return err
	})
	if err != nil {
		t.Fatalf("peer side: %v", err)
	}
	return tp
}

// configure adds addresses (IPv6 without duplicate address detection, so
// they are usable at once) to a link and brings it up.
func configure(name string, cidrs ...string) (netlink.Link, error) {
	link, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, err
	}
	for _, c := range cidrs {
		a, err := netlink.ParseAddr(c)
		if err != nil {
			return nil, err
		}
		if a.IP.To4() == nil {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrAdd(link, a); err != nil {
			return nil, fmt.Errorf("add %s to %s: %w", c, name, err)
		}
	}
	return link, netlink.LinkSetUp(link)
}

// nsID names a netns the way /proc links do: "net:[inode]".
func nsID(path string) (string, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return "", fmt.Errorf("stat netns %s: %w", path, err)
	}
	return fmt.Sprintf("net:[%d]", st.Ino), nil
}

// assertInside checks that the current thread is in n: a guard before
// running anything that would otherwise act on the host's namespace.
func assertInside(n ns.NetNS) error {
	here, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		return err
	}
	want, err := nsID(n.Path())
	if err != nil {
		return err
	}
	if here != want {
		return fmt.Errorf("refusing to run: thread is in %s, not the test netns %s (%s)", here, n.Path(), want)
	}
	return nil
}
