//go:build integration

package fault

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

// snapshot is everything every tool shows in the netns at path, without
// the timestamped comments, to prove it untouched.
func snapshot(t testing.TB, path string) string {
	t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"} {
		out, err := inNS(path, tool)
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		for _, l := range strings.SplitAfter(out, "\n") {
			if !strings.HasPrefix(l, "#") {
				b.WriteString(l)
			}
		}
	}
	out, err := inNS(path, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	b.WriteString(out)
	return b.String()
}

// goneNS returns the path of a netns that existed and was removed.
func goneNS(t testing.TB) string {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	path := n.Path()
	testbed.CloseNS(n)
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("%s still there: %v", path, err)
	}
	return path
}

// Bad netns paths: ADD and CHECK fail with a clear error naming the path,
// DEL succeeds (it must, for the runtime to finish its cleanup); no
// command runs anywhere, the lock dir stays empty, the file given is
// untouched, and a bystander pod's netns keeps its rules.
func TestBadNetnsPaths(t *testing.T) {
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ip := newInproc(t, b, nil)
			bystander := newNS(t)
			by := richMeshPod("fault-netns", "bystander")
			ip.pods.add(by)
			if cniErr, err := ip.add(ip.args(t, by, bystander.Path(), true)); err != nil || cniErr != nil {
				t.Fatalf("bystander ADD: %v %v", cniErr, err)
			}
			before := snapshot(t, bystander.Path())
			ip.commands()

			file := filepath.Join(t.TempDir(), "not-a-netns")
			if err := os.WriteFile(file, []byte("a regular file\n"), 0o640); err != nil {
				t.Fatal(err)
			}
			pod := richMeshPod("fault-netns", "victim")
			ip.pods.add(pod)
			for _, tc := range []struct {
				name, path, want string
				code             uint
			}{
				{"gone", goneNS(t), "network namespace is gone", types.ErrInvalidNetNS},
				{"regular file", file, "is not a network namespace", types.ErrInvalidNetNS},
				{"directory", t.TempDir(), "is not a network namespace", types.ErrInvalidNetNS},
				{"an IPC namespace", "/proc/self/ns/ipc", "is not a network namespace", types.ErrInvalidNetNS},
			} {
				t.Run(tc.name, func(t *testing.T) {
					fileBefore, _ := os.ReadFile(file)
					a := ip.args(t, pod, tc.path, true)
					for _, cmd := range []string{"ADD", "CHECK"} {
						var cniErr *types.Error
						var err error
						if cmd == "ADD" {
							cniErr, err = ip.add(a)
						} else {
							cniErr, err = ip.check(a)
						}
						if err != nil {
							t.Fatalf("%s: %v", cmd, err)
						}
						if cniErr == nil {
							t.Fatalf("%s with netns %s succeeded", cmd, tc.path)
						}
						text := cniErr.Msg + ": " + cniErr.Details
						if !strings.Contains(text, tc.path) || !strings.Contains(text, tc.want) {
							t.Errorf("%s error %q: want the path and %q", cmd, text, tc.want)
						}
						if cniErr.Code != tc.code {
							t.Errorf("%s error code %d, want %d", cmd, cniErr.Code, tc.code)
						}
						t.Logf("%s: code %d %s", cmd, cniErr.Code, firstLine(text))
					}
					if cniErr, err := ip.del(a); err != nil || cniErr != nil {
						t.Errorf("DEL with netns %s: %v %v; DEL must succeed", tc.path, cniErr, err)
					}
					if ran := ip.commands(); len(ran) > 0 {
						t.Errorf("commands ran for a bad netns path: %v", ran)
					}
					if after, _ := os.ReadFile(file); string(after) != string(fileBefore) {
						t.Errorf("the regular file changed: %q", after)
					}
					if ents, _ := os.ReadDir(ip.lockDir); len(ents) > 0 {
						t.Errorf("lock dir holds %v", ents)
					}
				})
			}
			if after := snapshot(t, bystander.Path()); after != before {
				t.Errorf("the bystander's netns changed:\n%s\n---\n%s", before, after)
			}
		})
	}
}

// A bad netns path should be CNI error 8 (invalid netns), whatever is
// wrong with it, not 999 for a file or directory, nor CHECK's "not as its
// spec demands".
func TestBadNetnsPathCodes(t *testing.T) {
	ip := newInproc(t, netfilter.NFT, nil)
	pod := richMeshPod("fault-netns", "codes")
	ip.pods.add(pod)
	for _, path := range []string{goneNS(t), t.TempDir()} {
		a := ip.args(t, pod, path, false)
		if cniErr, _ := ip.add(a); cniErr == nil || cniErr.Code != types.ErrInvalidNetNS {
			t.Errorf("ADD with %s: %+v, want code 8", path, cniErr)
		}
		if cniErr, _ := ip.check(a); cniErr == nil || cniErr.Code != types.ErrInvalidNetNS {
			t.Errorf("CHECK with %s: %+v, want code 8", path, cniErr)
		}
	}
}

// Another pod's netns given to CHECK or ADD (a runtime mix-up): CHECK
// reads and reports, ADD of a different spec is refused as a conflict;
// neither changes the other pod's rules, and nothing runs outside it.
func TestAnotherPodsNetns(t *testing.T) {
	for _, v := range append(backends, "nftables-netlink") {
		t.Run(string(v), func(t *testing.T) {
			var ip *inproc
			if v == "nftables-netlink" {
				ip = newInprocNetlink(t)
			} else {
				ip = newInproc(t, v, nil)
			}
			other := newNS(t)
			otherPod := richMeshPod("fault-netns", "owner")
			ip.pods.add(otherPod)
			if cniErr, err := ip.add(ip.args(t, otherPod, other.Path(), true)); err != nil || cniErr != nil {
				t.Fatalf("owner's ADD: %v %v", cniErr, err)
			}
			before := snapshot(t, other.Path())
			otherID, _ := netns.ID(other.Path())
			ip.commands()

			// A pod whose spec differs: its own annotation.
			intruder := richMeshPod("fault-netns", "intruder")
			intruder.Annotations["traffic.sidecar.istio.io/excludeOutboundPorts"] = "3306"
			ip.pods.add(intruder)
			a := ip.args(t, intruder, other.Path(), true)
			if cniErr, err := ip.check(a); err != nil || cniErr == nil || !strings.Contains(cniErr.Details, "differ") {
				t.Errorf("CHECK of another pod's netns: %v %v; want a mismatch", cniErr, err)
			}
			cniErr, err := ip.add(a)
			if err != nil || cniErr == nil || cniErr.Code != types.ErrInvalidNetworkConfig || !strings.Contains(cniErr.Details, "already holds different capture rules") {
				t.Errorf("ADD into another pod's netns: %v %v; want code 7, a conflict", cniErr, err)
			}
			if after := snapshot(t, other.Path()); after != before {
				t.Errorf("the other pod's rules changed:\n%s\n---\n%s", before, after)
			}
			for id, cmds := range ip.commands() {
				if id != otherID && !scratch(cmds) {
					t.Errorf("commands ran in netns %s: %v", id, cmds)
				}
			}
		})
	}
}

// scratch reports whether cmds are what scratch netns see: renders
// (restore or nft -f), each followed by its save or list. One ID may hold
// several such visits: a scratch netns is gone as soon as it is read, and
// the kernel may give the next one (CHECK's, then ADD's, or one per family)
// the same inode.
func scratch(cmds []string) bool {
	if len(cmds)%2 != 0 {
		return false
	}
	for i := 0; i < len(cmds); i += 2 {
		render, read := cmds[i], cmds[i+1]
		if !(strings.HasSuffix(render, "-restore") || render == "nft") || !(strings.HasSuffix(read, "-save") || read == "nft") {
			return false
		}
	}
	return true
}

// DEL for pod A given pod B's netns removes B's capture: the plug-in has
// no way to tell whose rules they are.
func TestDelOfAnotherPodsNetns(t *testing.T) {
	ip := newInproc(t, netfilter.NFT, nil)
	b := newNS(t)
	podB := richMeshPod("fault-netns", "b")
	ip.pods.add(podB)
	if cniErr, err := ip.add(ip.args(t, podB, b.Path(), true)); err != nil || cniErr != nil {
		t.Fatalf("B's ADD: %v %v", cniErr, err)
	}
	before := snapshot(t, b.Path())
	podA := richMeshPod("fault-netns", "a")
	ip.pods.add(podA)
	aArgs := ip.args(t, podA, b.Path(), true)
	aArgs.ContainerID = "c-a"
	if cniErr, err := ip.del(aArgs); err != nil || cniErr != nil {
		t.Fatalf("DEL: %v %v", cniErr, err)
	}
	if after := snapshot(t, b.Path()); after != before {
		t.Errorf("DEL of pod A removed pod B's rules")
	}
}

// The runtime hands the plug-in its own network namespace (the node's):
// programming it would send all of the node's outbound traffic to a
// sidecar that is not there; DEL would take the node's own ISTIO_* rules.
// The "node" is a test netns with the API forwarded into it, where the
// plug-in binary runs. skel does refuse the plug-in's own netns, with
// code 8, but only after the plug-in's ADD or DEL has run.
func TestOwnNetnsIsRefused(t *testing.T) {
	node, err := testbed.NewNode(testbed.Options{ForwardPorts: []int{apiPort(t)}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)
	pod := meshPod(t, "fault-netns")
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	if err := kubeconfigFile(kc); err != nil {
		t.Fatal(err)
	}
	conf := netconf(t, node.NS.Path(), false, map[string]any{"kubeconfig": kc, "lockDir": t.TempDir()})
	args := k8sArgs(pod.Namespace, pod.Name, string(pod.UID))

	inv := runPluginIn(t, node.NS.Path(), "ADD", node.NS.Path(), args, conf)
	if inv.err == nil || inv.err.Code != types.ErrInvalidNetNS {
		t.Errorf("ADD with the plug-in's own netns: %+v, want code 8", inv.err)
	}
	if r := residue(t, node.NS.Path()); len(r) > 0 {
		t.Errorf("ADD changed the plug-in's own netns (%d lines), then failed", len(r))
	}

	// The node's own capture rules (a host-network proxy's, say).
	a := netfilter.New(netfilter.Options{Backend: netfilter.NFT, LockDir: t.TempDir(), Run: guard(netfilter.ExecRunner, nil)})
	_ = a.Remove(context.Background(), node.NS.Path())
	if err := a.Apply(context.Background(), node.NS.Path(), capture.Default()); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, node.NS.Path())
	inv = runPluginIn(t, node.NS.Path(), "DEL", node.NS.Path(), args, conf)
	if inv.err == nil || inv.err.Code != types.ErrInvalidNetNS {
		t.Errorf("DEL with the plug-in's own netns: %+v, want code 8", inv.err)
	}
	if after := snapshot(t, node.NS.Path()); after != before {
		t.Errorf("DEL removed the rules of the plug-in's own netns")
	}
}

func apiPort(t testing.TB) int {
	t.Helper()
	p, err := strconv.Atoi(strings.TrimPrefix(cluster.URL, "https://127.0.0.1:"))
	if err != nil {
		t.Fatalf("API URL %s: %v", cluster.URL, err)
	}
	return p
}

// kubeconfigFile writes the plug-in's kubeconfig, straight to the API.
func kubeconfigFile(path string) error {
	return kubeharness.WriteKubeconfig(path, cluster.URL, cluster.CAData, pluginToken)
}
