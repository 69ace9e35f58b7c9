package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/test/testbed"
)

// node is a testbed node driven the way a runtime drives it, but with the
// bench's own libcni handle so that each step can be timed on its own.
type node struct {
	*testbed.Node
	cni  *libcni.CNIConfig
	list *libcni.NetworkConfigList // what the node's conf dir holds
}

func newNode(opts testbed.Options) (*node, error) {
	n, err := testbed.NewNode(opts)
	if err != nil {
		return nil, err
	}
	list, err := n.Conflist()
	if err != nil {
		n.Close()
		return nil, err
	}
	// Plug-ins' stderr (meshcni logs there too) is kept out of the report;
	// libcni still puts it into the error of a failed ADD.
	exec := &invoke.DefaultExec{RawExec: &invoke.RawExec{}, PluginDecoder: version.PluginDecoder{}}
	return &node{Node: n, cni: libcni.NewCNIConfigWithCacheDir([]string{n.BinDir}, n.CacheDir, exec), list: list}, nil
}

// sandbox is one pod's netns and its attachment state.
type sandbox struct {
	pod      *corev1.Pod // as stored in the API
	ns       ns.NetNS
	attached bool                      // node.list ran ADD, so DEL is due
	prev     *current.Result           // the primary chain's result
	lo       *libcni.NetworkConfigList // loopback, always attached first
}

var loConf = []byte(`{"cniVersion":"1.0.0","name":"cni-loopback","plugins":[{"type":"loopback"}]}`)

func (s *sandbox) rt() *libcni.RuntimeConf {
	id := "sandbox-" + string(s.pod.UID)
	return &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       s.ns.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", s.pod.Namespace},
			{"K8S_POD_NAME", s.pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", string(s.pod.UID)},
		},
	}
}

// prepare creates the sandbox netns and brings lo up, untimed. With
// primary set it also runs the node's conflist (primary only, then) to
// get the prevResult the plug-in alone is later measured with.
func (n *node) prepare(ctx context.Context, pod *corev1.Pod, primary bool) (_ *sandbox, err error) {
	podNS, err := testutils.NewNS()
	if err != nil {
		return nil, err
	}
	s := &sandbox{pod: pod, ns: podNS}
	defer func() {
		if err != nil {
			n.release(ctx, s)
		}
	}()
	if s.lo, err = libcni.NetworkConfFromBytes(loConf); err != nil {
		return nil, err
	}
	err = n.NS.Do(func(ns.NetNS) error {
		if _, err := n.cni.AddNetworkList(ctx, s.lo, s.rt()); err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		if !primary {
			return nil
		}
		s.attached = true
		res, err := n.cni.AddNetworkList(ctx, n.list, s.rt())
		if err != nil {
			return fmt.Errorf("primary chain: %w", err)
		}
		s.prev, err = current.NewResultFromResult(res)
		return err
	})
	if err != nil {
		return nil, err // released above
	}
	return s, nil
}

// addChain runs the node's whole conflist for s and times only that.
func (n *node) addChain(ctx context.Context, s *sandbox) (time.Duration, error) {
	var took time.Duration
	err := n.NS.Do(func(ns.NetNS) error {
		s.attached = true
		start := time.Now()
		res, err := n.cni.AddNetworkList(ctx, n.list, s.rt())
		took = time.Since(start)
		if err == nil {
			s.prev, err = current.NewResultFromResult(res)
		}
		return err
	})
	return took, err
}

// release runs DEL for whatever was attached and removes the netns.
func (n *node) release(ctx context.Context, s *sandbox) {
	_ = n.NS.Do(func(ns.NetNS) error {
		if s.attached {
			_ = n.cni.DelNetworkList(ctx, n.list, s.rt())
		}
		if s.lo != nil {
			_ = n.cni.DelNetworkList(ctx, s.lo, s.rt())
		}
		return nil
	})
	if err := removeNS(s.ns); err != nil {
		progress("warning: %v", err)
	}
}

// removeNS closes and unmounts a netns made by testutils.NewNS. A plain
// unmount fails with EBUSY while a concurrent fork elsewhere in the bench
// holds a copy of the netns fd until its exec; then the mount is detached
// instead, and the netns goes with the last such copy.
func removeNS(n ns.NetNS) error {
	_ = n.Close()
	path := n.Path()
	err := unix.Unmount(path, 0)
	if errors.Is(err, unix.EBUSY) {
		err = unix.Unmount(path, unix.MNT_DETACH)
	}
	if err != nil {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove netns file %s: %w", path, err)
	}
	return nil
}

// execRun is one timed exec of a program from inside the node netns, as a
// runtime execs a plug-in: fork, exec, wait.
type execRun struct {
	Start, End time.Time
	Wall       time.Duration
	CPU        time.Duration // user+system of the process and its reaped children
	MinFlt     int64         // minor page faults, likewise
	Stdout     []byte
}

// phases splits a plug-in run by its log line: from fork to the start of
// CmdAdd (process start, Go runtime and package init, skel), and from the
// log line to the plug-in reaped (result printed, exit).
func (r execRun) phases(l addLine) (startup, exit time.Duration) {
	return l.At.Add(-l.Duration).Sub(r.Start), r.End.Sub(l.At)
}

func (n *node) exec(ctx context.Context, argv, env []string, stdin []byte) (execRun, error) {
	var r execRun
	err := n.NS.Do(func(ns.NetNS) error {
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = env
		cmd.Stdin = bytes.NewReader(stdin)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		r.Start = time.Now()
		err := cmd.Run()
		r.End = time.Now()
		r.Wall = r.End.Sub(r.Start)
		if ps := cmd.ProcessState; ps != nil {
			r.CPU = ps.UserTime() + ps.SystemTime()
			if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
				r.MinFlt = ru.Minflt
			}
		}
		r.Stdout = out.Bytes()
		if err != nil {
			return fmt.Errorf("%s: %w: %s%s", filepath.Base(argv[0]), err, bytes.TrimSpace(errb.Bytes()), bytes.TrimSpace(out.Bytes()))
		}
		return nil
	})
	return r, err
}

// pluginStdin is the config a runtime hands the last plug-in of the
// chain: its entry, the list's name and version, and the prevResult.
func (n *node) pluginStdin(entry map[string]any, prev *current.Result) ([]byte, error) {
	conf := make(map[string]any, len(entry)+3)
	for k, v := range entry {
		conf[k] = v
	}
	conf["name"], conf["cniVersion"] = n.list.Name, n.list.CNIVersion
	if prev != nil {
		// In the list's version, as libcni hands it on; current.Result
		// would otherwise claim the library's newest version.
		res, err := prev.GetAsVersion(n.list.CNIVersion)
		if err != nil {
			return nil, fmt.Errorf("prevResult as CNI %s: %w", n.list.CNIVersion, err)
		}
		conf["prevResult"] = res
	}
	return json.Marshal(conf)
}

// pluginEnv is the CNI environment for cmd on s (nil: no sandbox).
func (n *node) pluginEnv(cmd string, s *sandbox) []string {
	args := &invoke.Args{Command: cmd, Path: n.BinDir}
	if s != nil {
		rt := s.rt()
		args.ContainerID, args.NetNS, args.IfName, args.PluginArgs = rt.ContainerID, rt.NetNS, rt.IfName, rt.Args
	}
	return args.AsEnv()
}

// addPlugin execs only the plug-in's ADD for s with s.prev, timed.
func (n *node) addPlugin(ctx context.Context, bin string, entry map[string]any, s *sandbox, wrap ...string) (execRun, error) {
	stdin, err := n.pluginStdin(entry, s.prev)
	if err != nil {
		return execRun{}, err
	}
	r, err := n.exec(ctx, append(wrap, bin), n.pluginEnv("ADD", s), stdin)
	if err == nil {
		var res map[string]any
		if jerr := json.Unmarshal(r.Stdout, &res); jerr != nil {
			err = fmt.Errorf("ADD printed no result: %q", r.Stdout)
		} else if _, ok := res["cniVersion"]; !ok {
			err = errors.New("ADD result has no cniVersion")
		}
	}
	return r, err
}
