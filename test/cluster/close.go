package cluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/meshcni/meshcni/test/daemon"
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
		note(n.proxy.Stop(10 * time.Second))
		note(n.kubelet.Stop(10 * time.Second))
	}
	note(c.sched.Stop(10 * time.Second))
	note(c.cm.Stop(10 * time.Second))
	for _, n := range c.Nodes {
		if n.containerd != nil && !n.containerd.Exited() {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			if out, err := n.Crictl(ctx, "rmp", "--all", "--force"); err != nil {
				note(fmt.Sprintf("%s: crictl rmp --all --force: %v %s", n.Name, err, out))
			}
			cancel()
		}
		note(n.containerd.Stop(15 * time.Second))
	}
	note(c.api.Stop(10 * time.Second))
	note(c.etcd.Stop(10 * time.Second))
	// Each node's mount namespace, and every mount in it (pod volumes,
	// rootfs overlays, netns files), goes with its holder and whatever
	// process is still in it.
	for _, n := range c.Nodes {
		note(n.holder.Stop(5 * time.Second))
	}
	for _, pid := range c.leftoverPIDs() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
		note("killed leftover pid " + strconv.Itoa(pid))
	}
	// A cgroup whose last task is still exiting is retried for 10s.
	notes = append(notes, daemon.RemoveCgroups(c.Name, 10*time.Second)...)
	for _, ns := range c.netnsNames() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			note(fmt.Sprintf("ip netns del %s: %v %s", ns, err, out))
		}
	}
	// There should be none: the nodes' mounts live in their own namespaces.
	notes = append(notes, daemon.UnmountUnder(c.Dir)...)
	if err := os.RemoveAll(c.Dir); err != nil {
		note("remove " + c.Dir + ": " + err.Error())
	}
	for _, mp := range hostMountPoints {
		_ = os.Remove(c.mountMarker(mp))
	}
	// Only if still empty (another run's node may be using them), the
	// deepest first.
	for i := len(c.madeMounts) - 1; i >= 0; i-- {
		_ = os.Remove(c.madeMounts[i])
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
	return daemon.PIDs(c.Name, func(cmdline []byte) bool { return bytes.Contains(cmdline, []byte(c.Dir+"/")) })
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
	for _, m := range daemon.MountsUnder(c.Dir) {
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
