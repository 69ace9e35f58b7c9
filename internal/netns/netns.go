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
	return pathErr(path, ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() }))
}

// pathErr names the ns package's errors for a path that is gone (ErrGone)
// or not a netns (ErrNotNetNS).
func pathErr(path string, err error) error {
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

// Thread is one OS thread inside a netns that runs a visit's calls one
// after another: the netns is entered once per visit, not once per call,
// and the visit can be handed around as a value (netfilter's kernels)
// rather than live inside a closure. Close takes the thread back to the
// netns it came from or, when that fails, retires it, so that no other
// goroutine ever runs in the pod's netns. The zero path is the current
// netns (init-container mode): calls run on the caller's goroutine.
type Thread struct {
	calls chan func()
	done  chan struct{}
}

// Enter starts a Thread in the netns at path, with Do's errors for a
// path that is gone or not a netns.
func Enter(path string) (*Thread, error) {
	if path == "" {
		return &Thread{}, nil
	}
	target, err := ns.GetNS(path)
	if err != nil {
		return nil, pathErr(path, err)
	}
	t := &Thread{calls: make(chan func()), done: make(chan struct{})}
	entered := make(chan error, 1)
	go func() {
		defer close(t.done)
		defer target.Close()
		runtime.LockOSThread()
		back, err := ns.GetCurrentNS()
		if err != nil {
			entered <- fmt.Errorf("open this thread's netns: %w", err)
			return // the thread is retired, still locked: it never moved
		}
		defer back.Close()
		if err := target.Set(); err != nil {
			entered <- fmt.Errorf("enter %s: %w", path, err)
			return
		}
		entered <- nil
		for call := range t.calls {
			call()
		}
		// Unlocked only once it is back: otherwise the runtime retires
		// the thread when this goroutine returns.
		if back.Set() == nil {
			runtime.UnlockOSThread()
		}
	}()
	if err := <-entered; err != nil {
		<-t.done
		return nil, err
	}
	return t, nil
}

// Do runs fn on the thread, inside its netns, and waits for it.
func (t *Thread) Do(fn func() error) error {
	if t.calls == nil {
		return fn()
	}
	errc := make(chan error, 1)
	t.calls <- func() { errc <- fn() }
	return <-errc
}

// Close ends the thread's visit; the Thread is not used again.
func (t *Thread) Close() {
	if t.calls != nil {
		close(t.calls)
		<-t.done
	}
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
