// Package image builds the agent's container image without a container
// engine or a base image: static binaries in one layer, written as an OCI
// image layout in a tarball. Every timestamp is the given epoch and every
// file is sorted and owned by root, so the same binaries give the same
// digest.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one file of the image.
type File struct {
	Path   string // absolute, in the image
	Source string // on this machine
	Mode   fs.FileMode
}

// Options describe the image.
type Options struct {
	Files      []File
	Dirs       map[string]fs.FileMode // extra empty directories, e.g. /tmp 1777
	Epoch      time.Time              // every timestamp
	Arch       string                 // GOARCH, e.g. amd64
	Entrypoint []string
	Env        []string
	Labels     map[string]string
}

// Build assembles the image.
func Build(o Options) (v1.Image, error) {
	layerTar, err := layerTar(o)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	created := v1.Time{Time: o.Epoch.UTC()}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer,
		History: v1.History{Created: created, CreatedBy: "meshcni hack/image", Comment: "static binaries"}})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Created = o.Arch, "linux", created
	cf.Config.Entrypoint = o.Entrypoint
	cf.Config.Env = o.Env
	cf.Config.Labels = o.Labels
	cf.Config.User = "0:0"
	return mutate.ConfigFile(img, cf)
}

// layerTar is the layer's content: parent directories, then files, sorted.
func layerTar(o Options) ([]byte, error) {
	dirs := map[string]fs.FileMode{}
	for d, m := range o.Dirs {
		dirs[strings.TrimPrefix(path.Clean(d), "/")] = m
	}
	for _, f := range o.Files {
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("image path %q must be absolute", f.Path)
		}
		for d := path.Dir(strings.TrimPrefix(f.Path, "/")); d != "."; d = path.Dir(d) {
			if _, ok := dirs[d]; !ok {
				dirs[d] = 0o755
			}
		}
	}
	type entry struct {
		name string
		hdr  *tar.Header
		src  string
	}
	var entries []entry
	for d, m := range dirs {
		mode := int64(m.Perm())
		if m&fs.ModeSticky != 0 {
			mode |= 0o1000 // c_ISVTX
		}
		entries = append(entries, entry{name: d + "/", hdr: &tar.Header{Typeflag: tar.TypeDir, Mode: mode}})
	}
	for _, f := range o.Files {
		st, err := os.Stat(f.Source)
		if err != nil {
			return nil, err
		}
		entries = append(entries, entry{name: strings.TrimPrefix(f.Path, "/"), src: f.Source,
			hdr: &tar.Header{Typeflag: tar.TypeReg, Mode: int64(f.Mode.Perm()), Size: st.Size()}})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		e.hdr.Name = e.name
		e.hdr.ModTime = o.Epoch.UTC()
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(e.hdr); err != nil {
			return nil, err
		}
		if e.src != "" {
			b, err := os.ReadFile(e.src)
			if err != nil {
				return nil, err
			}
			if int64(len(b)) != e.hdr.Size {
				return nil, fmt.Errorf("%s changed while being read", e.src)
			}
			if _, err := tw.Write(b); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteOCITar writes img, tagged ref, as an OCI image layout in a tarball
// at dst (atomically), and returns the manifest digest.
func WriteOCITar(dst string, img v1.Image, ref string, epoch time.Time) (v1.Hash, error) {
	digest, err := img.Digest()
	if err != nil {
		return v1.Hash{}, err
	}
	dir, err := os.MkdirTemp("", "meshcni-image-")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.RemoveAll(dir)
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return v1.Hash{}, err
	}
	var ann map[string]string
	if ref != "" {
		ann = map[string]string{"org.opencontainers.image.ref.name": ref}
	}
	if err := p.AppendImage(img, layout.WithAnnotations(ann)); err != nil {
		return v1.Hash{}, err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return v1.Hash{}, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".tmp-*")
	if err != nil {
		return v1.Hash{}, err
	}
	defer os.Remove(tmp.Name())
	if err := tarDir(tmp, dir, epoch); err != nil {
		tmp.Close()
		return v1.Hash{}, err
	}
	if err := tmp.Close(); err != nil {
		return v1.Hash{}, err
	}
	return digest, os.Rename(tmp.Name(), dst)
}

// tarDir writes dir's tree, sorted, with fixed owners, modes and times.
func tarDir(w io.Writer, dir string, epoch time.Time) error {
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		names = append(names, p)
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(names)
	tw := tar.NewWriter(w)
	for _, p := range names {
		rel, _ := filepath.Rel(dir, p)
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: filepath.ToSlash(rel), ModTime: epoch.UTC(), Format: tar.FormatPAX}
		if st.IsDir() {
			hdr.Typeflag, hdr.Name, hdr.Mode = tar.TypeDir, hdr.Name+"/", 0o755
		} else {
			hdr.Typeflag, hdr.Mode, hdr.Size = tar.TypeReg, 0o644, st.Size()
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !st.IsDir() {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			_, err = io.Copy(tw, f)
			f.Close()
			if err != nil {
				return err
			}
		}
	}
	return tw.Close()
}
