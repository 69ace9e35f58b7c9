package netfilter

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// netnsLock is an exclusive flock on a file named after one netns, held
// for a whole visit (Apply, Check, Remove, Save). Two ADDs of one sandbox
// (a retrying runtime, the repair controller beside the plug-in) would
// otherwise interleave: each sees a netns without rules, both write, and
// the loser's rollback removes what the winner wrote while the winner
// reports success. With the lock the second visit finds the first one's
// rules and, for the same spec, changes nothing. It holds across
// processes and between goroutines of one process (flock locks belong to
// the open file, not the process), on every backend.
type netnsLock struct {
	f    *os.File
	path string
}

// lockNetns takes the lock at path, waiting until ctx is done.
//
// The file is removed on unlock, so that the lock dir does not fill with
// one file per pod ever seen. A waiter may therefore end up holding the
// lock of a file that is gone from the dir; it checks, after locking,
// that the path still names its file, and starts over if not.
func lockNetns(ctx context.Context, path string) (*netnsLock, error) {
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("open netns lock: %w", err)
		}
		if err := flock(ctx, f); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s (another apply in this netns holds it): %w", path, err)
		}
		var held, named unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &held); err != nil {
			f.Close()
			return nil, fmt.Errorf("stat netns lock: %w", err)
		}
		if err := unix.Stat(path, &named); err == nil && named.Ino == held.Ino && named.Dev == held.Dev {
			return &netnsLock{f: f, path: path}, nil
		}
		f.Close() // unlinked by the holder before us: take the new file
	}
}

// flock takes an exclusive lock on f, or gives up when ctx is done.
func flock(ctx context.Context, f *os.File) error {
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != unix.EWOULDBLOCK {
		return err
	}
	// Contended: wait in a goroutine so that ctx can end the wait. If it
	// does, the goroutine still gets the lock later and lets it go.
	got := make(chan error, 1)
	fd, err := unix.Dup(int(f.Fd()))
	if err != nil {
		return err
	}
	go func() {
		got <- unix.Flock(fd, unix.LOCK_EX)
	}()
	select {
	case err := <-got:
		// fd shares f's open file, and so the lock f now holds.
		unix.Close(fd)
		return err
	case <-ctx.Done():
		go func() {
			<-got
			unix.Flock(fd, unix.LOCK_UN)
			unix.Close(fd)
		}()
		return ctx.Err()
	}
}

// unlock removes the file, then lets the lock go: a waiter on the old
// file sees it gone and retries on a new one.
func (l *netnsLock) unlock() {
	os.Remove(l.path)
	l.f.Close()
}
