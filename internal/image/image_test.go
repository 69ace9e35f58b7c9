package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

var epoch = time.Unix(1700000000, 0)

// fakeBinaries writes two files with a given mtime, in a fresh dir.
func fakeBinaries(t *testing.T, mtime time.Time) Options {
	t.Helper()
	dir := t.TempDir()
	var files []File
	for name, body := range map[string]string{"agent": "agent binary", "meshcni": "plug-in binary"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		path := AgentBinary
		if name == "meshcni" {
			path = PluginBinary
		}
		files = append(files, File{Path: path, Source: p, Mode: 0o755})
	}
	return Options{Files: files, Epoch: epoch, Arch: "amd64", Entrypoint: []string{AgentBinary},
		Dirs: map[string]fs.FileMode{"/tmp": 0o777 | fs.ModeSticky}}
}

func buildTar(t *testing.T, o Options) (v1.Hash, []byte) {
	t.Helper()
	img, err := Build(o)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "img.oci.tar")
	d, err := WriteOCITar(dst, img, "example.test/meshcni-agent:dev", epoch)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	return d, b
}

// Same content, different source files and mtimes: same bytes.
func TestReproducible(t *testing.T) {
	d1, b1 := buildTar(t, fakeBinaries(t, time.Now()))
	d2, b2 := buildTar(t, fakeBinaries(t, time.Now().Add(-time.Hour)))
	if d1 != d2 || !bytes.Equal(b1, b2) {
		t.Fatalf("two builds differ: %s (%x) vs %s (%x)", d1, sha256.Sum256(b1), d2, sha256.Sum256(b2))
	}
	o := fakeBinaries(t, time.Now())
	o.Epoch = epoch.Add(time.Second)
	if d3, _ := buildTar(t, o); d3 == d1 {
		t.Error("a different SOURCE_DATE_EPOCH gave the same digest")
	}
}

// The tarball is an OCI layout that go-containerregistry reads back, with
// the binaries at their paths, root-owned, at the epoch.
func TestLayoutContents(t *testing.T) {
	want, b := buildTar(t, fakeBinaries(t, time.Now()))
	img := readLayout(t, b)
	// As a registry client would: digests, sizes, diff IDs all consistent.
	if err := validate.Image(img); err != nil {
		t.Fatalf("invalid image: %v", err)
	}
	if d, _ := img.Digest(); d != want {
		t.Errorf("read back digest %s, wrote %s", d, want)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" || !cf.Created.Time.Equal(epoch) || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != AgentBinary {
		t.Errorf("config: os %s arch %s created %v entrypoint %v", cf.OS, cf.Architecture, cf.Created, cf.Config.Entrypoint)
	}
	layers, _ := img.Layers()
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var got []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) {
			t.Errorf("%s: uid %d gid %d mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		got = append(got, fmt.Sprintf("%s %o", h.Name, h.Mode))
	}
	want2 := []string{"opt/ 755", "opt/meshcni/ 755", "opt/meshcni/bin/ 755", "opt/meshcni/bin/meshcni 755",
		"tmp/ 1777", "usr/ 755", "usr/local/ 755", "usr/local/bin/ 755", "usr/local/bin/meshcni-agent 755"}
	if fmt.Sprint(got) != fmt.Sprint(want2) {
		t.Errorf("layer holds\n%v\nwant\n%v", got, want2)
	}
}

// readLayout unpacks an OCI layout tarball and returns its only image.
func readLayout(t *testing.T, b []byte) v1.Image {
	t.Helper()
	dir := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		data, _ := io.ReadAll(tr)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 || m.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "example.test/meshcni-agent:dev" {
		t.Fatalf("index %+v", m.Manifests)
	}
	img, err := idx.Image(m.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// The agent installs the helper from beside --plugin-binary, so the image
// must put it there.
func TestHelperBesidePlugin(t *testing.T) {
	if got, want := PathOf("meshcni-lookup"), filepath.Join(filepath.Dir(PluginBinary), "meshcni-lookup"); got != want {
		t.Fatalf("PathOf(meshcni-lookup) = %s, want %s", got, want)
	}
	if got := PathOf("meshcni-iptables"); got != "/usr/local/bin/meshcni-iptables" {
		t.Fatalf("PathOf(meshcni-iptables) = %s", got)
	}
}
