// Package trust decides whether root may trust a node path or the
// process behind a Unix socket: the plug-in (root, in the runtime) takes
// pod specs and log lines from sockets in the agent's run dir, takes
// locks in a lock dir, and a user who can write those paths or serve
// those sockets could otherwise make a mesh pod start uncaptured.
//
// A path is trusted when it and every directory above it belong to a
// trusted user (root, or the checking process's own user: the same
// rules then hold for a test run as a user, and a process cannot be
// attacked by itself) and no one else can write it: group and others
// may not write the directory itself, and may write an ancestor only if
// it is sticky (/tmp), where they cannot rename or remove what a trusted
// user owns. A socket's server is trusted when the kernel's record of
// its credentials (SO_PEERCRED, taken at listen time) names a trusted
// user.
//
// The package does no I/O but stat and getsockopt, and imports only the
// standard library: the plug-in and its API lookup helper link it.
package trust

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// Error says why a path or a peer is not trusted. Callers treat it as
// "no answer", never as an answer.
type Error struct {
	Path   string
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("not trusted: %s %s", e.Path, e.Reason) }

// ErrUntrusted matches every *Error with errors.Is.
var ErrUntrusted = errors.New("not trusted")

// Is makes errors.Is(err, ErrUntrusted) true for an *Error.
func (e *Error) Is(target error) bool { return target == ErrUntrusted }

// UID reports whether uid is a trusted user: root or this process's own.
func UID(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }

// groupOrOtherWrite are the mode bits that let someone but the owner
// create, rename or remove a directory's entries.
const groupOrOtherWrite = 0o022

// Dir checks that dir is a directory only trusted users can change, and
// so is every directory above it (symbolic links resolved).
func Dir(dir string) error {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("check %s: %w", dir, err)
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return fmt.Errorf("check %s: %w", dir, err)
	}
	fi, err := os.Stat(real)
	if err != nil {
		return fmt.Errorf("check %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return &Error{Path: dir, Reason: "is not a directory"}
	}
	if err := owned(dir, fi); err != nil {
		return err
	}
	if fi.Mode().Perm()&groupOrOtherWrite != 0 {
		return &Error{Path: dir, Reason: fmt.Sprintf("is writable by others (mode %04o; want 0755 or stricter)", fi.Mode().Perm())}
	}
	for p := filepath.Dir(real); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check %s: %w", p, err)
		}
		if err := owned(p, fi); err != nil {
			return err
		}
		if fi.Mode().Perm()&groupOrOtherWrite != 0 && fi.Mode()&fs.ModeSticky == 0 {
			return &Error{Path: p, Reason: fmt.Sprintf("(above %s) is writable by others and not sticky (mode %04o)", dir, fi.Mode().Perm())}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// owned checks that fi, the stat of path, belongs to a trusted user.
func owned(path string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return &Error{Path: path, Reason: "has no owner to check"}
	}
	if !UID(st.Uid) {
		return &Error{Path: path, Reason: fmt.Sprintf("belongs to uid %d, not root", st.Uid)}
	}
	return nil
}

// Peer checks that the process serving (or connected on) c runs as a
// trusted user, as the kernel recorded it (SO_PEERCRED).
func Peer(c *net.UnixConn) error {
	cred, err := PeerCred(c)
	if err != nil {
		return err
	}
	if !UID(cred.Uid) {
		return &Error{Path: c.RemoteAddr().String(), Reason: fmt.Sprintf("is served by uid %d (pid %d), not root", cred.Uid, cred.Pid)}
	}
	return nil
}

// PeerCred returns the credentials of the process at the other end of c,
// in this process's user namespace.
func PeerCred(c *net.UnixConn) (*syscall.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return nil, fmt.Errorf("peer credentials: %w", credErr)
	}
	return cred, nil
}

// Dial connects to the Unix socket at path only if its directory is
// trusted (Dir), the socket file belongs to a trusted user, and the
// process serving it runs as one (Peer). The directory is checked first,
// so that nothing is sent to a socket a user could have put there.
func Dial(ctx context.Context, path string) (*net.UnixConn, error) {
	if err := Dir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return nil, &Error{Path: path, Reason: fmt.Sprintf("is a %v, not a socket", fi.Mode().Type())}
	}
	if err := owned(path, fi); err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	uc := c.(*net.UnixConn)
	if err := Peer(uc); err != nil {
		_ = c.Close()
		return nil, err
	}
	return uc, nil
}

// Secure creates dir (mode perm) if it is missing, or repairs it: a
// directory that belongs to an untrusted user is given to this process's
// user and group, and group and others lose write access. It then checks
// dir as Dir does, ancestors included, and returns what it repaired (for
// the caller's log). A symbolic link or a non-directory at dir is refused,
// not repaired: following a link planted there would hand this process's
// repair to whoever chose the target.
//
// Repair is not cleanup: what an untrusted user put into the directory
// while it was open stays; the callers replace the files they serve or
// write (sockets, atomic renames) and check what they reuse.
func Secure(dir string, perm fs.FileMode) (repaired []string, err error) {
	if err := os.MkdirAll(dir, perm); err != nil {
		return nil, err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, &Error{Path: dir, Reason: fmt.Sprintf("is a %v, not a directory", fi.Mode().Type())}
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && !UID(st.Uid) {
		if err := os.Lchown(dir, os.Geteuid(), os.Getegid()); err != nil {
			return nil, fmt.Errorf("%s belongs to uid %d: take it back: %w", dir, st.Uid, err)
		}
		repaired = append(repaired, fmt.Sprintf("owner uid %d -> %d", st.Uid, os.Geteuid()))
	}
	if m := fi.Mode().Perm(); m&groupOrOtherWrite != 0 {
		if err := os.Chmod(dir, m&^groupOrOtherWrite); err != nil {
			return repaired, fmt.Errorf("%s has mode %04o: make it 0755 or stricter: %w", dir, m, err)
		}
		repaired = append(repaired, fmt.Sprintf("mode %04o -> %04o", m, m&^groupOrOtherWrite))
	}
	return repaired, Dir(dir)
}

// File checks a file root reads secrets or orders from (the plug-in's
// kubeconfig): f, opened at path, belongs to a trusted user, no one else
// can write it, and its directory is trusted (Dir). Checked on the open
// file, so the file read is the file checked.
func File(f *os.File, path string) error {
	fi, err := f.Stat()
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return &Error{Path: path, Reason: "is not a regular file"}
	}
	if err := owned(path, fi); err != nil {
		return err
	}
	if fi.Mode().Perm()&groupOrOtherWrite != 0 {
		return &Error{Path: path, Reason: fmt.Sprintf("is writable by others (mode %04o)", fi.Mode().Perm())}
	}
	// The link's directory (who can repoint it) and the target's (who
	// can replace the file).
	if err := Dir(filepath.Dir(path)); err != nil {
		return err
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	return Dir(filepath.Dir(real))
}
