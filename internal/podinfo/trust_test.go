package podinfo

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshcni/meshcni/internal/trust"
)

// The kubeconfig names the server whose answer decides capture: one that
// others could write or replace is refused before it is read, and the
// error says so. Before, a kubeconfig in a 0777 run dir, or 0666, was
// read, and could send the plug-in to a server that says inject: false.
func TestUntrustedKubeconfigIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	good := kubeconfig("{server: https://api.meshcni.test:6443, insecure-skip-tls-verify: true}", "{token: t0}")
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, dir, path string)
		want  string // "" means loaded
	}{
		{name: "root's, 0600, in a root's dir", setup: func(*testing.T, string, string) {}},
		{name: "0644 is fine", setup: func(t *testing.T, _, path string) { chmod(t, path, 0o644) }},
		{name: "writable by others", setup: func(t *testing.T, _, path string) { chmod(t, path, 0o666) }, want: "is writable by others (mode 0666)"},
		{name: "another user's", setup: func(t *testing.T, _, path string) {
			if err := os.Chown(path, 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, want: "belongs to uid 65534"},
		{name: "in a world-writable dir", setup: func(t *testing.T, dir, _ string) { chmod(t, dir, 0o777) }, want: "writable by others (mode 0777"},
		{name: "a link a user could repoint, to an open dir", setup: func(t *testing.T, dir, path string) {
			open := filepath.Join(dir, "open")
			if err := os.Mkdir(open, 0o700); err != nil {
				t.Fatal(err)
			}
			chmod(t, open, 0o777)
			if err := os.Rename(path, filepath.Join(open, "kubeconfig")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(open, "kubeconfig"), path); err != nil {
				t.Fatal(err)
			}
		}, want: "writable by others"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run")
			path := writeKubeconfig(t, dir, good)
			tc.setup(t, dir, path)
			_, err := loadKubeconfig(path)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("load: %v", err)
				}
				return
			}
			if !errors.Is(err, trust.ErrUntrusted) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "kubeconfig") {
				t.Fatalf("load: %v, want refused: %q", err, tc.want)
			}
		})
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
