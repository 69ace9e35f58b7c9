// Package testbed simulates a Kubernetes node for tests and the demo: a
// "node" network namespace that holds the bridge and runs the CNI chain
// the way a container runtime does (libcni), pod namespaces, and a
// loopback forwarder so that plug-ins inside the node namespace reach an
// API server on the host's 127.0.0.1. Nothing touches the host namespace.
package testbed

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshcni/meshcni/internal/apilookup"
)

// DebianPlugins is where Debian's containernetworking-plugins live.
const DebianPlugins = "/usr/lib/cni"

// Options shape a node.
type Options struct {
	// PluginBinary is the meshcni binary (or any chained plug-in with the
	// same config shape) installed into the node's CNI bin dir.
	PluginBinary string
	// PluginConf is the chained entry appended after the bridge; nil
	// means a primary-only conflist.
	PluginConf map[string]any
	// Subnet4 and Subnet6 (optional) are the pod ranges, host-local IPAM.
	Subnet4, Subnet6 string
	// ForwardPorts are host-loopback TCP ports made reachable at the same
	// port on the node namespace's loopback (the API server).
	ForwardPorts []int
}

// Node is one simulated node.
type Node struct {
	NS       ns.NetNS
	Dir      string
	BinDir   string
	ConfDir  string
	CacheDir string
	cni      *libcni.CNIConfig
	opts     Options

	mu        sync.Mutex
	listeners []net.Listener
	pods      []*Pod
}

// NewNode creates the node namespace, its CNI dirs and conflist.
func NewNode(opts Options) (_ *Node, err error) {
	if opts.Subnet4 == "" {
		opts.Subnet4 = "10.250.0.0/24"
	}
	dir, err := os.MkdirTemp("", "meshcni-node-")
	if err != nil {
		return nil, err
	}
	n := &Node{Dir: dir, BinDir: filepath.Join(dir, "bin"), ConfDir: filepath.Join(dir, "net.d"), CacheDir: filepath.Join(dir, "cache"), opts: opts}
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	for _, d := range []string{n.BinDir, n.ConfDir, n.CacheDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		if err := os.Symlink(filepath.Join(DebianPlugins, p), filepath.Join(n.BinDir, p)); err != nil {
			return nil, err
		}
	}
	if opts.PluginBinary != "" {
		if err := CopyExecutable(opts.PluginBinary, filepath.Join(n.BinDir, filepath.Base(opts.PluginBinary))); err != nil {
			return nil, err
		}
		// meshcni's API fallback runs the helper beside it, as the agent
		// installs the two; another plug-in has none.
		helper := filepath.Join(filepath.Dir(opts.PluginBinary), apilookup.HelperName)
		if _, err := os.Stat(helper); err == nil {
			if err := CopyExecutable(helper, filepath.Join(n.BinDir, apilookup.HelperName)); err != nil {
				return nil, err
			}
		}
	}
	if n.NS, err = testutils.NewNS(); err != nil {
		return nil, fmt.Errorf("create node netns: %w", err)
	}
	if err := n.NS.Do(func(ns.NetNS) error { return linkUp("lo") }); err != nil {
		return nil, err
	}
	for _, port := range opts.ForwardPorts {
		if err := n.forward(port); err != nil {
			return nil, err
		}
	}
	if err := n.WriteConflist(opts.PluginConf); err != nil {
		return nil, err
	}
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{n.BinDir}, n.CacheDir, nil)
	return n, nil
}

// ConflistPath is the node's primary conflist.
func (n *Node) ConflistPath() string { return filepath.Join(n.ConfDir, "10-testnet.conflist") }

// PrimaryConf is the bridge entry, as a primary CNI would write it.
func (n *Node) PrimaryConf() map[string]any {
	ranges := []any{[]any{map[string]any{"subnet": n.opts.Subnet4}}}
	if n.opts.Subnet6 != "" {
		ranges = append(ranges, []any{map[string]any{"subnet": n.opts.Subnet6}})
	}
	return map[string]any{
		"type": "bridge", "bridge": "mcni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
		"ipam": map[string]any{"type": "host-local", "ranges": ranges, "dataDir": filepath.Join(n.Dir, "ipam")},
	}
}

// WriteConflist writes bridge (+ chained entry, if any) as the primary
// conflist. The agent tests write their own instead.
func (n *Node) WriteConflist(chained map[string]any) error {
	plugins := []any{n.PrimaryConf()}
	if chained != nil {
		plugins = append(plugins, chained)
	}
	b, err := json.MarshalIndent(map[string]any{"cniVersion": "1.0.0", "name": "testnet", "plugins": plugins}, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(n.ConflistPath(), b, 0o644)
}

// Conflist loads the conflist the runtime would use: the first valid
// file in the conf dir, in libcni order.
func (n *Node) Conflist() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(n.ConfDir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		if filepath.Ext(f) == ".conflist" {
			if l, err := libcni.NetworkConfFromFile(f); err == nil && len(l.Plugins) > 0 {
				return l, nil
			}
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if c, err := libcni.NetworkPluginConfFromBytes(b); err == nil && c.Network.Type != "" {
			return &libcni.NetworkConfigList{Name: c.Network.Name, CNIVersion: c.Network.CNIVersion, Plugins: []*libcni.PluginConfig{c}}, nil
		}
	}
	return nil, fmt.Errorf("no CNI config in %s", n.ConfDir)
}

// forward makes host 127.0.0.1:port reachable on the node's loopback.
// The listening socket is created inside the node netns; accepting and
// dialing happen on ordinary threads, in the host netns.
func (n *Node) forward(port int) error {
	var l net.Listener
	err := n.NS.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		return err
	})
	if err != nil {
		return fmt.Errorf("forward port %d into the node netns: %w", port, err)
	}
	n.mu.Lock()
	n.listeners = append(n.listeners, l)
	n.mu.Unlock()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go pipe(c, "127.0.0.1:"+strconv.Itoa(port))
		}
	}()
	return nil
}

// StopForwarding cuts the node off from the API server (fault tests).
func (n *Node) StopForwarding() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, l := range n.listeners {
		_ = l.Close()
	}
	n.listeners = nil
}

func pipe(in net.Conn, to string) {
	defer in.Close()
	out, err := net.Dial("tcp", to)
	if err != nil {
		return
	}
	defer out.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
	go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
	<-done
}

// Close deletes every pod still attached, the node netns and its dirs.
func (n *Node) Close() {
	n.mu.Lock()
	pods := append([]*Pod(nil), n.pods...)
	n.mu.Unlock()
	for _, p := range pods {
		_ = n.DelPod(context.Background(), p)
	}
	n.StopForwarding()
	CloseNS(n.NS)
	_ = os.RemoveAll(n.Dir)
}

func linkUp(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.LinkSetUp(l)
}

// CopyExecutable copies the file src to dst with mode 0755.
func CopyExecutable(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o755)
}

var errNoPod = errors.New("pod not attached")

// CloseNS closes and removes a namespace a test created. A concurrent
// fork elsewhere in the process may briefly hold the netns file open (the
// window before close-on-exec), which makes a plain unmount fail with
// EBUSY; a lazy unmount then removes the mount point anyway, so nothing
// is left behind.
func CloseNS(n ns.NetNS) {
	if n == nil {
		return
	}
	_ = n.Close()
	if err := testutils.UnmountNS(n); err != nil {
		_ = unix.Unmount(n.Path(), unix.MNT_DETACH)
		_ = os.Remove(n.Path())
	}
}
