//go:build integration

package fault

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/internal/install"
	"github.com/meshcni/meshcni/test/testbed"
)

const (
	primaryList = `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`
	// What the primary CNI writes when it rewrites its config: meshcni's
	// entry is gone.
	primaryListV2 = `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "mtu": 1450, "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`
	fakeCA = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n"
)

// agentNode is an agent running in-process over a node's directories.
type agentNode struct {
	a                      *agent.Agent
	o                      agent.Options
	log                    *testbed.SyncBuffer
	conf, bin, run, tokDir string
	cancel                 context.CancelFunc
	done                   chan error
}

// startAgent runs an agent whose conf and run dirs are given (tmpfs
// mounts in the disk tests); the rest lives in a temp dir.
func startAgent(t *testing.T, conf, run string) *agentNode {
	t.Helper()
	root := t.TempDir()
	n := &agentNode{conf: conf, run: run, bin: filepath.Join(root, "opt/cni/bin"), tokDir: filepath.Join(root, "sa"), log: &testbed.SyncBuffer{}}
	src := filepath.Join(root, "image", "meshcni")
	for _, d := range []string{n.bin, n.tokDir, filepath.Dir(src)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for p, data := range map[string]string{src: "\x7fELF fake meshcni\n", filepath.Join(n.tokDir, "token"): "token-1\n", filepath.Join(n.tokDir, "ca.crt"): fakeCA} {
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	o := agent.DefaultOptions()
	o.CNIConfDir, o.CNIBinDir, o.RunDir, o.PluginBinary = conf, n.bin, run, src
	o.TokenPath, o.CAPath = filepath.Join(n.tokDir, "token"), filepath.Join(n.tokDir, "ca.crt")
	o.APIServer, o.HealthAddr = "https://10.96.0.1:443", ""
	o.Resync = 5 * time.Second
	n.o = o
	a, err := agent.New(o, slog.New(slog.NewJSONHandler(n.log, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	n.a = a
	ctx, cancel := context.WithCancel(context.Background())
	n.cancel, n.done = cancel, make(chan error, 1)
	go func() { n.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			t.Logf("agent log:\n%s", n.log)
		}
	})
	return n
}

func (n *agentNode) stop(t *testing.T) {
	if n.cancel == nil {
		return
	}
	n.cancel()
	n.cancel = nil
	select {
	case <-n.done:
	case <-time.After(10 * time.Second):
		t.Error("agent did not stop within 10s")
	}
}

func (n *agentNode) installed() bool {
	st, err := install.Check(n.conf, mustEntry(n.o))
	return err == nil && st.Installed()
}

func mustEntry(o agent.Options) []byte {
	e, err := o.Entry()
	if err != nil {
		panic(err)
	}
	return e
}

// readyz is what the kubelet's readiness probe sees.
func (n *agentNode) readyz() (int, string) {
	rec := httptest.NewRecorder()
	n.a.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
	return rec.Code, rec.Body.String()
}

func (n *agentNode) metric(name string) string {
	rec := httptest.NewRecorder()
	n.a.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			return v
		}
	}
	return ""
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
	}
}

// waitNotReady waits until the agent reports not ready for a reason that
// holds want, and checks that /readyz and the gauge say the same.
func (n *agentNode) waitNotReady(t *testing.T, want string) string {
	t.Helper()
	var reason string
	waitFor(t, 5*time.Second, "not ready saying "+want, func() bool {
		var ready bool
		ready, reason = n.a.Ready()
		return !ready && strings.Contains(reason, want)
	})
	if code, body := n.readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		t.Errorf("/readyz = %d %q, want 503 saying %q", code, body, want)
	}
	if v := n.metric("meshcni_agent_ready"); v != "0" {
		t.Errorf("meshcni_agent_ready = %q, want 0", v)
	}
	return reason
}

func (n *agentNode) waitInstalled(t *testing.T) {
	t.Helper()
	waitFor(t, 5*time.Second, "installed and ready", func() bool {
		ready, _ := n.a.Ready()
		return ready && n.installed()
	})
}

// replaceAtomic writes path as a primary CNI does: temp file, rename.
// dir is where the temp file goes (the writable view of a read-only one).
func replaceAtomic(t *testing.T, dir, path, data string) {
	t.Helper()
	tmp := filepath.Join(dir, ".primary.tmp")
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, filepath.Base(path))); err != nil {
		t.Fatal(err)
	}
}

// fill writes a filler file until the file system is full.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := bytes.Repeat([]byte{'x'}, 1024)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	_, _ = f.Write([]byte{'x'}) // the last partial page
	return p
}

// assertNoTemp fails if one of the agent's temp files stays in dir. A
// file seen once may be an attempt in flight (the agent retries on every
// change it sees, and each attempt has a new name), so it counts as left
// only if it is still there 200 ms later.
func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	tmps, _ := filepath.Glob(filepath.Join(dir, ".meshcni-*.tmp"))
	if len(tmps) == 0 {
		return
	}
	time.Sleep(200 * time.Millisecond)
	var left []string
	for _, f := range tmps {
		if _, err := os.Lstat(f); err == nil {
			left = append(left, f)
		}
	}
	if len(left) > 0 {
		t.Errorf("temp files left in %s: %v", dir, left)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAgentDiskFaults runs TestAgentDiskFaultsChild in a child process
// with a private mount namespace (unshare --mount --propagation private):
// its tmpfs mounts and read-only remounts never reach the host's mounts,
// and vanish with it.
func TestAgentDiskFaults(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Fatal("unshare (util-linux) is needed for a private mount namespace")
	}
	mnt, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "--", os.Args[0], "-test.run=^TestAgentDiskFaultsChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1", "MESHCNI_FAULT_PARENT_MNT="+mnt)
	out, err := cmd.CombinedOutput()
	t.Logf("child:\n%s", out)
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestAgentDiskFaultsChild")) {
		t.Fatalf("child failed: %v", err)
	}
}

// tmpfs mounts a tmpfs of size bytes on a new temp dir (child only).
func tmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("meshcni-fault", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// readOnlyView bind-mounts dir on a new temp dir, read-only when ro; the
// returned function flips it.
func readOnlyView(t *testing.T, dir string) (string, func(ro bool)) {
	t.Helper()
	view := t.TempDir()
	if err := unix.Mount(dir, view, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(view, unix.MNT_DETACH) })
	return view, func(ro bool) {
		flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND)
		if ro {
			flags |= unix.MS_RDONLY
		}
		if err := unix.Mount("", view, "", flags, ""); err != nil {
			t.Fatalf("remount %s (ro %v): %v", view, ro, err)
		}
	}
}

func TestAgentDiskFaultsChild(t *testing.T) {
	parent := os.Getenv("MESHCNI_FAULT_PARENT_MNT")
	if os.Getenv(childEnv) == "" || parent == "" {
		t.Skip("run by TestAgentDiskFaults in a private mount namespace")
	}
	if mnt, err := os.Readlink("/proc/self/ns/mnt"); err != nil || mnt == parent {
		t.Fatalf("not in a mount namespace of its own (%s, parent %s, %v): refusing to mount", mnt, parent, err)
	}

	// The conf dir fills up before the first install: the primary's
	// conflist stays as it was, the agent is not ready and says why, and
	// installs once space is freed.
	t.Run("conf dir full at install", func(t *testing.T) {
		conf := tmpfs(t, "16k")
		list := filepath.Join(conf, "10-bridge.conflist")
		if err := os.WriteFile(list, []byte(primaryList), 0o644); err != nil {
			t.Fatal(err)
		}
		filler := fill(t, conf)
		n := startAgent(t, conf, t.TempDir())
		reason := n.waitNotReady(t, "no space left on device")
		if !strings.Contains(reason, list) {
			t.Errorf("reason %q does not name %s", reason, list)
		}
		if got := mustRead(t, list); got != primaryList {
			t.Errorf("the primary's conflist changed:\n%s", got)
		}
		assertNoTemp(t, conf)
		if !strings.Contains(n.log.String(), "no space left on device") {
			t.Error("the agent did not log the failure")
		}
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		n.waitInstalled(t)
		t.Logf("not ready: %s", reason)
	})

	// The primary CNI rewrites its config (dropping meshcni's entry)
	// while the disk is full: the agent cannot put its entry back, the
	// primary's new file is what the runtime reads, intact, and the agent
	// reports it until space is back.
	t.Run("conf dir full during re-insert", func(t *testing.T) {
		conf := tmpfs(t, "16k")
		list := filepath.Join(conf, "10-bridge.conflist")
		if err := os.WriteFile(list, []byte(primaryList), 0o644); err != nil {
			t.Fatal(err)
		}
		n := startAgent(t, conf, t.TempDir())
		n.waitInstalled(t)
		// The primary's new version is written, then the disk fills, then
		// it is renamed into place. The replaced file is held open, so that
		// its pages stay in use: the rename frees no space.
		tmp := filepath.Join(conf, ".primary.tmp")
		if err := os.WriteFile(tmp, []byte(primaryListV2), 0o644); err != nil {
			t.Fatal(err)
		}
		held, err := os.Open(list)
		if err != nil {
			t.Fatal(err)
		}
		defer held.Close()
		filler := fill(t, conf)
		if err := os.Rename(tmp, list); err != nil {
			t.Fatal(err)
		}
		reason := n.waitNotReady(t, "no space left on device")
		if got := mustRead(t, list); got != primaryListV2 {
			t.Errorf("the primary's conflist is not what it wrote:\n%s", got)
		}
		assertNoTemp(t, conf)
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		n.waitInstalled(t)
		t.Logf("not ready: %s", reason)
	})

	// The conf dir is read-only to the agent (a remount, a read-only
	// hostPath) when the primary rewrites its config.
	t.Run("conf dir read-only during re-insert", func(t *testing.T) {
		backing := tmpfs(t, "1m")
		conf, setRO := readOnlyView(t, backing)
		list := filepath.Join(conf, "10-bridge.conflist")
		if err := os.WriteFile(list, []byte(primaryList), 0o644); err != nil {
			t.Fatal(err)
		}
		n := startAgent(t, conf, t.TempDir())
		n.waitInstalled(t)
		setRO(true)
		replaceAtomic(t, backing, list, primaryListV2) // the primary's own, writable, view
		reason := n.waitNotReady(t, "read-only file system")
		if got := mustRead(t, list); got != primaryListV2 {
			t.Errorf("the primary's conflist is not what it wrote:\n%s", got)
		}
		assertNoTemp(t, backing)
		setRO(false)
		n.waitInstalled(t)
		t.Logf("not ready: %s", reason)
	})

	t.Run("conf dir read-only at install", func(t *testing.T) {
		backing := tmpfs(t, "1m")
		if err := os.WriteFile(filepath.Join(backing, "10-bridge.conflist"), []byte(primaryList), 0o644); err != nil {
			t.Fatal(err)
		}
		conf, setRO := readOnlyView(t, backing)
		setRO(true)
		n := startAgent(t, conf, t.TempDir())
		n.waitNotReady(t, "read-only file system")
		if got := mustRead(t, filepath.Join(conf, "10-bridge.conflist")); got != primaryList {
			t.Errorf("the primary's conflist changed:\n%s", got)
		}
		setRO(false)
		n.waitInstalled(t)
	})

	// The run dir fills up when the token rotates: the plug-in keeps the
	// old kubeconfig (valid until the old token expires), mode 0600, and
	// the agent reports that it could not write the new one.
	t.Run("run dir full at token rotation", func(t *testing.T) {
		conf := t.TempDir()
		if err := os.WriteFile(filepath.Join(conf, "10-bridge.conflist"), []byte(primaryList), 0o644); err != nil {
			t.Fatal(err)
		}
		run := tmpfs(t, "16k")
		n := startAgent(t, conf, run)
		n.waitInstalled(t)
		kc := n.o.KubeconfigPath()
		old := mustRead(t, kc)
		filler := fill(t, run)
		if err := os.WriteFile(filepath.Join(n.tokDir, "token"), []byte("token-2\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		reason := n.waitNotReady(t, "no space left on device")
		if !strings.Contains(reason, "kubeconfig") {
			t.Errorf("reason %q does not say it is the kubeconfig", reason)
		}
		if got := mustRead(t, kc); got != old {
			t.Errorf("the kubeconfig changed under a full disk:\n%s", got)
		}
		if fi, err := os.Stat(kc); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("kubeconfig mode %v (%v), want 0600", fi.Mode(), err)
		}
		assertNoTemp(t, run)
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "new token in the kubeconfig", func() bool {
			b, _ := os.ReadFile(kc)
			return strings.Contains(string(b), "token-2")
		})
		n.waitInstalled(t)
	})
}

// The files the agent writes carry safe modes: the kubeconfig (a token)
// and the log socket only for root, the plug-in binary not writable by
// others, the primary's conflist keeping its own mode.
func TestAgentFileModes(t *testing.T) {
	conf := t.TempDir()
	list := filepath.Join(conf, "10-bridge.conflist")
	if err := os.WriteFile(list, []byte(primaryList), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(list, 0o600); err != nil {
		t.Fatal(err)
	}
	n := startAgent(t, conf, t.TempDir())
	n.waitInstalled(t)
	for _, f := range []struct {
		path string
		mode fs.FileMode
		typ  fs.FileMode
	}{
		{n.o.KubeconfigPath(), 0o600, 0},
		{n.o.SocketPath(), 0o600, fs.ModeSocket},
		{n.o.InstalledBinary(), 0o755, 0},
		{list, 0o600, 0},
	} {
		fi, err := os.Lstat(f.path)
		if err != nil {
			t.Errorf("%s: %v", f.path, err)
			continue
		}
		if fi.Mode().Perm() != f.mode || fi.Mode().Type() != f.typ {
			t.Errorf("%s: mode %v, want %v%v", f.path, fi.Mode(), f.typ, f.mode)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 {
			t.Errorf("%s: owned by uid %d, want root", f.path, st.Uid)
		}
	}
}
