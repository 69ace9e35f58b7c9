//go:build integration

package netns

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/testutils"
)

func TestCheckTarget(t *testing.T) {
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n.Close(); _ = testutils.UnmountNS(n) }()
	if err := CheckTarget(n.Path()); err != nil {
		t.Fatalf("another netns must be accepted: %v", err)
	}
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]error{
		"/proc/self/ns/net":                ErrOwn,
		"/proc/thread-self/ns/net":         ErrOwn,
		filepath.Join(t.TempDir(), "gone"): ErrGone,
		file:                               ErrNotNetNS,
		"/proc/self/ns/ipc":                ErrNotNetNS,
	} {
		if err := CheckTarget(path); !errors.Is(err, want) || !IsInvalid(err) {
			t.Errorf("%s: got %v, want %v", path, err, want)
		}
	}
}

// A Thread runs every call of a visit inside the target netns, leaves the
// caller's alone, and refuses a path that is gone or not a netns as Do
// does.
func TestThread(t *testing.T) {
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = n.Close(); _ = testutils.UnmountNS(n) }()
	target, err := ID(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	own, err := ID("")
	if err != nil {
		t.Fatal(err)
	}
	th, err := Enter(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		var in string
		if err := th.Do(func() (err error) { in, err = ID(""); return err }); err != nil {
			t.Fatal(err)
		}
		if in != target {
			t.Fatalf("call %d ran in %s, want the target %s", i, in, target)
		}
		if now, _ := ID(""); now != own {
			t.Fatalf("the caller moved to %s", now)
		}
	}
	th.Close()

	current, err := Enter("")
	if err != nil {
		t.Fatal(err)
	}
	if err := current.Do(func() error {
		if in, _ := ID(""); in != own {
			t.Errorf(`"" ran in %s, want the current netns`, in)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	current.Close()

	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]error{filepath.Join(t.TempDir(), "gone"): ErrGone, file: ErrNotNetNS} {
		if _, err := Enter(path); !errors.Is(err, want) {
			t.Errorf("%s: got %v, want %v", path, err, want)
		}
	}
}
