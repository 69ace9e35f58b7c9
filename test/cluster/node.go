package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshcni/meshcni/test/daemon"
)

// Node is one node: a network namespace routed to the lan, and a private
// mount namespace (held by a sleeping process) in which its containerd,
// kubelet and kube-proxy run.
type Node struct {
	Name    string // Kubernetes node name, e.g. node-a
	IP      string // on the lan
	PodCIDR string
	NS      string // netns path
	Dir     string // its own directory; its mount ns binds parts of it over the standard node paths
	Sock    string // containerd's socket (a host path)
	Cgroup  string // kubelet cgroupRoot, e.g. /mcl123/node-a

	c          *Cluster
	holder     *daemon.Proc
	containerd *daemon.Proc
	kubelet    *daemon.Proc
	proxy      *daemon.Proc
}

func (c *Cluster) newNode(name string, i int) *Node {
	dir := filepath.Join(c.Dir, "nodes", name)
	return &Node{
		Name: name, IP: fmt.Sprintf("10.78.0.%d", i+2), PodCIDR: fmt.Sprintf("10.244.%d.0/24", i),
		Dir: dir, Sock: filepath.Join(dir, "containerd", "containerd.sock"), Cgroup: "/" + c.Name + "/" + name, c: c,
	}
}

func (n *Node) path(elem ...string) string { return filepath.Join(append([]string{n.Dir}, elem...)...) }

// In returns argv run inside the node: its netns and its mount namespace.
func (n *Node) In(argv ...string) []string {
	return append([]string{"nsenter", "-t", strconv.Itoa(n.holder.PID()), "-m", "-n", "--"}, argv...)
}

// Exec runs argv inside the node and returns its stdout.
func (n *Node) Exec(ctx context.Context, argv ...string) (string, error) {
	return run(ctx, nil, n.In(argv...)...)
}

// Crictl runs crictl against the node's containerd, inside the node (its
// streaming server listens on the node's loopback).
func (n *Node) Crictl(ctx context.Context, args ...string) (string, error) {
	return n.Exec(ctx, append([]string{n.c.crictl, "--runtime-endpoint", "unix://" + n.Sock, "--image-endpoint", "unix://" + n.Sock, "--timeout", "60s"}, args...)...)
}

func (n *Node) start(ctx context.Context, agentImage string) error {
	for _, d := range []string{"varlibcni", "varlog/pods", "run-containerd", "kubelet", "cni/bin", "cni/net.d", "run-meshcni", "containerd", "logs", "etc"} {
		if err := os.MkdirAll(n.path(d), 0o755); err != nil {
			return err
		}
	}
	if err := n.makeNetns(ctx); err != nil {
		return err
	}
	if err := n.startHolder(ctx); err != nil {
		return err
	}
	if err := n.makeCgroups(); err != nil {
		return err
	}
	if err := n.writeCNI(); err != nil {
		return err
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if err := n.importImages(ctx, agentImage); err != nil {
		return err
	}
	if err := n.startKubelet(); err != nil {
		return err
	}
	return n.startKubeProxy()
}

func (n *Node) makeNetns(ctx context.Context) error {
	c := n.c
	ns := c.Name + "-" + strings.TrimPrefix(n.Name, "node-")
	if _, err := run(ctx, nil, "ip", "netns", "add", ns); err != nil {
		return err
	}
	n.NS = "/run/netns/" + ns
	lan := filepath.Base(c.LanNS)
	veth := "veth-" + n.Name
	cmds := [][]string{
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"ip", "-n", lan, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"ip", "-n", lan, "link", "set", veth, "master", "lan0", "up"},
		{"ip", "-n", ns, "addr", "add", n.IP + "/24", "dev", "eth0"},
		{"ip", "-n", ns, "link", "set", "eth0", "up"},
		// A real node has a default route; without one, connect() to a
		// ClusterIP fails before kube-proxy's DNAT can apply.
		{"ip", "-n", ns, "route", "add", "default", "via", lanIP, "dev", "eth0"},
		{"ip", "-n", lan, "route", "add", n.PodCIDR, "via", n.IP},
	}
	// Direct routes between nodes' pod ranges (pod IPs are kept end to end).
	for _, o := range c.Nodes {
		if o != n && o.NS != "" {
			cmds = append(cmds,
				[]string{"ip", "-n", ns, "route", "add", o.PodCIDR, "via", o.IP},
				[]string{"ip", "-n", filepath.Base(o.NS), "route", "add", n.PodCIDR, "via", n.IP})
		}
	}
	for _, cmd := range cmds {
		if _, err := run(ctx, nil, cmd...); err != nil {
			return err
		}
	}
	return sysctlIn(ctx, n.NS, "net/ipv4/ip_forward", "1")
}

// startHolder starts the process that holds the node's private mount
// namespace, and binds there: files holding the values the kubelet wants
// over the three host-global sysctls it would otherwise rewrite, and a
// per-node directory over each path the kubelet or containerd hard-codes.
func (n *Node) startHolder(ctx context.Context) error {
	c := n.c
	fake := filepath.Join(c.Dir, "fakesys")
	if err := os.MkdirAll(fake, 0o755); err != nil {
		return err
	}
	sysctls := map[string]string{"vm/overcommit_memory": "1", "kernel/panic": "10", "kernel/panic_on_oops": "1"}
	for k, v := range sysctls {
		if err := os.WriteFile(filepath.Join(fake, strings.ReplaceAll(k, "/", ".")), []byte(v+"\n"), 0o644); err != nil {
			return err
		}
	}
	for _, mp := range hostMountPoints {
		made, err := mkdirAll(mp)
		c.madeMounts = append(c.madeMounts, made...)
		if err != nil {
			return err
		}
		// A file of ours keeps the mount point non-empty while the cluster
		// runs: another suite that removes it when empty (test/e2e does,
		// for /run/containerd) would otherwise detach this node's bind.
		if err := os.WriteFile(c.mountMarker(mp), nil, 0o644); err != nil {
			return err
		}
	}
	var err error
	// standin pause names the cluster's dir in its command line, so a
	// sweep after a crash can find it.
	n.holder, err = daemon.Start("holder-"+n.Name, n.path("logs", "holder.log"),
		"nsenter", "--net="+n.NS, "unshare", "--mount", "--propagation", "private", c.Tool("standin"), "pause")
	if err != nil {
		return err
	}
	self, _ := os.Readlink("/proc/self/ns/mnt")
	if err := waitFor(ctx, "the node's mount namespace", 10*time.Second, func() error {
		if n.holder.Exited() {
			return fmt.Errorf("holder exited: %s", n.holder.Tail(5))
		}
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", n.holder.PID()))
		if err != nil || ns == self {
			return fmt.Errorf("not yet unshared (%v)", err)
		}
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n.holder.PID()))
		if !strings.Contains(string(b), "standin") {
			return fmt.Errorf("not yet exec'd")
		}
		return nil
	}); err != nil {
		return err
	}
	binds := [][2]string{
		{filepath.Join(fake, "vm.overcommit_memory"), "/proc/sys/vm/overcommit_memory"},
		{filepath.Join(fake, "kernel.panic"), "/proc/sys/kernel/panic"},
		{filepath.Join(fake, "kernel.panic_on_oops"), "/proc/sys/kernel/panic_on_oops"},
		{n.path("varlibcni"), "/var/lib/cni"},         // go-cni's result cache
		{n.path("varlog"), "/var/log"},                // the kubelet's /var/log/containers
		{n.path("run-containerd"), "/run/containerd"}, // containerd 1.6's shim sockets
		{n.path("kubelet"), "/var/lib/kubelet"},       // the kubelet's serving cert, device-plugin socket
		// The chart's default node paths (the MeshCNI resource picks a
		// platform, not directories): each node sees its own.
		{n.path("cni", "bin"), CNIBinDir},
		{n.path("cni", "net.d"), CNIConfDir},
		{n.path("run-meshcni"), "/run/meshcni"}, // RunDir; /var/run is /run
	}
	var script strings.Builder
	for _, b := range binds {
		fmt.Fprintf(&script, "mount --bind %q %q && ", b[0], b[1])
	}
	script.WriteString("true")
	_, err = run(ctx, nil, "nsenter", "-t", strconv.Itoa(n.holder.PID()), "-m", "--", "sh", "-c", script.String())
	return err
}

// makeCgroups creates the node's cgroupRoot in every v1 hierarchy (one
// per node: two kubelets on one root kill each other's pods as orphans).
func (n *Node) makeCgroups() error {
	hier, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, h := range hier {
		if b := filepath.Base(h); b == "unified" {
			continue
		}
		parent := filepath.Join(h, n.c.Name)
		for _, d := range []string{parent, filepath.Join(parent, n.Name)} {
			if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
				return err
			}
			if filepath.Base(h) == "cpuset" {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					v, err := os.ReadFile(filepath.Join(h, f))
					if err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(d, f), v, 0o644); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// writeCNI copies Debian's reference plug-ins (copies, not symlinks: the
// agent sees the dir as a hostPath) and writes the primary conflist.
func (n *Node) writeCNI() error {
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		b, err := os.ReadFile(filepath.Join("/usr/lib/cni", p))
		if err != nil {
			return fmt.Errorf("containernetworking-plugins: %w", err)
		}
		if err := os.WriteFile(n.path("cni", "bin", p), b, 0o755); err != nil {
			return err
		}
	}
	gw := strings.TrimSuffix(n.PodCIDR, "0/24") + "1"
	conf := fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "pods",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, n.PodCIDR, gw)
	return os.WriteFile(n.path("cni", "net.d", n.c.Conflist), []byte(conf), 0o644)
}

func (n *Node) startContainerd(ctx context.Context) error {
	conf := daemon.Containerd{
		Dir: n.path("containerd"), Sock: n.Sock, SandboxImage: "registry.k8s.io/pause:3.10",
		CNIBinDir: CNIBinDir, CNIConfDir: CNIConfDir,
	}.Config()
	path := n.path("etc", "containerd.toml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	var err error
	if n.containerd, err = daemon.Start("containerd-"+n.Name, n.path("logs", "containerd.log"), n.In("containerd", "--config", path)...); err != nil {
		return err
	}
	return waitFor(ctx, "containerd's CRI on "+n.Name, 30*time.Second, func() error {
		if n.containerd.Exited() {
			return fmt.Errorf("containerd exited:\n%s", n.containerd.Tail(20))
		}
		_, err := n.Crictl(ctx, "info")
		return err
	})
}

// Ctr runs ctr against the node's containerd, in CRI's namespace.
func (n *Node) Ctr(ctx context.Context, args ...string) (string, error) {
	return run(ctx, nil, append([]string{"ctr", "--address", n.Sock, "--namespace", "k8s.io"}, args...)...)
}

func (n *Node) importImages(ctx context.Context, agentImage string) error {
	for _, tar := range []string{n.c.imagePath("pause"), n.c.imagePath("istio"), agentImage} {
		if _, err := n.Ctr(ctx, "images", "import", tar); err != nil {
			return err
		}
	}
	for _, ref := range istioRefs[1:] {
		if _, err := n.Ctr(ctx, "images", "tag", "--force", istioRefs[0], ref); err != nil {
			return err
		}
	}
	return nil
}

func (n *Node) startKubelet() error {
	c := n.c
	kubeconfig, err := c.pki.kubeconfig("kubelet-"+n.Name, apiServer, "system:node:"+n.Name, "system:nodes")
	if err != nil {
		return err
	}
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failCgroupV1: false
cgroupRoot: %[1]s
containerRuntimeEndpoint: unix://%[2]s
imageServiceEndpoint: unix://%[2]s
address: %[3]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[4]s}
authorization: {mode: Webhook}
podLogsDir: /var/log/pods
volumePluginDir: %[5]s
staticPodPath: ""
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
registerNode: true
# As docs/agent.md asks: no mesh pod lands on a node before its agent is ready.
registerWithTaints: [{key: %[6]s, effect: NoSchedule}]
# This machine's disk is shared: no eviction or image GC of the imported images.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
`, n.Cgroup, n.Sock, n.IP, c.pki.path("ca.crt"), n.path("kubelet", "volume-plugins"), StartupTaint)
	path := n.path("etc", "kubelet.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	n.kubelet, err = daemon.Start("kubelet-"+n.Name, n.path("logs", "kubelet.log"), n.In(filepath.Join(c.bin, "kubelet"),
		"--config="+path, "--kubeconfig="+kubeconfig, "--root-dir="+n.path("kubelet"),
		"--hostname-override="+n.Name, "--node-ip="+n.IP, "--v=2")...)
	return err
}

func (n *Node) startKubeProxy() error {
	c := n.c
	conf := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %s}
mode: iptables
hostnameOverride: %s
clusterCIDR: %s
bindAddress: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the (host-global) conntrack knobs alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, c.pki.path("kube-proxy.kubeconfig"), n.Name, podCIDRs, n.IP)
	path := n.path("etc", "kube-proxy.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return err
	}
	var err error
	n.proxy, err = daemon.Start("kube-proxy-"+n.Name, n.path("logs", "kube-proxy.log"), n.In(filepath.Join(c.bin, "kube-proxy"), "--config="+path, "--v=1")...)
	return err
}

// Logs returns the last n lines of each of the node's daemons' logs.
func (n *Node) Logs(lines int) string {
	var b strings.Builder
	for _, p := range []*daemon.Proc{n.containerd, n.kubelet, n.proxy} {
		if p != nil {
			fmt.Fprintf(&b, "--- %s\n%s\n", p.Name, p.Tail(lines))
		}
	}
	return b.String()
}

// Shutdown stops the node's kube-proxy and kubelet, removes every pod
// through CRI (their CNI DEL runs, as at a shutdown), and stops
// containerd: what a reboot does to the node's workloads.
func (n *Node) Shutdown(ctx context.Context) error {
	n.proxy.Stop(10 * time.Second)
	n.kubelet.Stop(10 * time.Second)
	if _, err := n.Crictl(ctx, "rmp", "--all", "--force"); err != nil {
		return err
	}
	n.containerd.Stop(15 * time.Second)
	return nil
}

// Boot starts the node's containerd, kubelet and kube-proxy again, as after
// a reboot (the images stay in containerd's root).
func (n *Node) Boot(ctx context.Context) error {
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	if err := n.startKubelet(); err != nil {
		return err
	}
	return n.startKubeProxy()
}
