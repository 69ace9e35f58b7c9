//go:build integration

package ctl

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/ctl/node"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
}

// pluginKubeconfig is a kubeconfig for an identity that may only get pods.
func pluginKubeconfig(t *testing.T, name string) string {
	t.Helper()
	kc, _, err := cluster.ServiceAccountKubeconfig(context.Background(), "kube-system", name,
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return kc
}

// newNode is a simulated node whose chain ends in meshcni. Its pod subnet
// is this package's own, so that a search by IP finds only its pods.
func newNode(t *testing.T) *testbed.Node { return newNodeWith(t, "10.251.77.0/24", nil) }

// newNodeWith is newNode with another pod subnet and extra plug-in
// settings.
func newNodeWith(t *testing.T, subnet string, conf map[string]any) *testbed.Node {
	t.Helper()
	pc := map[string]any{"type": "meshcni", "kubeconfig": pluginKubeconfig(t, "meshcni-verify"),
		"exclude_namespaces": []string{"kube-system", "istio-system"}, "pod_lookup_retries": 3, "pod_lookup_interval": "200ms"}
	for k, v := range conf {
		pc[k] = v
	}
	n, err := testbed.NewNode(testbed.Options{
		PluginBinary: pluginBin,
		PluginConf:   pc,
		Subnet4:      subnet,
		ForwardPorts: []int{cluster.Port},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n
}

// addPod stores the pod, attaches it through the chain and, as a kubelet
// would, writes its IP into the pod's status.
func addPod(t *testing.T, n *testbed.Node, pod *corev1.Pod) *testbed.Pod {
	t.Helper()
	ctx := context.Background()
	created, err := cluster.CreatePod(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	p, err := n.AddPod(ctx, created.Namespace, created.Name, string(created.UID))
	if err != nil {
		t.Fatalf("ADD %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	created.Status.PodIP = p.IP(false).String()
	created.Status.PodIPs = []corev1.PodIP{{IP: created.Status.PodIP}}
	if _, err := cluster.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func verify(n *testbed.Node, ns, pod string, extra ...string) (string, error) {
	out, errOut, err := meshcnictl(context.Background(), append([]string{"verify", pod, "-n", ns, "--cni-conf-dir", n.ConfDir}, extra...)...)
	return out + errOut, err
}

// inNetNS runs an iptables command of the netns's backend inside it.
func inNetNS(t *testing.T, path string, args ...string) {
	t.Helper()
	ctx := context.Background()
	lock := t.TempDir()
	_, backend, err := netfilter.New(netfilter.Options{LockDir: lock}).Save(ctx, path, rules.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	err = netns.Do(path, func() error {
		_, err := netfilter.ExecRunner(ctx, []string{"XTABLES_LOCKFILE=" + filepath.Join(lock, "l")}, "", backend.Command(false), args...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestVerify(t *testing.T) {
	requireRoot(t)
	n := newNode(t)
	pp := addPod(t, n, testbed.MeshPod("bookinfo", "productpage", 9080))
	plain := addPod(t, n, kubeharness.NewPod("bookinfo", "plain", testbed.NodeName))
	excluded := addPod(t, n, testbed.MeshPod("istio-system", "ingress", 8080))
	optOut := testbed.MeshPod("bookinfo", "opted-out", 9080)
	optOut.Annotations[capture.AnnotationInject] = "false"
	optedOut := addPod(t, n, optOut)

	t.Run("captured pod matches", func(t *testing.T) {
		out, err := verify(n, "bookinfo", "productpage", "--netns", pp.NS.Path())
		if err != nil {
			t.Fatalf("verify: %v\n%s", err, out)
		}
		t.Logf("meshcnictl verify productpage -n bookinfo:\n%s", out)
		for _, want := range []string{
			"-t nat -L -n -v --line-numbers -x", "Chain ISTIO_OUTPUT", "Chain OUTPUT (policy ACCEPT",
			"num      pkts      bytes target", "Expect:  captured (sidecar istio-proxy present): mode REDIRECT",
			"Result:  OK: the rules match",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
	})

	for _, tc := range []struct {
		name, ns, pod, reason string
		p                     *testbed.Pod
	}{
		{"plain pod", "bookinfo", "plain", "no istio-proxy container", plain},
		{"excluded namespace", "istio-system", "ingress", "namespace istio-system is excluded", excluded},
		{"opted out", "bookinfo", "opted-out", "annotation sidecar.istio.io/inject=false", optedOut},
	} {
		t.Run(tc.name+" has no rules", func(t *testing.T) {
			out, err := verify(n, tc.ns, tc.pod, "--netns", tc.p.NS.Path())
			if err != nil {
				t.Fatalf("verify: %v\n%s", err, out)
			}
			if !strings.Contains(out, "Expect:  not captured ("+tc.reason) || !strings.Contains(out, "Result:  OK: no ISTIO_* rules") {
				t.Errorf("output:\n%s", out)
			}
		})
	}

	// In an excluded namespace istio-init programs the pod's rules: verify
	// says they are istio-init's and passes, and without them it points
	// at istio-init's log, never at recreating the pod.
	t.Run("excluded pod programmed by istio-init", func(t *testing.T) {
		withInit := testbed.MeshPod("istio-system", "legacy", 8080)
		withInit.Spec.InitContainers = []corev1.Container{{Name: "istio-init", Image: withInit.Spec.Containers[0].Image}}
		p := addPod(t, n, withInit)
		out, err := verify(n, "istio-system", "legacy", "--netns", p.NS.Path())
		if !errors.Is(err, node.ErrVerifyMismatch) || !strings.Contains(err.Error(), "kubectl -n istio-system logs legacy -c istio-init") || strings.Contains(err.Error(), "delete pod") {
			t.Fatalf("no rules yet: err %v, want a mismatch pointing at istio-init's log\n%s", err, out)
		}
		spec := capture.Default()
		spec.ExcludeOutboundPorts = nil // istio-init's own arguments
		if err := netfilter.New(netfilter.Options{LockDir: t.TempDir()}).Apply(context.Background(), p.NS.Path(), spec); err != nil {
			t.Fatal(err)
		}
		out, err = verify(n, "istio-system", "legacy", "--netns", p.NS.Path())
		if err != nil {
			t.Fatalf("verify: %v\n%s", err, out)
		}
		if !strings.Contains(out, "Expect:  not captured (namespace istio-system is excluded)") || !strings.Contains(out, "Result:  OK: the rules (above) are istio-init's") {
			t.Errorf("output:\n%s", out)
		}
		t.Logf("meshcnictl verify legacy -n istio-system:\n%s", out)
	})

	// istio-init running meshcni-iptables on nftables leaves meshcni's
	// tables, not ISTIO_* rules: they are istio-init's too (it failed as
	// "holds meshcni's nftables tables" before, test/cluster found it).
	t.Run("excluded pod programmed by istio-init on nftables", func(t *testing.T) {
		withInit := testbed.MeshPod("istio-system", "legacy-nft", 8080)
		withInit.Spec.InitContainers = []corev1.Container{{Name: "istio-init", Image: withInit.Spec.Containers[0].Image}}
		p := addPod(t, n, withInit)
		spec := capture.Default()
		spec.ExcludeOutboundPorts = nil
		if err := netfilter.New(netfilter.Options{Backend: netfilter.Nftables, LockDir: t.TempDir()}).Apply(context.Background(), p.NS.Path(), spec); err != nil {
			t.Fatal(err)
		}
		out, err := verify(n, "istio-system", "legacy-nft", "--netns", p.NS.Path())
		if err != nil {
			t.Fatalf("verify: %v\n%s", err, out)
		}
		if !strings.Contains(out, "Result:  OK: the rules (above) are istio-init's") {
			t.Errorf("output:\n%s", out)
		}
	})

	t.Run("found by its IP", func(t *testing.T) {
		out, err := verify(n, "bookinfo", "productpage")
		if err != nil {
			t.Fatalf("verify: %v\n%s", err, out)
		}
		if !strings.Contains(out, "(the namespace that holds the pod's IP)") || !strings.Contains(out, "Result:  OK") {
			t.Errorf("output:\n%s", out)
		}
	})

	t.Run("found through CRI", func(t *testing.T) {
		sock := fakeCRI(t, "productpage", sandboxProcess(t, pp.NS.Path()))
		out, err := verify(n, "bookinfo", "productpage", "--runtime-endpoint", "unix://"+sock)
		if err != nil {
			t.Fatalf("verify: %v\n%s", err, out)
		}
		if !strings.Contains(out, "sandbox of the container runtime at unix://"+sock) || !strings.Contains(out, "Result:  OK") {
			t.Errorf("output:\n%s", out)
		}
	})

	t.Run("tampered rules are reported", func(t *testing.T) {
		inNetNS(t, pp.NS.Path(), "-t", "nat", "-D", "ISTIO_OUTPUT", "-j", "ISTIO_REDIRECT")
		out, err := verify(n, "bookinfo", "productpage", "--netns", pp.NS.Path())
		if !errors.Is(err, node.ErrVerifyMismatch) {
			t.Fatalf("verify after deleting a rule: err %v, want a mismatch\n%s", err, out)
		}
		for _, want := range []string{"missing 1 rules", "-A ISTIO_OUTPUT -j ISTIO_REDIRECT", "kubectl -n bookinfo delete pod productpage"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
	})

	t.Run("rules on an uncaptured pod are reported", func(t *testing.T) {
		if err := netfilter.New(netfilter.Options{LockDir: t.TempDir()}).Apply(context.Background(), plain.NS.Path(), capture.Default()); err != nil {
			t.Fatal(err)
		}
		out, err := verify(n, "bookinfo", "plain", "--netns", plain.NS.Path())
		if !errors.Is(err, node.ErrVerifyMismatch) || !strings.Contains(err.Error(), "yet its netns holds ISTIO_* rules") {
			t.Fatalf("err %v\n%s", err, out)
		}
	})

	t.Run("errors name the object and the fix", func(t *testing.T) {
		_, err := verify(n, "bookinfo", "nope", "--netns", pp.NS.Path())
		if err == nil || !strings.Contains(err.Error(), "pod bookinfo/nope not found") {
			t.Errorf("missing pod: %v", err)
		}
		_, err = verify(n, "bookinfo", "productpage", "--runtime-endpoint", "unix:///nonexistent/cri.sock")
		if err == nil || !strings.Contains(err.Error(), "check --runtime-endpoint, or pass --netns") {
			t.Errorf("no runtime: %v", err)
		}
		// (The refusal of the node's own netns is a unit test: this test
		// never lets a command near the host's rules.)
	})
}

// TestVerifyNftables: on a node whose plug-in uses the native nftables
// backend, verify shows meshcni's nft tables and judges them.
func TestVerifyNftables(t *testing.T) {
	requireRoot(t)
	n := newNodeWith(t, "10.251.78.0/24", map[string]any{"iptables_backend": "nftables"})
	pp := addPod(t, n, testbed.MeshPod("bookinfo-nft", "productpage", 9080))
	plain := addPod(t, n, kubeharness.NewPod("bookinfo-nft", "plain", testbed.NodeName))

	t.Run("captured pod matches", func(t *testing.T) {
		out, err := verify(n, "bookinfo-nft", "productpage", "--netns", pp.NS.Path())
		if err != nil {
			t.Fatalf("verify: %v\n%s", err, out)
		}
		t.Logf("meshcnictl verify productpage -n bookinfo-nft:\n%s", out)
		for _, want := range []string{
			"# nft list table ip meshcni   (nftables backend", "table ip meshcni {", "chain istio_output {",
			"type nat hook output priority -100; policy accept;", "meta l4proto tcp redirect to :15001",
			"Expect:  captured (sidecar istio-proxy present): mode REDIRECT", "Result:  OK: the rules match",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("output lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, "iptables") {
			t.Errorf("an nftables pod shown through iptables:\n%s", out)
		}
	})

	t.Run("plain pod has no rules", func(t *testing.T) {
		out, err := verify(n, "bookinfo-nft", "plain", "--netns", plain.NS.Path())
		if err != nil || !strings.Contains(out, "Result:  OK: no ISTIO_* rules") {
			t.Fatalf("err %v\n%s", err, out)
		}
	})

	t.Run("tampered rules are reported", func(t *testing.T) {
		err := netns.Do(pp.NS.Path(), func() error {
			_, err := netfilter.ExecRunner(context.Background(), nil, "", "nft", "flush", "chain", "ip", "meshcni", "istio_redirect")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		out, err := verify(n, "bookinfo-nft", "productpage", "--netns", pp.NS.Path())
		if !errors.Is(err, node.ErrVerifyMismatch) {
			t.Fatalf("verify after flushing a chain: err %v, want a mismatch\n%s", err, out)
		}
		for _, want := range []string{"missing 1 rules", "ip istio_redirect: meta l4proto tcp redirect to :15001", "kubectl -n bookinfo-nft delete pod productpage"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
	})

	t.Run("tables on an uncaptured pod are reported", func(t *testing.T) {
		a := netfilter.New(netfilter.Options{Backend: netfilter.Nftables, LockDir: t.TempDir()})
		if err := a.Apply(context.Background(), plain.NS.Path(), capture.Default()); err != nil {
			t.Fatal(err)
		}
		out, err := verify(n, "bookinfo-nft", "plain", "--netns", plain.NS.Path())
		if !errors.Is(err, node.ErrVerifyMismatch) || !strings.Contains(err.Error(), "yet its netns holds meshcni's nftables tables") {
			t.Fatalf("err %v\n%s", err, out)
		}
	})

	// A node that switched backends: the pod's nft tables are read as
	// such, whatever the entry says now.
	t.Run("read as programmed", func(t *testing.T) {
		old := newNode(t)
		p := addPod(t, old, testbed.MeshPod("bookinfo-nft", "reviews", 9080))
		out, err := verify(n, "bookinfo-nft", "reviews", "--netns", p.NS.Path())
		if err != nil || !strings.Contains(out, "-t nat -L -n -v") {
			t.Fatalf("an iptables pod on an nftables node: err %v\n%s", err, out)
		}
	})
}

// sandboxProcess starts a process inside the netns, as a pause container
// would be, and returns its pid.
func sandboxProcess(t *testing.T, path string) int {
	t.Helper()
	cmd := exec.Command("sleep", "300")
	if err := netns.Do(path, cmd.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd.Process.Pid
}

// fakeCRI serves runtime.v1 ListPodSandbox and PodSandboxStatus for one
// pod, as containerd does, on a socket in a temp dir.
func fakeCRI(t *testing.T, pod string, pid int) string {
	t.Helper()
	p, err := cluster.Client.CoreV1().Pods("bookinfo").Get(context.Background(), pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "cri.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, &criServer{uid: string(p.UID), pid: pid})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	return sock
}

type criServer struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	uid string
	pid int
}

func (s *criServer) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	if req.GetFilter().GetLabelSelector()["io.kubernetes.pod.uid"] != s.uid {
		return &runtimeapi.ListPodSandboxResponse{}, nil
	}
	return &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{{Id: "sandbox-1", State: runtimeapi.PodSandboxState_SANDBOX_READY}}}, nil
}

func (s *criServer) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	return &runtimeapi.PodSandboxStatusResponse{
		Status: &runtimeapi.PodSandboxStatus{Id: req.PodSandboxId, State: runtimeapi.PodSandboxState_SANDBOX_READY},
		Info:   map[string]string{"info": `{"pid":` + strconv.Itoa(s.pid) + `,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/proc/` + strconv.Itoa(s.pid) + `/ns/net"}]}}}`},
	}, nil
}
