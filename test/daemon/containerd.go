package daemon

import (
	"fmt"
	"path/filepath"
)

// Containerd is where a suite's own containerd keeps everything, and what
// its CRI plug-in is pointed at.
type Containerd struct {
	Dir          string // root, state, opt and runc's root go under it
	Sock         string // the gRPC socket; ttrpc's is Sock+".ttrpc"
	SandboxImage string
	CNIBinDir    string
	CNIConfDir   string
}

// Config is containerd 1.6's config: everything under Dir; CRI with the
// node's CNI dirs; cgroupfs (cgroups v1 here); no AppArmor; OOM score
// adjustments restricted, as this sandbox refuses to lower them.
func (c Containerd) Config() string {
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
`, filepath.Join(c.Dir, "root"), filepath.Join(c.Dir, "state"), c.Sock, c.Sock+".ttrpc",
		filepath.Join(c.Dir, "opt"), c.SandboxImage, c.CNIBinDir, c.CNIConfDir, filepath.Join(c.Dir, "runc"))
}
