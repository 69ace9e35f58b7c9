package repair

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Finder locates a running pod's network namespace on this node.
type Finder interface {
	Find(ctx context.Context, pod *corev1.Pod) (string, error)
}

// ErrNoProcess: no process of the pod runs on this node (yet).
var ErrNoProcess = errors.New("no process of the pod found on this node")

// ProcFinder scans /proc for a process whose cgroup path names the pod's
// UID, as kubelet's cgroupfs ("pod<uid>") and systemd ("pod<uid_with_
// underscores>") drivers both do, and returns that process's netns.
type ProcFinder struct {
	// Proc is the proc mount; "/proc" when empty (the agent mounts the
	// host's /proc and runs in the host PID namespace).
	Proc string
}

// Find implements Finder.
func (f ProcFinder) Find(_ context.Context, pod *corev1.Pod) (string, error) {
	proc := f.Proc
	if proc == "" {
		proc = "/proc"
	}
	uid := string(pod.UID)
	if uid == "" {
		return "", fmt.Errorf("pod %s/%s has no UID", pod.Namespace, pod.Name)
	}
	marks := []string{"pod" + uid, "pod" + strings.ReplaceAll(uid, "-", "_")}
	entries, err := os.ReadDir(proc)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", proc, err)
	}
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cg, err := os.ReadFile(filepath.Join(proc, e.Name(), "cgroup"))
		if err != nil {
			continue // the process exited meanwhile
		}
		for _, m := range marks {
			if containsSegment(string(cg), m) {
				path := filepath.Join(proc, e.Name(), "ns", "net")
				if _, err := os.Stat(path); err == nil {
					return path, nil
				}
			}
		}
	}
	return "", fmt.Errorf("pod %s/%s (uid %s): %w", pod.Namespace, pod.Name, uid, ErrNoProcess)
}

// containsSegment reports whether a cgroup path element is mark or starts
// with it (systemd: "kubepods-besteffort-pod<uid>.slice").
func containsSegment(cgroups, mark string) bool {
	for _, line := range strings.Split(cgroups, "\n") {
		for _, seg := range strings.Split(line, "/") {
			if seg == mark || strings.HasSuffix(strings.TrimSuffix(seg, ".slice"), mark) {
				return true
			}
		}
	}
	return false
}
