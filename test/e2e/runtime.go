//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
	containerd *proc
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
	if err := os.WriteFile(conf, []byte(r.config(o)), 0o644); err != nil {
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
		case <-r.containerd.exited:
			return nil, fmt.Errorf("containerd exited at start: %s", r.containerd.cmd.ProcessState)
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

// config is containerd 1.6's config: everything under r.Dir; CRI with the
// node's CNI dirs; cgroupfs (cgroups v1 here); no AppArmor; OOM score
// adjustments restricted, as this sandbox refuses to lower them.
func (r *Runtime) config(o RuntimeOptions) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  restrict_oom_score_adj = true
  disable_apparmor = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[7]q
    conf_dir = %[8]q
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %[9]q
`, filepath.Join(r.Dir, "root"), filepath.Join(r.Dir, "state"), r.Sock, r.Sock+".ttrpc",
		filepath.Join(r.Dir, "opt"), o.SandboxImage, o.CNIBinDir, o.CNIConfDir, filepath.Join(r.Dir, "runc"))
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
	return r.containerd.tail(n)
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
		if note := r.containerd.stop(15 * time.Second); note != "" {
			swept = append(swept, note)
		}
	}
	for _, pid := range r.leftoverPIDs() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		swept = append(swept, "killed leftover pid "+strconv.Itoa(pid))
	}
	swept = append(swept, r.removeCgroups()...)
	swept = append(swept, unmountUnder(r.Dir)...)
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
	var pids []int
	seen := map[int]bool{}
	_ = filepath.WalkDir(filepath.Join("/sys/fs/cgroup/pids", r.Cgroup), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.Name() != "cgroup.procs" {
			return nil
		}
		b, _ := os.ReadFile(p)
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				pids = append(pids, pid)
			}
		}
		return nil
	})
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || seen[pid] || pid == os.Getpid() {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if bytes.Contains(b, []byte(r.Sock+"\x00")) || bytes.HasSuffix(b, []byte(r.Sock)) {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroups removes the suite's cgroup tree from every v1 hierarchy,
// deepest first.
func (r *Runtime) removeCgroups() []string {
	var swept []string
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", r.Cgroup))
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Sort(sort.Reverse(sort.StringSlice(dirs)))
		for _, d := range dirs {
			for i := 0; i < 50; i++ {
				err := os.Remove(d)
				if err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				if i == 49 {
					swept = append(swept, "cgroup "+d+": "+err.Error())
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	return swept
}

// unmountUnder detaches every mount at or below dir, deepest first: pod
// netns, shm, rootfs overlays, if a crash left them.
func unmountUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	var points []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			points = append(points, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	var swept []string
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err == nil {
			swept = append(swept, "unmounted "+p)
		}
	}
	return swept
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
