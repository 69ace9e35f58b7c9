package cluster

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Close stops everything by PID, in an order that lets each piece clean up
// after itself (pods through CRI, so CNI DEL runs, before containerd;
// the API server last), sweeps what is left, and then checks that nothing
// of the cluster remains: it returns an error naming whatever does.
func (c *Cluster) Close() error {
	var notes []string
	note := func(s string) {
		if s != "" {
			notes = append(notes, s)
		}
	}
	for _, n := range c.Nodes {
		note(n.proxy.stop(10 * time.Second))
		note(n.kubelet.stop(10 * time.Second))
	}
	note(c.sched.stop(10 * time.Second))
	note(c.cm.stop(10 * time.Second))
	for _, n := range c.Nodes {
		if n.containerd != nil && !n.containerd.Exited() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			if out, err := n.Crictl(ctx, "rmp", "--all", "--force"); err != nil {
				note(fmt.Sprintf("%s: crictl rmp --all --force: %v %s", n.Name, err, out))
			}
			cancel()
		}
		note(n.containerd.stop(15 * time.Second))
	}
	note(c.api.stop(10 * time.Second))
	note(c.etcd.stop(10 * time.Second))
	// Each node's mount namespace, and every mount in it (pod volumes,
	// rootfs overlays, netns files), goes with its holder and whatever
	// process is still in it.
	for _, n := range c.Nodes {
		note(n.holder.stop(5 * time.Second))
	}
	for _, pid := range c.leftoverPIDs() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		note("killed leftover pid " + strconv.Itoa(pid))
	}
	notes = append(notes, c.removeCgroups()...)
	for _, ns := range c.netnsNames() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			note(fmt.Sprintf("ip netns del %s: %v %s", ns, err, out))
		}
	}
	for _, p := range unmountUnder(c.Dir) {
		note("unmounted " + p)
	}
	if err := os.RemoveAll(c.Dir); err != nil {
		note("remove " + c.Dir + ": " + err.Error())
	}
	for _, mp := range hostMountPoints {
		_ = os.Remove(c.mountMarker(mp))
	}
	// Only if still empty: another run's node may be using them.
	for _, mp := range c.madeMounts {
		_ = os.Remove(mp)
	}
	left := c.Leftovers()
	if len(left) > 0 {
		return fmt.Errorf("the cluster left things behind: %s\n(while closing: %s)", strings.Join(left, "; "), strings.Join(notes, "; "))
	}
	return nil
}

// leftoverPIDs are the processes in the cluster's cgroups (containers)
// and those whose command line names the cluster's dir (shims, daemons).
func (c *Cluster) leftoverPIDs() []int {
	var pids []int
	seen := map[int]bool{os.Getpid(): true}
	_ = filepath.WalkDir(filepath.Join("/sys/fs/cgroup/pids", c.Name), func(p string, d os.DirEntry, err error) error {
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
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || seen[pid] {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if bytes.Contains(b, []byte(c.Dir+"/")) {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	return pids
}

// removeCgroups removes the cluster's cgroup tree from every hierarchy,
// deepest first; a cgroup whose last task is still exiting is retried.
func (c *Cluster) removeCgroups() []string {
	var notes []string
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", c.Name))
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
			err := waitFor(context.Background(), "remove cgroup "+d, 10*time.Second, func() error {
				if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
				return nil
			})
			if err != nil {
				notes = append(notes, err.Error())
			}
		}
	}
	return notes
}

// mountMarker is the file of this cluster's in a host mount point.
func (c *Cluster) mountMarker(mp string) string { return filepath.Join(mp, "."+c.Name) }

func (c *Cluster) netnsNames() []string {
	var names []string
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), c.Name+"-") {
			names = append(names, e.Name())
		}
	}
	return names
}

// Leftovers lists whatever of the cluster still exists on the host: a
// process, a netns, a mount, a cgroup, its directory.
func (c *Cluster) Leftovers() []string {
	var left []string
	for _, pid := range c.leftoverPIDs() {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		left = append(left, fmt.Sprintf("process %d (%s)", pid, strings.ReplaceAll(string(b), "\x00", " ")))
	}
	for _, ns := range c.netnsNames() {
		left = append(left, "netns "+ns)
	}
	for _, m := range mountsUnder(c.Dir) {
		left = append(left, "mount "+m)
	}
	if cg, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", c.Name)); len(cg) > 0 {
		left = append(left, "cgroups "+strings.Join(cg, " "))
	}
	if _, err := os.Stat(c.Dir); err == nil {
		left = append(left, "dir "+c.Dir)
	}
	for _, mp := range hostMountPoints {
		if _, err := os.Stat(c.mountMarker(mp)); err == nil {
			left = append(left, "file "+c.mountMarker(mp))
		}
	}
	if c.hostSysctls != nil {
		now := readSysctls()
		for _, k := range watchedSysctls {
			if now[k] != c.hostSysctls[k] {
				left = append(left, fmt.Sprintf("host sysctl %s changed: %s -> %s", k, c.hostSysctls[k], now[k]))
			}
		}
	}
	return left
}

func mountsUnder(dir string) []string {
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
	return points
}

// unmountUnder detaches every host mount at or below dir, deepest first
// (there should be none: the nodes' mounts live in their own namespaces).
func unmountUnder(dir string) []string {
	var done []string
	for _, p := range mountsUnder(dir) {
		if err := unix.Unmount(p, unix.MNT_DETACH); err == nil {
			done = append(done, p)
		}
	}
	return done
}

// SweepStale removes what a run killed with SIGKILL left behind: its
// shims and containers, cgroups, netns and dir, for every cluster dir
// whose test process is gone.
func SweepStale() []string {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "meshcni-cluster-[0-9]*"))
	var swept []string
	for _, dir := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "meshcni-cluster-"))
		if err != nil || syscall.Kill(pid, 0) == nil {
			continue // alive: another run's
		}
		c := &Cluster{Name: "mcl" + strconv.Itoa(pid), Dir: dir}
		swept = append(swept, "stale "+dir)
		if err := c.Close(); err != nil {
			swept = append(swept, err.Error())
		}
	}
	return swept
}
