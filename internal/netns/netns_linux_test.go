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
