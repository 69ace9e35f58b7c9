package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// tempFile is what writeAtomic needs from *os.File.
type tempFile interface {
	io.Writer
	Name() string
	Chmod(fs.FileMode) error
	Sync() error
	Close() error
}

// createTemp is the seam tests use to make writes fail (ENOSPC).
var createTemp = func(dir, pattern string) (tempFile, error) {
	return os.CreateTemp(dir, pattern)
}

// tempPattern names temp files so that no CNI loader picks them up: libcni
// only reads .conf, .conflist and .json.
const tempPattern = ".meshcni-*.tmp"

// writeAtomic replaces path with what fill writes: temp file in the same
// directory, chmod, fsync, rename, fsync of the directory. Readers see the
// old file or the new one, never a mix; on any error the old file is intact
// and the temp file is gone.
func writeAtomic(path string, mode fs.FileMode, fill func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := createTemp(dir, tempPattern)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	closed := false
	defer func() {
		if err != nil {
			if !closed {
				_ = f.Close()
			}
			_ = os.Remove(tmp)
			err = fmt.Errorf("write %s: %w", path, err)
		}
	}()
	if err = fill(f); err != nil {
		return err
	}
	if err = f.Chmod(mode); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	closed = true
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

// RemoveTemp deletes the temp files that a write killed midway left in
// dir (never loaded by a runtime, but garbage) and returns their paths.
func RemoveTemp(dir string) ([]string, error) {
	tmps, err := filepath.Glob(filepath.Join(dir, tempPattern))
	if err != nil {
		return nil, fmt.Errorf("list temp files in %s: %w", dir, err)
	}
	var errs []error
	for _, p := range tmps {
		errs = append(errs, removeFile(p))
	}
	return tmps, errors.Join(errs...)
}

func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	return writeAtomic(path, mode, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// removeFile removes path and makes the removal durable. A missing file is
// not an error.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync dir %s: %w", dir, err)
	}
	return nil
}

// InstallBinary copies src into dir under the same base name, atomically,
// with mode 0755. It does nothing if the file there already has the same
// content and mode. A running copy of the old binary is unaffected: the new
// one is renamed over it, never written in place.
func InstallBinary(src, dir string) (changed bool, err error) {
	dst := filepath.Join(dir, filepath.Base(src))
	same, err := sameContent(src, dst)
	if err != nil {
		return false, err
	}
	if same {
		if fi, err := os.Stat(dst); err == nil && fi.Mode().Perm() == 0o755 {
			return false, nil
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("install %s: %w", src, err)
	}
	in, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("install %s: %w", src, err)
	}
	defer in.Close()
	err = writeAtomic(dst, 0o755, func(w io.Writer) error {
		_, err := io.Copy(w, in)
		return err
	})
	return err == nil, err
}

// sameContent reports whether files a and b hold the same bytes. A missing
// b is simply "not the same".
func sameContent(a, b string) (bool, error) {
	fa, err := os.Open(a)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", a, err)
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("read %s: %w", b, err)
	}
	defer fb.Close()
	sa, err := fa.Stat()
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", a, err)
	}
	sb, err := fb.Stat()
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", b, err)
	}
	if sa.Size() != sb.Size() {
		return false, nil
	}
	bufA, bufB := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, errA := io.ReadFull(fa, bufA)
		nb, errB := io.ReadFull(fb, bufB)
		if !bytes.Equal(bufA[:na], bufB[:nb]) {
			return false, nil
		}
		doneA := errors.Is(errA, io.EOF) || errors.Is(errA, io.ErrUnexpectedEOF)
		doneB := errors.Is(errB, io.EOF) || errors.Is(errB, io.ErrUnexpectedEOF)
		switch {
		case errA != nil && !doneA:
			return false, fmt.Errorf("read %s: %w", a, errA)
		case errB != nil && !doneB:
			return false, fmt.Errorf("read %s: %w", b, errB)
		case doneA || doneB:
			return doneA && doneB, nil
		}
	}
}
