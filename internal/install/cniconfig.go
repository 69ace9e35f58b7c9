// Package install is the node-files side of the meshcni agent: it finds the
// CNI config the container runtime uses, splices the meshcni entry into it
// (last in the chain) or out of it, and installs the plugin binary and its
// kubeconfig. Every write is atomic, and other plugins' entries are kept byte
// for byte.
package install

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

// ErrNoConfig means the directory holds no loadable CNI config yet (the
// primary CNI has not written one). Callers wait and retry.
var ErrNoConfig = errors.New("no CNI config yet")

// NoConfigError is returned by FindPrimary when no file loads. It matches
// ErrNoConfig with errors.Is.
type NoConfigError struct {
	Dir     string
	Skipped []string // "file: reason" for each candidate that did not load
}

func (e *NoConfigError) Error() string {
	msg := fmt.Sprintf("%v in %s", ErrNoConfig, e.Dir)
	if len(e.Skipped) > 0 {
		msg += " (skipped " + strings.Join(e.Skipped, "; ") + ")"
	}
	return msg
}

func (e *NoConfigError) Is(target error) bool { return target == ErrNoConfig }

// confExts are the extensions runtimes (containerd, CRI-O) load.
var confExts = []string{".conf", ".conflist", ".json"}

// FindPrimary returns the path of the config file the runtime uses: of the
// files in dir with a CNI extension, sorted by name, the first that loads.
// A .conflist must load as a list with plugins; a .conf or .json must load
// as a single plugin with a "type". Empty, non-JSON and invalid files are
// skipped. With none left it returns a *NoConfigError.
func FindPrimary(dir string) (string, error) {
	files, err := libcni.ConfFiles(dir, confExts)
	if err != nil {
		return "", fmt.Errorf("list CNI configs in %s: %w", dir, err)
	}
	sort.Strings(files)
	var skipped []string
	for _, f := range files {
		if err := loadable(f); err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", filepath.Base(f), err))
			continue
		}
		return f, nil
	}
	return "", &NoConfigError{Dir: dir, Skipped: skipped}
}

func loadable(path string) error {
	if filepath.Ext(path) == ".conflist" {
		list, err := libcni.ConfListFromFile(path)
		if err != nil {
			return err
		}
		if len(list.Plugins) == 0 {
			return errors.New("no plugins")
		}
		return nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	// Also rejects a conflist saved as .conf: it has no top-level "type".
	_, err = libcni.NetworkPluginConfFromBytes(data)
	return err
}

// Result says what Insert did.
type Result struct {
	Path    string // the conflist that holds the entry
	Changed bool   // false: the entry was already there, last and equal
	Wrapped string // the single-plugin .conf this call turned into Path (and removed), if any
}

// errRaced means the file changed between our read and our write.
var errRaced = errors.New("changed while being updated")

// ErrRaced is returned by Insert when the primary config kept changing
// under it (another writer at work); the caller retries shortly.
var ErrRaced = errRaced

// Insert makes entry (a JSON object with "type": "meshcni") the last plugin
// of the primary config in dir. A .conflist is updated in place (atomically);
// a single-plugin .conf or .json becomes <base>.conflist and the original is
// removed; Remove restores it. A .conflist that is a symbolic link is
// edited through it: its target is rewritten (atomically, in the target's
// directory) and the link stays (a single-plugin .conf that is a link is
// wrapped like any other, and Remove restores it as a regular file). If
// the primary config changes while Insert works, Insert starts over (a
// few times).
func Insert(dir string, entry json.RawMessage) (Result, error) {
	for attempt := 1; ; attempt++ {
		res, err := insertOnce(dir, entry)
		if errors.Is(err, errRaced) && attempt < 5 {
			continue
		}
		return res, err
	}
}

func insertOnce(dir string, entry json.RawMessage) (Result, error) {
	path, err := FindPrimary(dir)
	if err != nil {
		return Result{}, err
	}
	if filepath.Ext(path) == ".conflist" {
		target, err := linkTarget(path)
		if err != nil {
			return Result{}, err
		}
		data, fi, err := readFile(target)
		if err != nil {
			return Result{}, err
		}
		out, changed, err := InsertEntry(data, entry)
		if err != nil {
			return Result{}, fmt.Errorf("insert into %s: %w", path, err)
		}
		if !changed {
			return Result{Path: path}, nil
		}
		// Through path: a link pointed elsewhere since is a race too.
		if err := unchangedSince(path, fi); err != nil {
			return Result{}, err
		}
		if err := writeFileAtomic(target, out, fi.Mode().Perm()); err != nil {
			return Result{}, err
		}
		return Result{Path: path, Changed: true}, nil
	}

	data, fi, err := readFile(path)
	if err != nil {
		return Result{}, err
	}
	list := strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	out, err := WrapConf(data, filepath.Base(path), entry)
	if err != nil {
		return Result{}, fmt.Errorf("wrap %s: %w", path, err)
	}
	// <base>.conflist sorts after <base>.conf, so it may exist: fine if it is
	// our wrapper of an older <base>.conf, never if it is someone else's.
	if old, err := os.ReadFile(list); err == nil {
		if c, err := parseConflist(old); err != nil || c.wrapped != filepath.Base(path) {
			return Result{}, fmt.Errorf("wrap %s: %s exists and was not written by meshcni; not overwriting it", path, list)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return Result{}, fmt.Errorf("wrap %s: %w", path, err)
	}
	if err := unchangedSince(path, fi); err != nil {
		return Result{}, err
	}
	// Write the list first: until the .conf is gone the runtime still picks
	// the .conf (it sorts first), so there is no moment without a config.
	if err := writeFileAtomic(list, out, fi.Mode().Perm()); err != nil {
		return Result{}, err
	}
	if err := removeFile(path); err != nil {
		return Result{}, err
	}
	return Result{Path: list, Changed: true, Wrapped: path}, nil
}

// Status is what Check found in the primary config.
type Status struct {
	Path    string // the primary config file
	Present bool   // it holds at least one meshcni entry
	Last    bool   // it holds exactly one, and it is the last plugin
	Equal   bool   // Last, and that entry equals the desired one (as JSON)
}

// Installed reports whether nothing needs to be done.
func (s Status) Installed() bool { return s.Last && s.Equal }

// Check reports whether the primary config in dir has entry as its last
// plugin. Insert rewrites exactly when Installed() is false.
func Check(dir string, entry json.RawMessage) (Status, error) {
	if err := checkEntry(entry); err != nil {
		return Status{}, err
	}
	path, err := FindPrimary(dir)
	if err != nil {
		return Status{}, err
	}
	st := Status{Path: path}
	if filepath.Ext(path) != ".conflist" {
		return st, nil // a lone plugin: not chained yet
	}
	data, _, err := readFile(path)
	if err != nil {
		return st, err
	}
	c, err := parseConflist(data)
	if err != nil {
		return st, fmt.Errorf("check %s: %w", path, err)
	}
	st.Present, st.Last, st.Equal = c.status(entry)
	return st, nil
}

// Remove takes meshcni out of every .conflist in dir: it deletes our entries
// and, for a conflist that Insert made from a single-plugin .conf, puts the
// original .conf back byte for byte and deletes the conflist. If the primary
// CNI has since written a new .conf, that one is kept and only our stale
// conflist goes. It returns the files it wrote or deleted. Files that do not
// parse are left alone.
func Remove(dir string) (touched []string, err error) {
	files, err := libcni.ConfFiles(dir, []string{".conflist"})
	if err != nil {
		return nil, fmt.Errorf("list CNI configs in %s: %w", dir, err)
	}
	sort.Strings(files)
	var errs []error
	for _, f := range files {
		t, err := removeFrom(f)
		touched = append(touched, t...)
		errs = append(errs, err)
	}
	return touched, errors.Join(errs...)
}

func removeFrom(path string) ([]string, error) {
	target, err := linkTarget(path)
	if err != nil {
		return nil, err
	}
	data, fi, err := readFile(target)
	if err != nil {
		return nil, err
	}
	if _, err := parseConflist(data); err != nil {
		return nil, nil // not a conflist we could have written
	}
	name, conf, ok, err := UnwrapConf(data)
	if err != nil {
		return nil, fmt.Errorf("remove from %s: %w", path, err)
	}
	if ok && validWrappedName(name) {
		var touched []string
		orig := filepath.Join(filepath.Dir(path), name)
		if _, err := os.Lstat(orig); errors.Is(err, fs.ErrNotExist) {
			if err := writeFileAtomic(orig, conf, fi.Mode().Perm()); err != nil {
				return nil, err
			}
			touched = append(touched, orig)
		}
		if err := removeFile(path); err != nil {
			return touched, err
		}
		return append(touched, path), nil
	}
	out, changed, err := RemoveEntry(data)
	if err != nil {
		return nil, fmt.Errorf("remove from %s: %w", path, err)
	}
	if !changed {
		return nil, nil
	}
	if err := writeFileAtomic(target, out, fi.Mode().Perm()); err != nil {
		return nil, err
	}
	return []string{path}, nil
}

// LinkedConfigDirs returns the directories, other than dir, that hold the
// targets of the CNI configs in dir that are symbolic links, sorted. A
// primary CNI that links its config into dir rewrites the target there,
// and dir itself sees no change: whoever keeps an entry in that config
// must watch these too. Links that do not resolve are skipped.
func LinkedConfigDirs(dir string) []string {
	files, err := libcni.ConfFiles(dir, confExts)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var dirs []string
	for _, f := range files {
		if fi, err := os.Lstat(f); err != nil || fi.Mode().Type() != fs.ModeSymlink {
			continue
		}
		target, err := filepath.EvalSymlinks(f)
		if err != nil {
			continue
		}
		if d := filepath.Dir(target); d != filepath.Clean(dir) && !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	sort.Strings(dirs)
	return dirs
}

// linkTarget is the file a write of the conflist at path goes to: path
// itself, or, if path is a symbolic link (a primary CNI or a node image
// that keeps its conflist elsewhere and links it into the conf dir), the
// file the link resolves to. Renaming a new file over the link itself
// would turn it into a regular file for good, and the primary's later
// updates to the link's target would never reach the runtime.
func linkTarget(path string) (string, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSymlink {
		return path, nil
	}
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("read %s: follow the link: %w", path, err)
	}
	return target, nil
}

// validWrappedName guards the marker value: a plain file name with a
// single-plugin extension, never a path.
func validWrappedName(name string) bool {
	ext := filepath.Ext(name)
	return name == filepath.Base(name) && !strings.ContainsAny(name, `/\`) &&
		(ext == ".conf" || ext == ".json") && name != ext
}

// Uninstall undoes everything the agent installed on the node: meshcni
// entries in confDir (see Remove), temp files a crash may have left there,
// then files: the plug-in's binaries and its kubeconfig. Empty paths are
// skipped; missing files are not an error.
func Uninstall(confDir string, files ...string) error {
	var errs []error
	if confDir != "" {
		_, err := Remove(confDir)
		errs = append(errs, err)
		_, err = RemoveTemp(confDir)
		errs = append(errs, err)
	}
	for _, p := range files {
		if p != "" {
			errs = append(errs, removeFile(p))
		}
	}
	return errors.Join(errs...)
}

func readFile(path string) ([]byte, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, fi, nil
}

// unchangedSince returns errRaced if path is no longer the file fi described
// (replaced by rename, or rewritten in place).
func unchangedSince(path string, fi fs.FileInfo) error {
	now, err := os.Stat(path)
	if err != nil || !os.SameFile(fi, now) || !now.ModTime().Equal(fi.ModTime()) || now.Size() != fi.Size() {
		return fmt.Errorf("%s: %w", path, errRaced)
	}
	return nil
}
