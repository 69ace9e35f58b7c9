package image

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/meshcni/meshcni/internal/apilookup"
)

// AgentBinary is where the agent lives in the image; PluginBinary is the
// plug-in the agent copies to the node (the chart's --plugin-binary).
const (
	AgentBinary  = "/usr/local/bin/meshcni-agent"
	PluginBinary = "/opt/meshcni/bin/meshcni"
)

// CmdOptions build the image from the module's cmd/ packages.
type CmdOptions struct {
	ModuleDir string   // the repository root
	Cmds      []string // names under cmd/
	Arch      string   // GOARCH
	Epoch     time.Time
	Version   string // org.opencontainers.image.version label
}

// PathOf is where a cmd's binary goes in the image. The plug-in's API
// lookup helper goes beside it, where the agent looks for it.
func PathOf(cmd string) string {
	switch cmd {
	case "meshcni":
		return PluginBinary
	case apilookup.HelperName:
		return path.Join(path.Dir(PluginBinary), apilookup.HelperName)
	}
	return "/usr/local/bin/" + cmd
}

// FromCmds compiles each cmd statically and reproducibly (CGO_ENABLED=0,
// -trimpath, no build ID, no VCS stamp) into a temp dir and builds the
// image from them.
func FromCmds(ctx context.Context, o CmdOptions) (v1.Image, error) {
	if len(o.Cmds) == 0 {
		return nil, fmt.Errorf("no binaries to put in the image: give -cmds")
	}
	dir, err := os.MkdirTemp("", "meshcni-image-bin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	opts := Options{
		Arch:   o.Arch,
		Epoch:  o.Epoch,
		Dirs:   map[string]fs.FileMode{"/tmp": 0o777 | fs.ModeSticky, "/var/run/meshcni": 0o755},
		Env:    []string{"PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Labels: map[string]string{"org.opencontainers.image.title": "meshcni-agent", "org.opencontainers.image.version": o.Version},
	}
	for _, c := range o.Cmds {
		if _, err := os.Stat(filepath.Join(o.ModuleDir, "cmd", c)); err != nil {
			return nil, fmt.Errorf("-cmds %s: no package cmd/%s in %s", c, c, o.ModuleDir)
		}
		out := filepath.Join(dir, c)
		build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid=", "-o", out, "./cmd/"+c)
		build.Dir = o.ModuleDir
		build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+o.Arch, "GOFLAGS=")
		if b, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build ./cmd/%s: %w\n%s", c, err, b)
		}
		opts.Files = append(opts.Files, File{Path: PathOf(c), Source: out, Mode: 0o755})
		if c == "meshcni-agent" {
			opts.Entrypoint = []string{AgentBinary}
		}
	}
	return Build(opts)
}

// SourceDateEpoch is $SOURCE_DATE_EPOCH, else the last commit's time in
// dir, else the Unix epoch.
func SourceDateEpoch(ctx context.Context, dir string) (time.Time, error) {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: must be seconds since 1970", s)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	cmd := exec.CommandContext(ctx, "git", "log", "-1", "--format=%ct")
	cmd.Dir = dir
	if out, err := cmd.Output(); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil {
			return time.Unix(n, 0).UTC(), nil
		}
	}
	return time.Unix(0, 0).UTC(), nil
}
