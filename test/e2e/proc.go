//go:build e2e

package e2e

import "github.com/meshcni/meshcni/test/daemon"

// startInNetns runs argv inside the netns at nsPath, its output appended
// to logPath. nsenter --net (not `ip netns exec`, which remounts /sys and
// hides the cgroup mounts from runc) execs argv in place, so the PID is
// the daemon's own: it is stopped by that PID only.
func startInNetns(name, nsPath, logPath string, argv ...string) (*daemon.Proc, error) {
	return daemon.Start(name, logPath, append([]string{"nsenter", "--net=" + nsPath}, argv...)...)
}
