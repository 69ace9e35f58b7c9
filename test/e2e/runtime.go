//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/meshcni/meshcni/test/daemon"
)

// Runtime is a containerd of the suite's own: config, root, state, sockets
// and logs under Dir, running inside the node network namespace, with its
// containers in a cgroup of the suite's own, so that Close can find and
// remove everything it made even after a crash.
type Runtime struct {
	Dir    string
	NodeNS string // the node netns path it runs in
	Sock   string
	Cgroup string // cgroup parent of every pod, e.g. /meshcni-e2e-1234
	Log    string

	crictl     string
	crictlConf string
	containerd *daemon.Proc
	closing    atomic.Bool
}

// RuntimeOptions are what the CRI plug-in is pointed at.
type RuntimeOptions struct {
	NodeNS       string
	CNIBinDir    string
	CNIConfDir   string
	SandboxImage string
}

// shimSocketDir is where containerd 1.6's shims put their sockets,
// whatever the daemon's state dir: /run/containerd/s/<sha256 of
// "<daemon address>/<namespace>/<shim id>"> (runtime/v2/shim.SocketAddress).
const shimSocketDir = "/run/containerd/s"

// shimSockets are the sockets of this containerd's shims, one per task
// dir (a pod's shim is named after its sandbox).
func (r *Runtime) shimSockets() []string {
	ids, _ := os.ReadDir(filepath.Join(r.Dir, "state", "io.containerd.runtime.v2.task", "k8s.io"))
	var socks []string
	for _, id := range ids {
		sum := sha256.Sum256([]byte(filepath.Join(r.Sock, "k8s.io", id.Name())))
		socks = append(socks, filepath.Join(shimSocketDir, hex.EncodeToString(sum[:])))
	}
	return socks
}

// StartRuntime starts containerd inside o.NodeNS and waits for CRI.
func StartRuntime(ctx context.Context, o RuntimeOptions) (_ *Runtime, err error) {
	containerd, err := exec.LookPath("containerd")
	if err != nil {
		return nil, fmt.Errorf("containerd is not installed (hack/e2e-deps.sh installs it): %w", err)
	}
	if _, err := exec.LookPath("runc"); err != nil {
		return nil, fmt.Errorf("runc is not installed (hack/e2e-deps.sh installs it): %w", err)
	}
	crictl, err := findCrictl()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "meshcni-e2e-")
	if err != nil {
		return nil, err
	}
	r := &Runtime{
		Dir: dir, NodeNS: o.NodeNS, Sock: filepath.Join(dir, "containerd.sock"),
		Cgroup: "/" + filepath.Base(dir), Log: filepath.Join(dir, "containerd.log"),
		crictl: crictl, crictlConf: filepath.Join(dir, "crictl.yaml"),
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\ncontainerd log:\n%s", err, r.LogTail(30))
			r.Close()
		}
	}()
	conf := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(conf, []byte(daemon.Containerd{
		Dir: r.Dir, Sock: r.Sock, SandboxImage: o.SandboxImage, CNIBinDir: o.CNIBinDir, CNIConfDir: o.CNIConfDir,
	}.Config()), 0o644); err != nil {
		return nil, err
	}
	crictlYAML := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n", r.Sock, r.Sock)
	if err := os.WriteFile(r.crictlConf, []byte(crictlYAML), 0o644); err != nil {
		return nil, err
	}
	if r.containerd, err = startInNetns("containerd", o.NodeNS, r.Log, containerd, "--config", conf, "--log-level", "debug"); err != nil {
		return nil, err
	}

	deadline := time.Now().Add(30 * time.Second)
	for {
		_, cerr := r.Crictl(ctx, "info")
		if cerr == nil {
			return r, nil
		}
		select {
		case <-r.containerd.Done():
			return nil, fmt.Errorf("containerd exited at start: %s", r.containerd.State())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("containerd's CRI did not answer within 30s: %w", cerr)
		}
	}
}

func findCrictl() (string, error) {
	if p, err := exec.LookPath("crictl"); err == nil {
		return p, nil
	}
	cache := os.Getenv("MESHCNI_CACHE")
	if cache == "" {
		cache = "/var/cache/meshcni"
	}
	p := filepath.Join(cache, "bin", "crictl")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("crictl is neither in PATH nor at %s (hack/e2e-deps.sh builds it)", p)
	}
	return p, nil
}

// Crictl runs crictl against this runtime, inside the node netns: the
// streaming server (exec, attach) listens on the node's loopback.
func (r *Runtime) Crictl(ctx context.Context, args ...string) (string, error) {
	return r.CrictlIn(ctx, nil, args...)
}

// CrictlIn is Crictl with stdin.
func (r *Runtime) CrictlIn(ctx context.Context, stdin []byte, args ...string) (string, error) {
	full := append([]string{"--net=" + r.NodeNS, r.crictl, "--config", r.crictlConf}, args...)
	return runCmd(ctx, stdin, "nsenter", full...)
}

// Ctr runs ctr against this runtime in the k8s.io namespace (CRI's).
func (r *Runtime) Ctr(ctx context.Context, args ...string) (string, error) {
	return runCmd(ctx, nil, "ctr", append([]string{"--address", r.Sock, "--namespace", "k8s.io"}, args...)...)
}

func runCmd(ctx context.Context, stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// LogTail returns containerd's last n log lines.
func (r *Runtime) LogTail(n int) string {
	if r.containerd == nil {
		return ""
	}
	return r.containerd.Tail(n)
}

// Close removes every pod through CRI (so CNI DEL runs), stops containerd,
// then sweeps whatever is left: processes in the suite's cgroup or shims
// that serve this containerd, cgroups, mounts under Dir, shim sockets, and
// Dir. It reports what it had to sweep, for the log.
func (r *Runtime) Close() []string {
	r.closing.Store(true)
	var swept []string
	socks := r.shimSockets()
	if r.containerd != nil {
		if !r.containerd.Exited() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			if out, err := r.Crictl(ctx, "rmp", "--all", "--force"); err != nil {
				swept = append(swept, fmt.Sprintf("crictl rmp --all --force: %v %s", err, out))
			}
			cancel()
		}
		if note := r.containerd.Stop(15 * time.Second); note != "" {
			swept = append(swept, note)
		}
	}
	for _, pid := range r.leftoverPIDs() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		swept = append(swept, "killed leftover pid "+strconv.Itoa(pid))
	}
	// A cgroup whose last task is still exiting is retried for 5s.
	swept = append(swept, daemon.RemoveCgroups(r.Cgroup, 5*time.Second)...)
	swept = append(swept, daemon.UnmountUnder(r.Dir)...)
	for _, sock := range socks {
		if err := os.Remove(sock); err == nil {
			swept = append(swept, "removed shim socket "+sock)
		}
	}
	// Only if empty: another containerd's shims may use them.
	_ = os.Remove(shimSocketDir)
	_ = os.Remove(filepath.Dir(shimSocketDir))
	if err := os.RemoveAll(r.Dir); err != nil {
		swept = append(swept, "remove "+r.Dir+": "+err.Error())
	}
	return swept
}

// leftoverPIDs are the processes in the suite's cgroup (containers) and
// the shims whose command line names this containerd's socket.
func (r *Runtime) leftoverPIDs() []int {
	return daemon.PIDs(r.Cgroup, func(cmdline []byte) bool {
		return bytes.Contains(cmdline, []byte(r.Sock+"\x00")) || bytes.HasSuffix(cmdline, []byte(r.Sock))
	})
}

// CNIConfig is the conflist the CRI plug-in has loaded for pods' eth0,
// as `crictl info` shows it (cniconfig.Networks[].Config.Source).
func (r *Runtime) CNIConfig(ctx context.Context) (string, error) {
	out, err := r.Crictl(ctx, "info")
	if err != nil {
		return "", err
	}
	var info struct {
		Config struct {
			Networks []struct {
				Config struct{ Source string }
				IFName string
			}
		} `json:"cniconfig"`
		Status string `json:"lastCNILoadStatus"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		return "", fmt.Errorf("crictl info: %w", err)
	}
	for _, n := range info.Config.Networks {
		if n.IFName == "eth0" {
			return n.Config.Source, nil
		}
	}
	return "", fmt.Errorf("containerd has no pod network loaded (last load: %s)", info.Status)
}

// WaitCNIConfig waits until the loaded conflist satisfies ok: containerd
// reloads its conf dir on its own, without a restart.
func (r *Runtime) WaitCNIConfig(ctx context.Context, what string, ok func(conflist string) bool) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		src, err := r.CNIConfig(ctx)
		if err == nil && ok(src) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not load a conflist %s within 20s (last: %v %s)", what, err, src)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Closing reports whether Close has begun (a signal or the watchdog):
// tests still running then skip their own cleanup.
func (r *Runtime) Closing() bool { return r.closing.Load() }

// SweepStale removes what an earlier run killed with SIGKILL left behind:
// a runtime dir of ours whose containerd no longer answers, its shims,
// containers, cgroups, mounts and shim sockets. A dir younger than two
// minutes may be a concurrent run still starting, and is left alone.
func SweepStale() []string {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "meshcni-e2e-[0-9]*"))
	var swept []string
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < 2*time.Minute {
			continue
		}
		sock := filepath.Join(dir, "containerd.sock")
		if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
			_ = c.Close()
			continue // alive: another run's
		}
		r := &Runtime{Dir: dir, Sock: sock, Cgroup: "/" + filepath.Base(dir)}
		swept = append(swept, "stale "+dir)
		swept = append(swept, r.Close()...)
	}
	return swept
}
