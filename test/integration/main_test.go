//go:build integration

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/meshcni/meshcni/test/testbed"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	code := m.Run()
	if bins.dir != "" {
		os.RemoveAll(bins.dir)
	}
	if err := assertNoLeftovers(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: leftovers:", err)
		code = 1
	}
	os.Exit(code)
}

// requireRoot skips tests that need to create network namespaces.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
}

// bins are executables any UID can run: meshcni-iptables, built once,
// and a copy of this test binary for the uid-1337 helper.
var bins struct {
	once           sync.Once
	dir            string
	err            error
	iptables, self string
}

type binPaths struct{ iptables, self string }

func binaries(t *testing.T) binPaths {
	t.Helper()
	bins.once.Do(func() {
		bins.dir, bins.err = os.MkdirTemp("", "meshcni-it-")
		if bins.err != nil {
			return
		}
		if bins.err = os.Chmod(bins.dir, 0o755); bins.err != nil {
			return
		}
		bins.iptables = filepath.Join(bins.dir, "meshcni-iptables")
		build := exec.Command("go", "build", "-o", bins.iptables, "github.com/meshcni/meshcni/cmd/meshcni-iptables")
		if out, err := build.CombinedOutput(); err != nil {
			bins.err = fmt.Errorf("go build meshcni-iptables: %v\n%s", err, out)
			return
		}
		bins.self = filepath.Join(bins.dir, "integration.test")
		bins.err = copySelf(bins.self)
	})
	if bins.err != nil {
		t.Fatal(bins.err)
	}
	return binPaths{iptables: bins.iptables, self: bins.self}
}

// copySelf copies the running test binary to dst.
func copySelf(dst string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	return testbed.CopyExecutable(self, dst)
}
