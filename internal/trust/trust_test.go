package trust

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// other is a uid that is neither root nor this process's.
const other = 65534

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
}

// tree makes root/parent/dir with the given modes and returns dir.
func tree(t *testing.T, parentMode, dirMode os.FileMode) string {
	t.Helper()
	parent := filepath.Join(t.TempDir(), "parent")
	dir := filepath.Join(parent, "dir")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for p, m := range map[string]os.FileMode{parent: parentMode, dir: dirMode} {
		if err := os.Chmod(p, m); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestDir(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct {
		name       string
		parent     os.FileMode
		dir        os.FileMode
		setup      func(t *testing.T, dir string) string // returns the path to check
		wantReason string                                // "" means trusted
	}{
		{name: "0755 under 0755", parent: 0o755, dir: 0o755},
		{name: "0700", parent: 0o755, dir: 0o700},
		{name: "under a sticky world-writable dir (/tmp)", parent: os.ModeSticky | 0o777, dir: 0o755},
		{name: "world-writable", parent: 0o755, dir: 0o777, wantReason: "writable by others (mode 0777"},
		{name: "group-writable", parent: 0o755, dir: 0o775, wantReason: "writable by others (mode 0775"},
		{name: "sticky and world-writable itself", parent: 0o755, dir: os.ModeSticky | 0o777, wantReason: "writable by others"},
		{name: "under a world-writable dir", parent: 0o777, dir: 0o755, wantReason: "is writable by others and not sticky"},
		{name: "owned by another user", parent: 0o755, dir: 0o755, setup: func(t *testing.T, dir string) string {
			if err := os.Chown(dir, other, other); err != nil {
				t.Fatal(err)
			}
			return dir
		}, wantReason: "belongs to uid 65534"},
		{name: "parent owned by another user", parent: 0o755, dir: 0o755, setup: func(t *testing.T, dir string) string {
			if err := os.Chown(filepath.Dir(dir), other, other); err != nil {
				t.Fatal(err)
			}
			return dir
		}, wantReason: "belongs to uid 65534"},
		{name: "a link to a trusted dir", parent: 0o755, dir: 0o755, setup: func(t *testing.T, dir string) string {
			link := filepath.Join(filepath.Dir(dir), "link")
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			return link
		}},
		{name: "a link to a world-writable dir", parent: 0o755, dir: 0o777, setup: func(t *testing.T, dir string) string {
			link := filepath.Join(filepath.Dir(dir), "link")
			if err := os.Symlink(dir, link); err != nil {
				t.Fatal(err)
			}
			return link
		}, wantReason: "writable by others"},
		{name: "a file", parent: 0o755, dir: 0o755, setup: func(t *testing.T, dir string) string {
			f := filepath.Join(dir, "f")
			if err := os.WriteFile(f, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			return f
		}, wantReason: "is not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tree(t, tc.parent, tc.dir)
			path := dir
			if tc.setup != nil {
				path = tc.setup(t, dir)
			}
			err := Dir(path)
			if tc.wantReason == "" {
				if err != nil {
					t.Fatalf("Dir(%s): %v, want trusted", path, err)
				}
				return
			}
			if !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), tc.wantReason) {
				t.Fatalf("Dir(%s): %v, want untrusted: %q", path, err, tc.wantReason)
			}
		})
	}
}

func TestSecureCreatesAndRepairs(t *testing.T) {
	needRoot(t)
	t.Run("missing", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "run", "meshcni")
		repaired, err := Secure(dir, 0o755)
		if err != nil || len(repaired) != 0 {
			t.Fatalf("Secure = %v, %v", repaired, err)
		}
		assertMode(t, dir, 0o755, 0)
	})
	t.Run("world-writable and another user's", func(t *testing.T) {
		dir := tree(t, 0o755, 0o777)
		if err := os.Chmod(dir, 0o777); err != nil { // past the umask
			t.Fatal(err)
		}
		if err := os.Chown(dir, other, other); err != nil {
			t.Fatal(err)
		}
		repaired, err := Secure(dir, 0o755)
		if err != nil || len(repaired) != 2 {
			t.Fatalf("Secure = %v, %v; want the owner and the mode repaired", repaired, err)
		}
		assertMode(t, dir, 0o755, 0)
		if err := Dir(dir); err != nil {
			t.Fatalf("after the repair: %v", err)
		}
	})
	t.Run("strict stays strict", func(t *testing.T) {
		dir := tree(t, 0o755, 0o700)
		if repaired, err := Secure(dir, 0o755); err != nil || len(repaired) != 0 {
			t.Fatalf("Secure = %v, %v", repaired, err)
		}
		assertMode(t, dir, 0o700, 0)
	})
	t.Run("a link is refused, its target untouched", func(t *testing.T) {
		target := tree(t, 0o755, 0o777)
		if err := os.Chmod(target, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(target, other, other); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(t.TempDir(), "meshcni")
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
		if _, err := Secure(link, 0o755); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("Secure(link): %v, want refused", err)
		}
		assertMode(t, target, 0o777, other)
	})
	t.Run("under a world-writable dir", func(t *testing.T) {
		dir := tree(t, 0o777, 0o755)
		if _, err := Secure(dir, 0o755); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("Secure: %v, want refused (the parent is open)", err)
		}
	})
}

func assertMode(t *testing.T, path string, mode os.FileMode, uid uint32) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != mode {
		t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), mode)
	}
	if err := owned(path, fi); uid == 0 && err != nil {
		t.Errorf("%s: %v", path, err)
	}
}

// Dial checks the directory and the socket file before it connects, and
// the server's credentials after. (A server running as another user is
// tested with a real process of another uid in
// test/fault.TestUntrustedSocketsAreNotTrusted.)
func TestDial(t *testing.T) {
	needRoot(t)
	serve := func(t *testing.T, dir string) string {
		path := filepath.Join(dir, "pods.sock")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_ = c.Close()
			}
		}()
		return path
	}
	ctx := context.Background()
	t.Run("trusted", func(t *testing.T) {
		c, err := Dial(ctx, serve(t, tree(t, 0o755, 0o755)))
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
	})
	t.Run("in a world-writable dir", func(t *testing.T) {
		dir := tree(t, 0o755, 0o755)
		path := serve(t, dir)
		if err := os.Chmod(dir, 0o777); err != nil {
			t.Fatal(err)
		}
		if _, err := Dial(ctx, path); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("Dial: %v, want untrusted", err)
		}
	})
	t.Run("socket file of another user", func(t *testing.T) {
		path := serve(t, tree(t, 0o755, 0o755))
		if err := os.Lchown(path, other, other); err != nil {
			t.Fatal(err)
		}
		if _, err := Dial(ctx, path); !errors.Is(err, ErrUntrusted) || !strings.Contains(err.Error(), "uid 65534") {
			t.Fatalf("Dial: %v, want untrusted", err)
		}
	})
	t.Run("not a socket", func(t *testing.T) {
		path := filepath.Join(tree(t, 0o755, 0o755), "pods.sock")
		if err := os.WriteFile(path, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Dial(ctx, path); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("Dial: %v, want untrusted", err)
		}
	})
}

// What the checks add to each plug-in dial of the agent's sockets:
// go test -run ^$ -bench Dial ./internal/trust/
func BenchmarkDial(b *testing.B) {
	dir, err := os.MkdirTemp("", "trust-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "pods.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	ctx := context.Background()
	b.Run("plain", func(b *testing.B) {
		var d net.Dialer
		for b.Loop() {
			c, err := d.DialContext(ctx, "unix", path)
			if err != nil {
				b.Fatal(err)
			}
			_ = c.Close()
		}
	})
	b.Run("trusted", func(b *testing.B) {
		for b.Loop() {
			c, err := Dial(ctx, path)
			if err != nil {
				b.Fatal(err)
			}
			_ = c.Close()
		}
	})
}

// The checks alone, on the agent's default run dir's depth.
func BenchmarkDir(b *testing.B) {
	dir, err := os.MkdirTemp("", "trust-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(dir)
	for b.Loop() {
		if err := Dir(dir); err != nil {
			b.Fatal(err)
		}
	}
}
