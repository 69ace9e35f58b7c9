package netfilter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A second lock of one netns waits for the first; one whose context ends
// first gives up with the context's error and leaves the lock usable.
func TestNetnsLockWaitsAndGivesUp(t *testing.T) {
	path := filepath.Join(t.TempDir(), "netns-1-2.lock")
	first, err := lockNetns(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := lockNetns(ctx, path); !errors.Is(err, context.Canceled) {
		t.Fatalf("lock while held, context ended: want context.Canceled, got %v", err)
	}

	got := make(chan *netnsLock)
	go func() {
		l, err := lockNetns(context.Background(), path)
		if err != nil {
			t.Error(err)
		}
		got <- l
	}()
	select {
	case <-got:
		t.Fatal("second lock taken while the first was held")
	case <-time.After(50 * time.Millisecond):
	}
	first.unlock()
	second := <-got
	if second == nil {
		t.FailNow()
	}
	// The waiter saw the first file unlinked and locked a new one at path.
	var st os.FileInfo
	if st, err = os.Stat(path); err != nil {
		t.Fatalf("the second holder's file is not at the path: %v", err)
	}
	if held, _ := second.f.Stat(); !os.SameFile(st, held) {
		t.Fatal("the second holder locks a file that is no longer at the path")
	}
	second.unlock()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("unlock left the lock file: %v", err)
	}
}
