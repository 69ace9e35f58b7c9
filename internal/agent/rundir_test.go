package agent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshcni/meshcni/internal/trust"
)

// The agent creates its run dir root-owned 0755 and its lock dir 0700, or
// repairs them, before it writes or serves anything there, and the
// plug-in's checks then trust its sockets. Before, with a 0777 run dir, a
// user replaced pods.sock and a mesh pod started uncaptured.
func TestRunDirIsRepaired(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the run dir to another user")
	}
	t.Run("missing", func(t *testing.T) {
		n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
		r := start(t, n.options())
		r.waitInstalled(t, 5*time.Second)
		assertDir(t, n.run, 0o755)
		assertDir(t, filepath.Join(n.run, "locks"), 0o700)
		if strings.Contains(r.logs.String(), "repaired") {
			t.Errorf("a new run dir was reported repaired:\n%s", r.logs)
		}
	})
	t.Run("world-writable and a user's", func(t *testing.T) {
		n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
		locks := filepath.Join(n.run, "locks")
		for _, d := range []string{n.run, locks} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(d, 0o777); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(d, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}
		r := start(t, n.options())
		r.waitInstalled(t, 5*time.Second)
		assertDir(t, n.run, 0o755)
		assertDir(t, locks, 0o755)
		if got := strings.Count(r.logs.String(), "repaired a directory others could change"); got != 2 {
			t.Errorf("%d repairs logged, want 2 (run dir, lock dir):\n%s", got, r.logs)
		}
		c, err := trust.Dial(context.Background(), filepath.Join(n.run, "log.sock"))
		if err != nil {
			t.Fatalf("the plug-in's check refuses the agent's own socket: %v", err)
		}
		_ = c.Close()
	})
	t.Run("a link is refused", func(t *testing.T) {
		n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
		elsewhere := t.TempDir()
		if err := os.MkdirAll(filepath.Dir(n.run), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(elsewhere, n.run); err != nil {
			t.Fatal(err)
		}
		a, err := New(n.options(), slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		// Bounded: an agent that accepts the link runs until its context ends.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := a.Run(ctx); err == nil || !strings.Contains(err.Error(), "run dir (--run-dir): not trusted") {
			t.Fatalf("Run with a link as the run dir = %v, want refused", err)
		}
		if ents, _ := os.ReadDir(elsewhere); len(ents) != 0 {
			t.Errorf("the agent wrote through the link: %d files", len(ents))
		}
	})
}

func assertDir(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != mode || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Errorf("%s: %v uid %d, want a root-owned directory %04o", path, fi.Mode(), fi.Sys().(*syscall.Stat_t).Uid, mode)
	}
}
