package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"k8s.io/client-go/tools/clientcmd"
)

// failingFile fails the named step, after writing a few bytes if the step
// is "write", like a disk that fills up midway.
// It does not embed *os.File, so io.Copy cannot bypass Write through
// (*os.File).ReadFrom.
type failingFile struct {
	f    *os.File
	step string
	err  error
}

func (f *failingFile) Write(p []byte) (int, error) {
	if f.step == "write" {
		n, _ := f.f.Write(p[:len(p)/2])
		return n, f.err
	}
	return f.f.Write(p)
}

func (f *failingFile) Name() string { return f.f.Name() }

func (f *failingFile) Chmod(m fs.FileMode) error {
	if f.step == "chmod" {
		return f.err
	}
	return f.f.Chmod(m)
}

func (f *failingFile) Sync() error {
	if f.step == "sync" {
		return f.err
	}
	return f.f.Sync()
}

func (f *failingFile) Close() error {
	err := f.f.Close()
	if f.step == "close" {
		return f.err
	}
	return err
}

func failWrites(t *testing.T, step string, errno error) {
	t.Helper()
	orig := createTemp
	createTemp = func(dir, pattern string) (tempFile, error) {
		if step == "create" {
			return nil, errno
		}
		f, err := os.CreateTemp(dir, pattern)
		if err != nil {
			return nil, err
		}
		return &failingFile{f: f, step: step, err: errno}, nil
	}
	t.Cleanup(func() { createTemp = orig })
}

// Not parallel: failWrites swaps a package variable.
func TestWriteFailureKeepsOriginal(t *testing.T) {
	for _, step := range []string{"create", "write", "chmod", "sync", "close"} {
		for _, src := range []string{"10-calico.conflist", "10-terway.conf"} {
			t.Run(step+"/"+src, func(t *testing.T) {
				dir := setupDir(t, []file{{src, src, 0}})
				before := takeSnapshot(t, dir)
				failWrites(t, step, syscall.ENOSPC)
				_, err := Insert(dir, json.RawMessage(testEntry))
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("Insert = %v, want ENOSPC", err)
				}
				target := strings.TrimSuffix(src, filepath.Ext(src)) + ".conflist"
				if !strings.Contains(err.Error(), filepath.Join(dir, target)) {
					t.Errorf("error does not name the file: %v", err)
				}
				takeSnapshot(t, dir).diff(t, before) // original intact, no temp file
			})
		}
	}
	t.Run("binary and kubeconfig", func(t *testing.T) {
		dir := t.TempDir()
		src := filepath.Join(dir, "meshcni")
		if err := os.WriteFile(src, []byte("new"), 0o644); err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(dir, "bin")
		if err := os.MkdirAll(bin, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(bin, "meshcni"), []byte("old"), 0o755); err != nil {
			t.Fatal(err)
		}
		kc := filepath.Join(dir, "kubeconfig")
		if err := os.WriteFile(kc, []byte("old"), 0o600); err != nil {
			t.Fatal(err)
		}
		before := takeSnapshot(t, bin)
		failWrites(t, "write", syscall.ENOSPC)
		if _, err := InstallBinary(src, bin); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("InstallBinary = %v", err)
		}
		takeSnapshot(t, bin).diff(t, before)
		if _, err := WriteKubeconfig(kc, "https://x", nil, "t"); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("WriteKubeconfig = %v", err)
		}
		if data, _ := os.ReadFile(kc); string(data) != "old" {
			t.Errorf("kubeconfig = %q", data)
		}
	})
}

// TestENOSPCTmpfs fills a real 12 KiB tmpfs. The tmpfs is mounted in a
// private mount namespace of a child process (unshare), so the host's mounts
// are never touched; the child re-runs this test binary for
// TestENOSPCTmpfsChild.
func TestENOSPCTmpfs(t *testing.T) {
	if testing.Short() || os.Geteuid() != 0 {
		t.Skip("needs root (mount namespace + tmpfs)")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("no unshare")
	}
	dir := t.TempDir()
	cmd := exec.Command(unshare, "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", `mount -t tmpfs -o size=12k,mode=0755 meshcni-test "$MESHCNI_TMPFS" && exec "$0" -test.run='^TestENOSPCTmpfsChild$' -test.v`,
		os.Args[0])
	cmd.Env = append(os.Environ(), "MESHCNI_TMPFS="+dir)
	out, err := cmd.CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--- PASS: TestENOSPCTmpfsChild")) {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestENOSPCTmpfsChild(t *testing.T) {
	dir := os.Getenv("MESHCNI_TMPFS")
	if dir == "" {
		t.Skip("run by TestENOSPCTmpfs")
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil || st.Type != 0x01021994 { // TMPFS_MAGIC
		t.Fatalf("%s is not the test tmpfs: %v", dir, err)
	}
	// A valid conflist that fills the whole filesystem.
	conf := filepath.Join(dir, "10-big.conflist")
	pad := strings.Repeat("x", 12*1024-200)
	data := fmt.Appendf(nil, `{"cniVersion":"0.3.1","name":"big","plugins":[{"type":"bridge","pad":%q}]}`+"\n", pad)
	if err := os.WriteFile(conf, data, 0o644); err != nil {
		t.Fatal(err)
	}
	before := takeSnapshot(t, dir)
	_, err := Insert(dir, json.RawMessage(testEntry))
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), conf) {
		t.Fatalf("Insert = %v, want ENOSPC naming %s", err, conf)
	}
	takeSnapshot(t, dir).diff(t, before)

	src := filepath.Join(t.TempDir(), "meshcni") // on the normal filesystem
	if err := os.WriteFile(src, bytes.Repeat([]byte{1}, 64<<10), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := InstallBinary(src, dir); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("InstallBinary = %v, want ENOSPC", err)
	}
	takeSnapshot(t, dir).diff(t, before)
}

// A primary CNI keeps replacing its conflist (atomically, as they do) while
// Insert runs again and again: every read of the file, at any moment, is a
// complete, loadable config, and the directory always has a primary.
func TestConcurrentRewrites(t *testing.T) {
	dir := setupDir(t, []file{{"10-calico.conflist", "10-calico.conflist", 0}})
	path := filepath.Join(dir, "10-calico.conflist")
	variants := [][]byte{}
	for _, src := range []string{"10-calico.conflist", "10-calico-notlast.conflist", "10-calico-stale.conflist"} {
		data, err := os.ReadFile(filepath.Join("testdata", "configs", src))
		if err != nil {
			t.Fatal(err)
		}
		variants = append(variants, data)
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	wg.Add(2)
	go func() { // the primary CNI
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			tmp := filepath.Join(dir, fmt.Sprintf(".calico-%d.tmp", i))
			if err := os.WriteFile(tmp, variants[i%len(variants)], 0o644); err != nil {
				errc <- err
				return
			}
			if err := os.Rename(tmp, path); err != nil {
				errc <- err
				return
			}
		}
	}()
	var reads atomic.Int64
	go func() { // the runtime, reading at any time
		defer wg.Done()
		for !stop.Load() {
			data, err := os.ReadFile(path)
			if err != nil {
				errc <- fmt.Errorf("read: %w", err)
				return
			}
			if _, err := libcni.NetworkConfFromBytes(data); err != nil {
				errc <- fmt.Errorf("torn read %q: %w", data, err)
				return
			}
			if p, err := FindPrimary(dir); err != nil || p != path {
				errc <- fmt.Errorf("FindPrimary = %q, %v", p, err)
				return
			}
			reads.Add(1)
		}
	}()

	var wrote int
	for range 300 {
		res, err := Insert(dir, json.RawMessage(testEntry))
		if errors.Is(err, errRaced) {
			continue // the agent's watcher retries
		}
		if err != nil {
			t.Error(err)
			break
		}
		if res.Changed {
			wrote++
		}
	}
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if wrote == 0 || reads.Load() == 0 {
		t.Errorf("no overlap: %d writes, %d reads", wrote, reads.Load())
	}
	// Quiet again: one more Insert settles it.
	if _, err := Insert(dir, json.RawMessage(testEntry)); err != nil {
		t.Fatal(err)
	}
	if st, err := Check(dir, json.RawMessage(testEntry)); err != nil || !st.Installed() {
		t.Errorf("Check = %+v, %v", st, err)
	}
	t.Logf("%d inserts wrote, %d reads", wrote, reads.Load())
}

func TestInstallBinary(t *testing.T) {
	root := t.TempDir()
	src := filepath.Join(root, "meshcni")
	bin := filepath.Join(root, "opt", "cni", "bin")
	dst := filepath.Join(bin, "meshcni")
	write := func(p string, data string, mode fs.FileMode) {
		t.Helper()
		if err := os.WriteFile(p, []byte(data), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write(src, "v1", 0o600)
	steps := []struct {
		name    string
		prepare func()
		changed bool
	}{
		{"fresh", func() {}, true},
		{"same", func() {}, false},
		{"new content", func() { write(src, "v2", 0o600) }, true},
		{"same size, other bytes", func() { write(src, "v3", 0o600) }, true},
		{"mode drifted", func() { write(dst, "v3", 0o700) }, true},
		{"longer", func() { write(src, strings.Repeat("v", 200<<10), 0o600) }, true},
		{"same again", func() {}, false},
	}
	for _, s := range steps {
		s.prepare()
		changed, err := InstallBinary(src, bin)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if changed != s.changed {
			t.Errorf("%s: changed = %v, want %v", s.name, changed, s.changed)
		}
		want, _ := os.ReadFile(src)
		got, _ := os.ReadFile(dst)
		fi, _ := os.Stat(dst)
		if !bytes.Equal(got, want) || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: dst = %d bytes, mode %v", s.name, len(got), fi.Mode())
		}
	}
	if ents, _ := os.ReadDir(bin); len(ents) != 1 {
		t.Errorf("left behind in %s: %v", bin, ents)
	}
	if _, err := InstallBinary(filepath.Join(root, "missing"), bin); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("InstallBinary(missing) = %v", err)
	}
}

func TestWriteKubeconfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "meshcni", "kubeconfig")
	ca := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	for i, tc := range []struct {
		token   string
		changed bool
	}{{"tok1", true}, {"tok1", false}, {"tok2", true}} {
		changed, err := WriteKubeconfig(path, "https://10.96.0.1:443", ca, tc.token)
		if err != nil {
			t.Fatal(err)
		}
		if changed != tc.changed {
			t.Errorf("step %d: changed = %v", i, changed)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("mode = %v, %v", fi, err)
		}
		cfg, err := clientcmd.LoadFromFile(path)
		if err != nil {
			t.Fatal(err)
		}
		rest, err := clientcmd.NewDefaultClientConfig(*cfg, nil).ClientConfig()
		if err != nil {
			t.Fatal(err)
		}
		if rest.Host != "https://10.96.0.1:443" || rest.BearerToken != tc.token || !bytes.Equal(rest.CAData, ca) {
			t.Errorf("step %d: config = host %q token %q ca %q", i, rest.Host, rest.BearerToken, rest.CAData)
		}
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := WriteKubeconfig(path, "https://10.96.0.1:443", ca, "tok2"); err != nil || !changed {
		t.Errorf("mode drift not repaired: %v %v", changed, err)
	}
	if _, err := WriteKubeconfig(path, "", ca, "t"); err == nil {
		t.Error("empty server accepted")
	}
}
