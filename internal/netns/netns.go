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

// ErrGone is returned when the netns path no longer exists: the sandbox
// was torn down. DEL treats it as success.
var ErrGone = errors.New("network namespace is gone")

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
		return fmt.Errorf("%s is not a network namespace: %w", path, err)
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
