// Package agent tests the meshcni-agent binary: killed at random moments
// while it installs (this file, no root needed), and against a real
// kube-apiserver and a simulated node (integration_test.go, build tag
// integration).
package agent

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshcni/meshcni/internal/install"
	"github.com/meshcni/meshcni/test/testbed"
)

// buildAgent compiles cmd/meshcni-agent into dir.
func buildAgent(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "meshcni-agent")
	cmd := exec.Command("go", "build", "-o", out, "github.com/meshcni/meshcni/cmd/meshcni-agent")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build meshcni-agent: %v\n%s", err, b)
	}
	return out
}

const (
	crashConflist = `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`
	crashConf = `{"cniVersion": "0.3.1", "name": "mynet", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}
`
)

// crashNode is a temp node for the agent binary.
type crashNode struct {
	conf, bin, run, src, token, ca string
	orig                           map[string]string
}

func newCrashNode(t *testing.T, orig map[string]string) *crashNode {
	t.Helper()
	root := t.TempDir()
	n := &crashNode{conf: filepath.Join(root, "net.d"), bin: filepath.Join(root, "bin"), run: filepath.Join(root, "run"),
		src: filepath.Join(root, "image", "meshcni"), token: filepath.Join(root, "sa", "token"), ca: filepath.Join(root, "sa", "ca.crt"), orig: orig}
	for _, d := range []string{n.conf, n.bin, filepath.Dir(n.src), filepath.Dir(n.token)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A plug-in big enough that kills land during its copy too.
	big := make([]byte, 8<<20)
	_, _ = rand.Read(big)
	mustWrite(t, n.src, big)
	mustWrite(t, n.token, []byte("token-1"))
	mustWrite(t, n.ca, []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"))
	n.reset(t)
	return n
}

func mustWrite(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// reset puts the node back to "nothing installed".
func (n *crashNode) reset(t *testing.T) {
	t.Helper()
	for _, d := range []string{n.conf, n.bin, n.run} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range n.orig {
		mustWrite(t, filepath.Join(n.conf, name), []byte(data))
	}
}

func (n *crashNode) start(t *testing.T, agent string, stderr io.Writer) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(agent, "--cni-conf-dir", n.conf, "--cni-bin-dir", n.bin, "--run-dir", n.run,
		"--plugin-binary", n.src, "--token-path", n.token, "--ca-path", n.ca,
		"--api-server", "https://127.0.0.1:6443", "--health-addr", "")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd
}

// state checks that every CNI config in the conf dir loads and that the
// installed files are whole, and describes what the kill left.
func (n *crashNode) state(t *testing.T) string {
	t.Helper()
	ents, err := os.ReadDir(n.conf)
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	entries := 0
	for _, e := range ents {
		p := filepath.Join(n.conf, e.Name())
		switch filepath.Ext(e.Name()) {
		case ".conflist":
			list, err := libcni.ConfListFromFile(p)
			if err != nil || len(list.Plugins) == 0 {
				t.Fatalf("%s does not load: %v", e.Name(), err)
			}
			for _, pl := range list.Plugins {
				if pl.Network.Type == "meshcni" {
					entries++
				}
			}
			if last := list.Plugins[len(list.Plugins)-1]; last.Network.Type == "meshcni" {
				parts = append(parts, e.Name()+"+meshcni")
			} else {
				parts = append(parts, e.Name())
			}
		case ".conf", ".json":
			data, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := libcni.NetworkPluginConfFromBytes(data); err != nil {
				t.Fatalf("%s does not load: %v", e.Name(), err)
			}
			parts = append(parts, e.Name())
		default:
			if strings.HasSuffix(e.Name(), ".tmp") {
				parts = append(parts, "temp")
			} else {
				t.Fatalf("unexpected file %s", e.Name())
			}
		}
	}
	if entries > 1 {
		t.Fatalf("%d meshcni entries", entries)
	}
	if _, err := install.FindPrimary(n.conf); err != nil {
		t.Fatalf("no primary config: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(n.bin, "meshcni")); err == nil {
		src, _ := os.ReadFile(n.src)
		if !bytes.Equal(b, src) {
			t.Fatalf("installed binary is torn: %d of %d bytes", len(b), len(src))
		}
		parts = append(parts, "binary")
	}
	if tmps, _ := filepath.Glob(filepath.Join(n.bin, ".meshcni-*.tmp")); len(tmps) > 0 {
		parts = append(parts, "binary temp")
	}
	if _, err := os.Stat(filepath.Join(n.run, "kubeconfig")); err == nil {
		if _, err := clientcmd.LoadFromFile(filepath.Join(n.run, "kubeconfig")); err != nil {
			t.Fatalf("kubeconfig does not load: %v", err)
		}
		parts = append(parts, "kubeconfig")
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, _ := d.Info()
		b, err := os.ReadFile(p)
		out[strings.TrimPrefix(p, dir)] = fmt.Sprintf("%v %s", fi.Mode(), b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// SIGKILL the agent at random moments of its install, 50 times per
// layout; every kill leaves loadable configs and whole files, and a
// normal run afterwards converges and uninstalls back to the original.
func TestKilledDuringInstall(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the agent binary 100 times")
	}
	agent := buildAgent(t, t.TempDir())
	for _, layout := range []struct {
		name string
		orig map[string]string
	}{
		{"conflist", map[string]string{"10-bridge.conflist": crashConflist}},
		{"wrapped conf", map[string]string{"10-mynet.conf": crashConf, "99-other.conflist": crashConflist}},
	} {
		t.Run(layout.name, func(t *testing.T) {
			n := newCrashNode(t, layout.orig)
			before := snapshotDir(t, n.conf)
			seen := map[string]int{}
			for i := range 50 {
				if i%2 == 0 {
					n.reset(t) // give the agent everything to do again
				} // else: restart from what the last kill left
				cmd := n.start(t, agent, io.Discard)
				time.Sleep(time.Duration(mrand.IntN(31)) * time.Millisecond)
				_ = cmd.Process.Signal(syscall.SIGKILL)
				_ = cmd.Wait()
				seen[n.state(t)]++
			}
			for s, c := range seen {
				t.Logf("%2d kills left: %s", c, s)
			}

			// A normal run converges, then SIGTERM restores the original.
			stderr := &testbed.SyncBuffer{}
			cmd := n.start(t, agent, stderr)
			deadline := time.Now().Add(10 * time.Second)
			for {
				// Read the log before the state: a state read before the
				// line appeared may predate the install.
				installed := strings.Contains(stderr.String(), `"msg":"meshcni is installed; watching"`)
				s := n.state(t)
				// The log line also proves the agent handles SIGTERM by now.
				if installed {
					if s != converged[layout.name] {
						t.Fatalf("installed as %q, want %q", s, converged[layout.name])
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no convergence: %s\n%s", s, stderr.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("agent exit after SIGTERM: %v\n%s", err, stderr.String())
			}
			after := snapshotDir(t, n.conf)
			for k := range mergeKeys(before, after) {
				if before[k] != after[k] {
					t.Errorf("%s after uninstall:\n got %q\nwant %q", k, after[k], before[k])
				}
			}
			for _, p := range []string{filepath.Join(n.bin, "meshcni"), filepath.Join(n.run, "kubeconfig")} {
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Errorf("%s left after uninstall", p)
				}
			}
			if tmps, _ := filepath.Glob(filepath.Join(n.bin, ".meshcni-*.tmp")); len(tmps) > 0 {
				t.Errorf("temp binaries left: %v", tmps)
			}
		})
	}
}

// converged is what state reports once the agent has installed.
var converged = map[string]string{
	"conflist":     "10-bridge.conflist+meshcni binary kubeconfig",
	"wrapped conf": "10-mynet.conflist+meshcni 99-other.conflist binary kubeconfig",
}

func mergeKeys(a, b map[string]string) map[string]bool {
	out := map[string]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}
