package install

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/meshcni/meshcni/internal/golden"
)

const testEntry = `{"type":"meshcni","name":"meshcni","kubeconfig":"/var/run/meshcni/kubeconfig",` +
	`"exclude_namespaces":["kube-system","istio-system"],"log_level":"info"}`

// file is one file of a test directory: its content comes from
// testdata/configs/<src>.
type file struct {
	name string
	src  string
	mode fs.FileMode // 0 means 0644
}

// snapshot is a directory's regular files: name -> content and mode.
type snapshot map[string]string

func takeSnapshot(t *testing.T, dir string) snapshot {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := snapshot{}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		s[e.Name()] = fi.Mode().String() + "\n" + string(data)
	}
	return s
}

func (s snapshot) diff(t *testing.T, want snapshot) {
	t.Helper()
	var names []string
	for n := range s {
		names = append(names, n)
	}
	for n := range want {
		if _, ok := s[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		if s[n] != want[n] {
			t.Errorf("%s:\n got: %q\nwant: %q", n, s[n], want[n])
		}
	}
}

func setupDir(t *testing.T, files []file) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range files {
		data, err := os.ReadFile(filepath.Join("testdata", "configs", f.src))
		if err != nil {
			t.Fatal(err)
		}
		mode := f.mode
		if mode == 0 {
			mode = 0o644
		}
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // beat the umask
			t.Fatal(err)
		}
	}
	return dir
}

func TestInsertRemove(t *testing.T) {
	cases := []struct {
		name    string
		files   []file
		want    string // file holding the entry afterwards
		wrapped string // .conf turned into want
		changed bool
		// clean: no meshcni entry before, so Remove must restore the
		// directory byte for byte.
		clean bool
	}{
		{name: "calico", files: []file{{"10-calico.conflist", "10-calico.conflist", 0}},
			want: "10-calico.conflist", changed: true, clean: true},
		{name: "cilium", files: []file{{"05-cilium.conflist", "05-cilium.conflist", 0o600}},
			want: "05-cilium.conflist", changed: true, clean: true},
		{name: "flannel", files: []file{{"10-flannel.conflist", "10-flannel.conflist", 0}},
			want: "10-flannel.conflist", changed: true, clean: true},
		{name: "kindnet", files: []file{{"10-kindnet.conflist", "10-kindnet.conflist", 0}},
			want: "10-kindnet.conflist", changed: true, clean: true},
		{name: "terway-conf", files: []file{{"10-terway.conf", "10-terway.conf", 0o640}},
			want: "10-terway.conflist", wrapped: "10-terway.conf", changed: true, clean: true},
		{name: "bridge-json", files: []file{{"10-bridge.json", "10-bridge.json", 0}},
			want: "10-bridge.conflist", wrapped: "10-bridge.json", changed: true, clean: true},
		{name: "aws", files: []file{{"10-aws.conflist", "10-aws.conflist", 0}},
			want: "10-aws.conflist", changed: true, clean: true},
		{name: "already-installed", files: []file{{"10-calico.conflist", "10-calico-installed.conflist", 0}},
			want: "10-calico.conflist", changed: false},
		{name: "not-last", files: []file{{"10-calico.conflist", "10-calico-notlast.conflist", 0}},
			want: "10-calico.conflist", changed: true},
		{name: "stale-entry", files: []file{{"10-calico.conflist", "10-calico-stale.conflist", 0}},
			want: "10-calico.conflist", changed: true},
		{name: "several-candidates", files: []file{
			{"10-calico.conflist", "10-calico.conflist", 0},
			{"05-cilium.conflist", "05-cilium.conflist", 0},
			{"99-terway.conf", "10-terway.conf", 0},
			{"00-cilium.conflist.cilium_bak", "10-flannel.conflist", 0},
		}, want: "05-cilium.conflist", changed: true, clean: true},
		{name: "invalid-first", files: []file{
			{"00-empty.conflist", "empty.conflist", 0},
			{"01-garbage.conf", "garbage.conf", 0},
			{"02-garbage.json", "garbage.conf", 0},
			{"03-noplugins.conflist", "noplugins.conflist", 0},
			{"04-list-in-a.conf", "conflist-in-a.conf", 0},
			{"10-flannel.conflist", "10-flannel.conflist", 0},
		}, want: "10-flannel.conflist", changed: true, clean: true},
	}
	entry := json.RawMessage(testEntry)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := setupDir(t, tc.files)
			before := takeSnapshot(t, dir)
			wantPath := filepath.Join(dir, tc.want)

			res, err := Insert(dir, entry)
			if err != nil {
				t.Fatal(err)
			}
			want := Result{Path: wantPath, Changed: tc.changed}
			if tc.wrapped != "" {
				want.Wrapped = filepath.Join(dir, tc.wrapped)
			}
			if res != want {
				t.Errorf("Insert = %+v, want %+v", res, want)
			}
			got, err := os.ReadFile(wantPath)
			if err != nil {
				t.Fatal(err)
			}
			golden.Compare(t, tc.name, string(got))
			assertLoads(t, wantPath, entry)

			// Mode kept; a wrapped .conf's mode goes to the conflist.
			src := tc.want
			if tc.wrapped != "" {
				src = tc.wrapped
				if _, err := os.Stat(filepath.Join(dir, tc.wrapped)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s still there after wrapping (err %v)", tc.wrapped, err)
				}
			}
			if got, want := takeSnapshot(t, dir)[tc.want][:10], before[src][:10]; got != want {
				t.Errorf("mode of %s = %s, want %s", tc.want, got, want)
			}

			// Other files untouched, no temp files left.
			after := takeSnapshot(t, dir)
			for name, content := range before {
				if name != tc.want && name != tc.wrapped && after[name] != content {
					t.Errorf("%s changed", name)
				}
			}
			if len(after) != len(before) {
				t.Errorf("files after insert: %v", keys(after))
			}

			st, err := Check(dir, entry)
			if err != nil {
				t.Fatal(err)
			}
			if !st.Installed() || !st.Present || st.Path != wantPath {
				t.Errorf("Check after Insert = %+v", st)
			}
			res, err = Insert(dir, entry)
			if err != nil {
				t.Fatal(err)
			}
			if res.Changed {
				t.Errorf("second Insert changed %s", res.Path)
			}
			takeSnapshot(t, dir).diff(t, after)

			touched, err := Remove(dir)
			if err != nil {
				t.Fatal(err)
			}
			if len(touched) == 0 {
				t.Error("Remove touched nothing")
			}
			if tc.clean {
				takeSnapshot(t, dir).diff(t, before)
			} else {
				data, _ := os.ReadFile(wantPath)
				if c, err := parseConflist(data); err != nil || len(c.ours()) != 0 {
					t.Errorf("after Remove: %v, entries %v\n%s", err, c, data)
				}
			}
			if touched, err := Remove(dir); err != nil || len(touched) != 0 {
				t.Errorf("second Remove = %v, %v", touched, err)
			}
		})
	}
}

func keys(s snapshot) []string {
	var k []string
	for n := range s {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

// assertLoads checks that the runtime would load path with entry last.
func assertLoads(t *testing.T, path string, entry json.RawMessage) {
	t.Helper()
	list, err := libcni.ConfListFromFile(path)
	if err != nil {
		t.Fatalf("libcni cannot load %s: %v", path, err)
	}
	last := list.Plugins[len(list.Plugins)-1]
	if last.Network.Type != PluginType || !jsonEqual(last.Bytes, entry) {
		t.Errorf("last plugin of %s = %s", path, last.Bytes)
	}
}

func TestFindPrimaryNoConfig(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dir   func(t *testing.T) string
		skips int
	}{
		{"missing dir", func(t *testing.T) string { return filepath.Join(t.TempDir(), "net.d") }, 0},
		{"empty dir", func(t *testing.T) string { return t.TempDir() }, 0},
		{"only invalid", func(t *testing.T) string {
			return setupDir(t, []file{
				{"00-empty.conflist", "empty.conflist", 0},
				{"01-garbage.conf", "garbage.conf", 0},
				{"03-noplugins.conflist", "noplugins.conflist", 0},
				{"05-cilium.conflist.bak", "05-cilium.conflist", 0},
			})
		}, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			_, err := FindPrimary(dir)
			var nc *NoConfigError
			if !errors.Is(err, ErrNoConfig) || !errors.As(err, &nc) {
				t.Fatalf("FindPrimary = %v, want ErrNoConfig", err)
			}
			if nc.Dir != dir || len(nc.Skipped) != tc.skips {
				t.Errorf("NoConfigError = %+v", nc)
			}
			if _, err := Insert(dir, json.RawMessage(testEntry)); !errors.Is(err, ErrNoConfig) {
				t.Errorf("Insert = %v, want ErrNoConfig", err)
			}
			if _, err := Check(dir, json.RawMessage(testEntry)); !errors.Is(err, ErrNoConfig) {
				t.Errorf("Check = %v, want ErrNoConfig", err)
			}
		})
	}
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		src  string
		want Status
	}{
		{"10-calico.conflist", Status{}},
		{"10-calico-installed.conflist", Status{Present: true, Last: true, Equal: true}},
		{"10-calico-notlast.conflist", Status{Present: true}},
		{"10-calico-stale.conflist", Status{Present: true, Last: true}},
		{"10-terway.conf", Status{}},
	} {
		t.Run(tc.src, func(t *testing.T) {
			name := "10-x" + filepath.Ext(tc.src)
			dir := setupDir(t, []file{{name, tc.src, 0}})
			tc.want.Path = filepath.Join(dir, name)
			got, err := Check(dir, json.RawMessage(testEntry))
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Check = %+v, want %+v", got, tc.want)
			}
			res, err := Insert(dir, json.RawMessage(testEntry))
			if err != nil {
				t.Fatal(err)
			}
			if res.Changed == tc.want.Installed() {
				t.Errorf("Insert changed=%v but Check said installed=%v", res.Changed, tc.want.Installed())
			}
		})
	}
}

// The primary CNI rewrites its .conf after we wrapped it: the .conf sorts
// first, so it is the primary again. Insert wraps it anew over our own stale
// conflist; Remove restores the newest .conf.
func TestRewrapAfterPrimaryRewrite(t *testing.T) {
	dir := setupDir(t, []file{{"10-terway.conf", "10-terway.conf", 0}})
	entry := json.RawMessage(testEntry)
	if _, err := Insert(dir, entry); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "10-terway.conf")
	v2 := []byte(`{"cniVersion":"0.3.0","name":"terway","type":"terway","eniip_virtual_type":"Veth"}`)
	if err := os.WriteFile(conf, v2, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := Check(dir, entry)
	if err != nil {
		t.Fatal(err)
	}
	if st.Installed() || st.Path != conf {
		t.Errorf("Check = %+v, want not installed in %s", st, conf)
	}
	res, err := Insert(dir, entry)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || res.Wrapped != conf {
		t.Errorf("Insert = %+v", res)
	}
	if _, err := Remove(dir); err != nil {
		t.Fatal(err)
	}
	takeSnapshot(t, dir).diff(t, snapshot{"10-terway.conf": "-rw-r--r--\n" + string(v2)})

	// Wrapped, then a new .conf appears, then Remove: the new .conf wins,
	// our stale wrapper goes.
	if _, err := Insert(dir, entry); err != nil {
		t.Fatal(err)
	}
	v3 := []byte(`{"cniVersion":"0.3.0","name":"terway","type":"terway","v":3}`)
	if err := os.WriteFile(conf, v3, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Remove(dir); err != nil {
		t.Fatal(err)
	}
	takeSnapshot(t, dir).diff(t, snapshot{"10-terway.conf": "-rw-r--r--\n" + string(v3)})
}

// A <base>.conflist that meshcni did not write is never overwritten.
func TestWrapRefusesForeignConflist(t *testing.T) {
	dir := setupDir(t, []file{
		{"10-terway.conf", "10-terway.conf", 0},
		{"10-terway.conflist", "10-flannel.conflist", 0},
	})
	before := takeSnapshot(t, dir)
	_, err := Insert(dir, json.RawMessage(testEntry))
	if err == nil || !strings.Contains(err.Error(), "10-terway.conflist exists and was not written by meshcni") {
		t.Errorf("Insert = %v", err)
	}
	takeSnapshot(t, dir).diff(t, before)
}

func TestInsertRejectsBadEntry(t *testing.T) {
	dir := setupDir(t, []file{{"10-calico.conflist", "10-calico.conflist", 0}})
	before := takeSnapshot(t, dir)
	for _, e := range []string{``, `[]`, `{"type":"calico"}`, `{"name":"meshcni"}`, `{"type":"meshcni"`} {
		if _, err := Insert(dir, json.RawMessage(e)); err == nil {
			t.Errorf("Insert(%q) succeeded", e)
		}
	}
	takeSnapshot(t, dir).diff(t, before)
}

func TestUninstall(t *testing.T) {
	root := t.TempDir()
	confDir := setupDir(t, []file{
		{"10-terway.conf", "10-terway.conf", 0},
		{"20-calico.conflist", "10-calico-notlast.conflist", 0}, // a stale entry elsewhere
	})
	before := takeSnapshot(t, confDir)
	bin := filepath.Join(root, "bin")
	src := filepath.Join(root, "meshcni")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(root, "meshcni-lookup")
	if err := os.WriteFile(helper, []byte("#!/bin/true\n"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{src, helper} {
		if _, err := InstallBinary(b, bin); err != nil {
			t.Fatal(err)
		}
	}
	kc := filepath.Join(root, "run", "kubeconfig")
	if _, err := WriteKubeconfig(kc, "https://10.96.0.1:443", []byte("CA"), "tok"); err != nil {
		t.Fatal(err)
	}
	if _, err := Insert(confDir, json.RawMessage(testEntry)); err != nil {
		t.Fatal(err)
	}
	crashed := filepath.Join(confDir, ".meshcni-123.tmp") // left by a crash mid-write
	if err := os.WriteFile(crashed, []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 { // idempotent
		if err := Uninstall(confDir, filepath.Join(bin, "meshcni"), filepath.Join(bin, "meshcni-lookup"), kc); err != nil {
			t.Fatal(err)
		}
	}
	after := takeSnapshot(t, confDir)
	if after["10-terway.conf"] != before["10-terway.conf"] {
		t.Errorf("10-terway.conf not restored:\n%s", after["10-terway.conf"])
	}
	if _, ok := after["10-terway.conflist"]; ok || len(after) != 2 {
		t.Errorf("files after Uninstall: %v", keys(after))
	}
	if strings.Contains(after["20-calico.conflist"], "meshcni") {
		t.Errorf("stale entry left:\n%s", after["20-calico.conflist"])
	}
	for _, p := range []string{filepath.Join(bin, "meshcni"), filepath.Join(bin, "meshcni-lookup"), kc} {
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still there (%v)", p, err)
		}
	}
}
