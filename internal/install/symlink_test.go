package install

import (
	"bytes"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// linked makes a conf dir whose primary conflist is a symbolic link to a
// file the primary CNI keeps in a directory of its own, as some node
// images and CNIs do. It returns the conf dir, the link and its target.
func linked(t *testing.T, relative bool) (confDir, link, target string) {
	t.Helper()
	root := t.TempDir()
	confDir, own := filepath.Join(root, "net.d"), filepath.Join(root, "primary")
	for _, d := range []string{confDir, own} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(filepath.Join("testdata", "configs", "10-calico.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	target = filepath.Join(own, "calico.conflist")
	if err := os.WriteFile(target, data, 0o600); err != nil {
		t.Fatal(err)
	}
	link = filepath.Join(confDir, "10-calico.conflist")
	dest := target
	if relative {
		dest = filepath.Join("..", "primary", "calico.conflist")
	}
	if err := os.Symlink(dest, link); err != nil {
		t.Fatal(err)
	}
	return confDir, link, target
}

// assertLink checks that link is still a link to dest and that no temp
// file is left beside it or beside its target.
func assertLink(t *testing.T, link, target string) {
	t.Helper()
	fi, err := os.Lstat(link)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSymlink {
		t.Fatalf("%s is a %v now, not a link", link, fi.Mode().Type())
	}
	if got, err := filepath.EvalSymlinks(link); err != nil || got != target {
		t.Fatalf("%s resolves to %q (%v), want %s", link, got, err, target)
	}
	for _, d := range []string{filepath.Dir(link), filepath.Dir(target)} {
		if tmps, _ := filepath.Glob(filepath.Join(d, tempPattern)); len(tmps) != 0 {
			t.Errorf("temp files left: %v", tmps)
		}
	}
	if tfi, err := os.Stat(target); err != nil || tfi.Mode().Perm() != 0o600 {
		t.Errorf("target mode %v (%v), want 0600 kept", tfi.Mode(), err)
	}
}

// A symlinked primary conflist is edited through the link: Insert and
// Remove rewrite the link's target atomically and keep the link, the
// primary CNI's later update of its file reaches the runtime with the
// entry put back, and Uninstall leaves the target byte for byte as the
// primary last wrote it. Before, Insert renamed a regular file over the
// link, and the primary's updates to its own file were ignored for good.
func TestSymlinkedConflistIsEditedThroughTheLink(t *testing.T) {
	for _, relative := range []bool{false, true} {
		name := "absolute link"
		if relative {
			name = "relative link"
		}
		t.Run(name, func(t *testing.T) {
			confDir, link, target := linked(t, relative)
			if got := LinkedConfigDirs(confDir); len(got) != 1 || got[0] != filepath.Dir(target) {
				t.Errorf("LinkedConfigDirs = %v, want [%s]", got, filepath.Dir(target))
			}
			entry := json.RawMessage(testEntry)
			res, err := Insert(confDir, entry)
			if err != nil || !res.Changed || res.Path != link {
				t.Fatalf("Insert = %+v, %v; want %s changed", res, err, link)
			}
			assertLink(t, link, target)
			assertLoads(t, link, entry)
			if st, err := Check(confDir, entry); err != nil || !st.Installed() {
				t.Fatalf("Check after Insert = %+v, %v", st, err)
			}

			// The primary CNI rewrites its own file (a new plugin, no entry).
			update, err := os.ReadFile(filepath.Join("testdata", "configs", "10-flannel.conflist"))
			if err != nil {
				t.Fatal(err)
			}
			if err := writeFileAtomic(target, update, 0o600); err != nil {
				t.Fatal(err)
			}
			if st, err := Check(confDir, entry); err != nil || st.Present {
				t.Fatalf("Check after the primary's update = %+v, %v; want the entry gone", st, err)
			}
			if _, err := Insert(confDir, entry); err != nil {
				t.Fatal(err)
			}
			assertLink(t, link, target)
			assertLoads(t, link, entry)
			got, _ := os.ReadFile(target)
			if !strings.Contains(string(got), `"flannel"`) {
				t.Errorf("the primary's update is not in the target:\n%s", got)
			}

			for range 2 { // idempotent
				if err := Uninstall(confDir); err != nil {
					t.Fatal(err)
				}
			}
			assertLink(t, link, target)
			if got, _ := os.ReadFile(target); !bytes.Equal(got, update) {
				t.Errorf("target after Uninstall:\n%s\nwant the primary's bytes:\n%s", got, update)
			}
			if ents, _ := os.ReadDir(confDir); len(ents) != 1 {
				t.Errorf("conf dir holds %d files, want the link alone", len(ents))
			}
		})
	}
}
