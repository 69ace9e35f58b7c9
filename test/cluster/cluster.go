// Package cluster brings up a real two-node Kubernetes cluster on this
// machine, for the user's journey as a test (make e2e-cluster) and as the
// demo (make demo): etcd, kube-apiserver, kube-controller-manager and
// kube-scheduler in a "lan" network namespace that holds the bridge both
// nodes hang off; each node a network namespace and a private mount
// namespace with its own containerd, kubelet and kube-proxy.
//
// Nothing touches the host's network namespace or its sysctls: the three
// kernel sysctls the kubelet would rewrite are shadowed in each node's
// mount namespace, and every listener is inside the cluster's namespaces.
// Everything is stopped by PID and removed by Close, which then checks
// that no process, netns, mount, cgroup or file of the cluster is left.
// The facts behind each choice are in ../../docs/e2e.md.
package cluster

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshcni/meshcni/test/daemon"
)

// Options are what Start needs from outside.
type Options struct {
	// KubeBinDir holds etcd, kube-apiserver, kube-controller-manager,
	// kube-scheduler, kubelet, kube-proxy and kubectl (hack/build-kube.sh).
	KubeBinDir string
	// Crictl is the crictl binary (hack/e2e-deps.sh builds it).
	Crictl string
	// AgentImage is the OCI tarball `make image` writes.
	AgentImage string
	// ModuleDir is the meshcni module's root, where Start builds meshcnictl,
	// meshcni-iptables and the stand-in images' binary.
	ModuleDir string
	// Log gets one line per bring-up step.
	Log io.Writer
}

// Cluster is a running cluster.
type Cluster struct {
	Name  string // unique per run: netns prefix, cgroup root
	Dir   string // everything on disk
	LanNS string // path of the lan netns (control plane, bridge)
	Nodes []*Node
	// Admin is the admin kubeconfig (system:masters).
	Admin string
	// Conflist is the primary CNI conflist's name in CNIConfDir.
	Conflist string

	bin        string // kube binaries
	moduleDir  string
	tools      string // meshcnictl, meshcni-iptables, standin
	crictl     string
	pki        *pki
	log        io.Writer
	etcd, api  *daemon.Proc
	cm, sched  *daemon.Proc
	madeMounts []string // host mount points this run created
	// hostSysctls are the host's values, read at Start, that the cluster
	// must not change: Close checks them.
	hostSysctls map[string]string
}

// watchedSysctls are the host sysctls a kubelet, kube-proxy or the CNI
// bridge would change if they ran in the host's namespaces.
var watchedSysctls = []string{
	"vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops",
	"net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet",
}

func readSysctls() map[string]string {
	m := map[string]string{}
	for _, k := range watchedSysctls {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			m[k] = err.Error()
			continue
		}
		m[k] = strings.TrimSpace(string(b))
	}
	return m
}

const (
	lanIP       = "10.78.0.1"
	apiServer   = "https://" + lanIP + ":6443"
	serviceCIDR = "10.96.0.0/16"
	podCIDRs    = "10.244.0.0/16"
)

// The node paths the chart uses by default (platform "default"), as on a
// real node. The MeshCNI resource chooses a platform, not directories, so
// each node's mount namespace binds its own directories over them: the
// DaemonSet's hostPaths are the same strings on every node and each node
// sees its own files.
const (
	CNIBinDir  = "/opt/cni/bin"
	CNIConfDir = "/etc/cni/net.d"
	RunDir     = "/var/run/meshcni"
)

// hostMountPoints are paths the kubelet, containerd and the chart
// hard-code, bound to a per-node directory inside each node's mount
// namespace. The host only holds the mount point (created if missing,
// removed again if this run created it and it is empty).
var hostMountPoints = []string{"/var/lib/kubelet", "/var/lib/cni", "/run/containerd", CNIBinDir, CNIConfDir, "/run/meshcni"}

// mkdirAll is os.MkdirAll returning the directories it created, parents
// first.
func mkdirAll(dir string) ([]string, error) {
	var missing []string
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		missing = append([]string{d}, missing...)
	}
	for i, d := range missing {
		if err := os.Mkdir(d, 0o755); err != nil && !os.IsExist(err) {
			return missing[:i], err
		}
	}
	return missing, nil
}

// Start brings up the control plane and nodes named nodeNames, each Ready.
// On failure it closes what it started and says which step failed.
func Start(ctx context.Context, o Options, nodeNames ...string) (_ *Cluster, err error) {
	name := "mcl" + strconv.Itoa(os.Getpid())
	c := &Cluster{
		Name: name, Dir: filepath.Join(os.TempDir(), "meshcni-cluster-"+strconv.Itoa(os.Getpid())),
		bin: o.KubeBinDir, crictl: o.Crictl, moduleDir: o.ModuleDir, log: o.Log, Conflist: "10-pods.conflist",
	}
	if c.log == nil {
		c.log = io.Discard
	}
	c.tools = filepath.Join(c.Dir, "bin")
	c.hostSysctls = readSysctls()
	defer func() {
		if err != nil {
			if cerr := c.Close(); cerr != nil {
				err = fmt.Errorf("%w\n(and cleaning up: %v)", err, cerr)
			}
		}
	}()
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		if _, err := os.Stat(filepath.Join(c.bin, b)); err != nil {
			return nil, fmt.Errorf("%s is missing from %s (hack/build-kube.sh cluster builds it)", b, c.bin)
		}
	}
	if _, err := os.Stat(o.AgentImage); err != nil {
		return nil, fmt.Errorf("the agent image: %w (make image builds it)", err)
	}
	if _, err := os.Stat(o.Crictl); err != nil {
		return nil, fmt.Errorf("crictl: %w (hack/e2e-deps.sh builds it)", err)
	}
	for _, b := range []string{"containerd", "runc", "ctr", "nsenter", "unshare", "ip"} {
		if _, err := exec.LookPath(b); err != nil {
			return nil, fmt.Errorf("%s is not installed (hack/e2e-deps.sh installs it)", b)
		}
	}
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	step := func(what string, f func() error) error {
		t0 := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		fmt.Fprintf(c.log, "  %-52s %6.1fs\n", what, time.Since(t0).Seconds())
		return nil
	}
	if err := step("build meshcnictl, meshcni-iptables, standin", func() error { return c.buildTools(ctx, o.ModuleDir) }); err != nil {
		return nil, err
	}
	if err := step("images (stand-ins for Istio and Bookinfo, the agent)", func() error { return c.buildImages(o.ModuleDir) }); err != nil {
		return nil, err
	}
	if err := step("certificates and kubeconfigs", c.makePKI); err != nil {
		return nil, err
	}
	if err := step("network: lan bridge, routes", func() error { return c.makeLan(ctx) }); err != nil {
		return nil, err
	}
	if err := step("control plane: etcd, kube-apiserver, controller-manager, scheduler", func() error { return c.startControlPlane(ctx) }); err != nil {
		return nil, err
	}
	for i, n := range nodeNames {
		node := c.newNode(n, i)
		c.Nodes = append(c.Nodes, node)
		if err := step("node "+n+": netns, mounts, containerd, images, kubelet, kube-proxy", func() error { return node.start(ctx, o.AgentImage) }); err != nil {
			return nil, err
		}
	}
	if err := step("nodes Ready", func() error { return c.waitNodesReady(ctx) }); err != nil {
		return nil, err
	}
	return c, nil
}

// buildTools builds the binaries the cluster's images and the journey run.
func (c *Cluster) buildTools(ctx context.Context, moduleDir string) error {
	if err := os.MkdirAll(c.tools, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", c.tools+"/",
		"./cmd/meshcnictl", "./cmd/meshcni-iptables", "./test/cluster/standin")
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w: %s", err, out)
	}
	return nil
}

// Tool is the path of a binary buildTools made: meshcnictl, standin.
func (c *Cluster) Tool(name string) string { return filepath.Join(c.tools, name) }

func (c *Cluster) makePKI() error {
	var err error
	if c.pki, err = newPKI(filepath.Join(c.Dir, "pki")); err != nil {
		return err
	}
	if err := c.pki.issue("apiserver", "kube-apiserver", nil, "kubernetes", "kubernetes.default", "kubernetes.default.svc",
		"kubernetes.default.svc.cluster.local", "localhost", "127.0.0.1", lanIP, "10.96.0.1"); err != nil {
		return err
	}
	if err := c.pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}); err != nil {
		return err
	}
	if c.Admin, err = c.pki.kubeconfig("admin", apiServer, "meshcni-admin", "system:masters"); err != nil {
		return err
	}
	for _, k := range []struct{ name, cn string }{
		{"controller-manager", "system:kube-controller-manager"},
		{"scheduler", "system:kube-scheduler"},
		{"kube-proxy", "system:kube-proxy"},
	} {
		if _, err := c.pki.kubeconfig(k.name, apiServer, k.cn); err != nil {
			return err
		}
	}
	return nil
}

// makeLan creates the lan netns: a bridge the nodes' veths join, routes to
// each node's pod range (added per node), forwarding on.
func (c *Cluster) makeLan(ctx context.Context) error {
	lan := c.Name + "-lan"
	if _, err := run(ctx, nil, "ip", "netns", "add", lan); err != nil {
		return err
	}
	c.LanNS = "/run/netns/" + lan
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "lan0", "type", "bridge"},
		{"addr", "add", lanIP + "/24", "dev", "lan0"},
		{"link", "set", "lan0", "up"},
	} {
		if _, err := run(ctx, nil, append([]string{"ip", "-n", lan}, args...)...); err != nil {
			return err
		}
	}
	return sysctlIn(ctx, c.LanNS, "net/ipv4/ip_forward", "1")
}

// sysctlIn sets a per-netns sysctl inside nsPath only.
func sysctlIn(ctx context.Context, nsPath, key, value string) error {
	_, err := run(ctx, nil, "nsenter", "--net="+nsPath, "sh", "-c", "echo "+value+" > /proc/sys/"+key)
	return err
}

func (c *Cluster) inLan(argv ...string) []string {
	return append([]string{"nsenter", "--net=" + c.LanNS}, argv...)
}

func (c *Cluster) startControlPlane(ctx context.Context) error {
	logs := filepath.Join(c.Dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return err
	}
	p := c.pki.path
	var err error
	c.etcd, err = daemon.Start("etcd", filepath.Join(logs, "etcd.log"), c.inLan(filepath.Join(c.bin, "etcd"),
		"--name=cluster", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
		"--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
		"--initial-cluster=cluster=http://127.0.0.1:2380", "--listen-metrics-urls=", "--unsafe-no-fsync=true")...)
	if err != nil {
		return err
	}
	c.api, err = daemon.Start("kube-apiserver", filepath.Join(logs, "kube-apiserver.log"), c.inLan(filepath.Join(c.bin, "kube-apiserver"),
		"--etcd-servers=http://127.0.0.1:2379", "--bind-address="+lanIP, "--advertise-address="+lanIP, "--secure-port=6443",
		"--cert-dir="+filepath.Join(c.Dir, "apiserver-certs"),
		"--tls-cert-file="+p("apiserver.crt"), "--tls-private-key-file="+p("apiserver.key"),
		"--client-ca-file="+p("ca.crt"),
		"--kubelet-client-certificate="+p("apiserver-kubelet-client.crt"), "--kubelet-client-key="+p("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p("sa.pub"), "--service-account-signing-key-file="+p("sa.key"),
		"--service-cluster-ip-range="+serviceCIDR, "--authorization-mode=Node,RBAC",
		// The API server calls meshcni's admission webhook through its
		// Service. ClusterIPs exist only where kube-proxy runs, in the node
		// netns, not in the lan netns that holds the API server; the lan
		// routes to every node's pod range, so the API server goes to the
		// Service's endpoints (pod IPs) directly, as a control plane
		// without kube-proxy does. A lan route to the Service range via one
		// node would instead depend on that node (the journey reboots one).
		"--enable-aggregator-routing=true",
		"--enable-admission-plugins=NodeRestriction", "--allow-privileged=true", "--profiling=false", "--v=1")...)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "kube-apiserver /readyz", 90*time.Second, func() error {
		if c.api.Exited() {
			return fmt.Errorf("kube-apiserver exited:\n%s\netcd:\n%s", c.api.Tail(20), c.etcd.Tail(10))
		}
		_, err := c.Kubectl(ctx, "get", "--raw", "/readyz")
		return err
	}); err != nil {
		return err
	}
	kc := func(n string) string { return p(n + ".kubeconfig") }
	c.cm, err = daemon.Start("kube-controller-manager", filepath.Join(logs, "kube-controller-manager.log"), c.inLan(filepath.Join(c.bin, "kube-controller-manager"),
		"--kubeconfig="+kc("controller-manager"), "--authentication-kubeconfig="+kc("controller-manager"),
		"--authorization-kubeconfig="+kc("controller-manager"), "--bind-address=127.0.0.1", "--leader-elect=false",
		"--cluster-signing-cert-file="+p("ca.crt"), "--cluster-signing-key-file="+p("ca.key"), "--root-ca-file="+p("ca.crt"),
		"--service-account-private-key-file="+p("sa.key"), "--use-service-account-credentials=true",
		"--allocate-node-cidrs=false", "--profiling=false", "--v=1")...)
	if err != nil {
		return err
	}
	c.sched, err = daemon.Start("kube-scheduler", filepath.Join(logs, "kube-scheduler.log"), c.inLan(filepath.Join(c.bin, "kube-scheduler"),
		"--kubeconfig="+kc("scheduler"), "--authentication-kubeconfig="+kc("scheduler"),
		"--authorization-kubeconfig="+kc("scheduler"), "--bind-address=127.0.0.1", "--leader-elect=false",
		"--profiling=false", "--v=1")...)
	return err
}

// Kubectl runs kubectl as the admin, from the lan netns (the API server
// listens there only).
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	return c.KubectlIn(ctx, nil, args...)
}

// KubectlIn is Kubectl with stdin.
func (c *Cluster) KubectlIn(ctx context.Context, stdin []byte, args ...string) (string, error) {
	return run(ctx, stdin, c.inLan(append([]string{filepath.Join(c.bin, "kubectl"), "--kubeconfig", c.Admin}, args...)...)...)
}

func (c *Cluster) waitNodesReady(ctx context.Context) error {
	return waitFor(ctx, "every node Ready", 60*time.Second, func() error {
		for _, n := range c.Nodes {
			if n.kubelet.Exited() {
				return fmt.Errorf("kubelet on %s exited:\n%s", n.Name, n.kubelet.Tail(20))
			}
		}
		out, err := c.Kubectl(ctx, "get", "nodes", "-o", `jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}`)
		if err != nil {
			return err
		}
		for _, n := range c.Nodes {
			if !strings.Contains(out, n.Name+"=True") {
				return fmt.Errorf("nodes: %s", strings.TrimSpace(out))
			}
		}
		return nil
	})
}

// Node returns the node named name.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}
