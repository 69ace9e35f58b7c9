// Package netns runs code inside a network namespace given by path, and
// tells a namespace that is gone from one that is broken.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

var (
	// ErrGone is returned when the netns path no longer exists: the
	// sandbox was torn down. DEL treats it as success.
	ErrGone = errors.New("network namespace is gone")
	// ErrNotNetNS: the path exists but is not a network namespace.
	ErrNotNetNS = errors.New("is not a network namespace")
	// ErrOwn: the path is the caller's own netns — the node's, for the
	// plug-in and the agent. Programming it would capture the node.
	ErrOwn = errors.New("is the caller's own network namespace (the node's), not a pod's")
)

// IsInvalid reports whether err means the netns path itself is wrong:
// gone, not a netns, or the caller's own (CNI error 8).
func IsInvalid(err error) bool {
	return errors.Is(err, ErrGone) || errors.Is(err, ErrNotNetNS) || errors.Is(err, ErrOwn)
}

// CheckTarget refuses a path that is not some other network namespace
// than the caller's own, before anything is done in it.
func CheckTarget(path string) error {
	id, err := ID(path)
	if err != nil {
		return err
	}
	if err := isNetNS(path); err != nil {
		return err
	}
	own, err := ID("")
	if err != nil {
		return err
	}
	if id == own {
		return fmt.Errorf("%s %w", path, ErrOwn)
	}
	return nil
}

// Do runs fn inside the netns at path; an empty path means the current
// one (init-container mode). The OS thread is locked for fn's duration,
// and goroutines fn starts do not inherit the namespace.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	err := ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
	var notExist ns.NSPathNotExistErr
	if errors.As(err, &notExist) {
		return fmt.Errorf("%s: %w", path, ErrGone)
	}
	var notNS ns.NSPathNotNSErr
	if errors.As(err, &notNS) {
		return fmt.Errorf("%s %w: %v", path, ErrNotNetNS, err)
	}
	return err
}

// ID identifies a netns by device and inode, stable for its lifetime.
func ID(path string) (string, error) {
	if path == "" {
		path = "/proc/thread-self/ns/net"
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if os.IsNotExist(err) {
			return "", fmt.Errorf("%s: %w", path, ErrGone)
		}
		return "", fmt.Errorf("stat netns %s: %w", path, err)
	}
	return fmt.Sprintf("%d-%d", st.Dev, st.Ino), nil
}

// Scratch runs fn in a new, empty netns that disappears afterwards. Used
// to ask the kernel how it renders a ruleset without touching any real
// namespace. The thread that entered it is never reused.
func Scratch(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Not unlocking makes the runtime retire this thread on exit,
		// so no goroutine ever runs in the scratch namespace again.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("create scratch netns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// nsGetNSType is NS_GET_NSTYPE (_IO(0xb7, 0x3)), not in x/sys/unix.
const nsGetNSType = 0xb703

// isNetNS checks that path is a namespace file, of a network namespace.
func isNetNS(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		return fmt.Errorf("%s %w", path, ErrNotNetNS)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	typ, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), nsGetNSType, 0)
	if errno != 0 {
		return fmt.Errorf("namespace type of %s: %w", path, errno)
	}
	if typ != unix.CLONE_NEWNET {
		return fmt.Errorf("%s %w (another kind of namespace)", path, ErrNotNetNS)
	}
	return nil
}
