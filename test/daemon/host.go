package daemon

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// PIDs lists the processes in the cgroup (below the v1 pids hierarchy)
// and those whose command line matches, never this test process.
func PIDs(cgroup string, cmdline func([]byte) bool) []int {
	var pids []int
	seen := map[int]bool{os.Getpid(): true}
	_ = filepath.WalkDir(filepath.Join("/sys/fs/cgroup/pids", cgroup), func(p string, d os.DirEntry, err error) error {
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
		if cmdline(b) {
			seen[pid] = true
			pids = append(pids, pid)
		}
	}
	return pids
}

// RemoveCgroups removes the cgroup tree from every hierarchy, deepest
// first; a cgroup whose last task is still exiting is retried every
// 100 ms for up to timeout. It returns a note a cgroup that stayed.
func RemoveCgroups(cgroup string, timeout time.Duration) []string {
	var notes []string
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*", cgroup))
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
			deadline := time.Now().Add(timeout)
			for {
				err := os.Remove(d)
				if err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				if time.Now().After(deadline) {
					notes = append(notes, "cgroup "+d+": "+err.Error())
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	return notes
}

// MountsUnder lists the mount points at or below dir, deepest first.
func MountsUnder(dir string) []string {
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

// UnmountUnder detaches every mount at or below dir, deepest first, and
// returns a note for each it detached.
func UnmountUnder(dir string) []string {
	var done []string
	for _, p := range MountsUnder(dir) {
		if err := unix.Unmount(p, unix.MNT_DETACH); err == nil {
			done = append(done, "unmounted "+p)
		}
	}
	return done
}
