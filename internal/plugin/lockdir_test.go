package plugin

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/internal/netconf"
)

// The default lock dir is the agent's, under its run dir, not the temp
// dir anyone can write.
func TestLockDirDefault(t *testing.T) {
	conf, err := netconf.Parse(stdinConf("1.0.0", "", false))
	if err != nil {
		t.Fatal(err)
	}
	if conf.Locks != "/var/run/meshcni/locks" || strings.HasPrefix(conf.Locks, os.TempDir()) {
		t.Errorf("default lock dir %q, want /var/run/meshcni/locks", conf.Locks)
	}
	for _, key := range []string{"lockDir", "logSocket", "podCacheSocket"} {
		_, err := netconf.Parse(stdinConf("1.0.0", `,"`+key+`":"run/x"`, false))
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, key+` "run/x": must be an absolute path`) {
			t.Errorf("relative %s: %v", key, err)
		}
	}
}

// A lock dir others can write (or one to be made under such a dir) fails
// a mesh pod's ADD and CHECK with code 7 naming lockDir, before any lock
// file is made; a pod that is not captured does not need it and starts.
// Before, the plug-in used whatever dir it was given, and its default
// was under the world-writable temp dir.
func TestLockDirOthersCanWriteIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the plug-in trusts only root's directories and its own user's")
	}
	open := func(t *testing.T) string {
		d := filepath.Join(t.TempDir(), "open")
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
		return d
	}
	for _, tc := range []struct {
		name    string
		dir     func(t *testing.T) string
		refused string // "" means accepted
	}{
		{name: "world-writable", dir: open, refused: "writable by others"},
		{name: "to be made under a world-writable dir", dir: func(t *testing.T) string {
			return filepath.Join(open(t), "a", "locks")
		}, refused: "writable by others"},
		{name: "another user's", dir: func(t *testing.T) string {
			d := filepath.Join(t.TempDir(), "theirs")
			if err := os.Mkdir(d, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(d, 65534, 65534); err != nil {
				t.Fatal(err)
			}
			return d
		}, refused: "belongs to uid 65534"},
		{name: "root's, to be made", dir: func(t *testing.T) string { return filepath.Join(t.TempDir(), "run", "locks") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			h := newHarness(meshPod("bookinfo", "productpage"), meshPod("bookinfo", "skipped", func(p *corev1.Pod) {
				p.Annotations["sidecar.istio.io/inject"] = "false"
			}))
			h.p.Rules = nil // the real applier, which takes the locks
			conf := stdinConf("1.0.0", `,"lockDir":"`+dir+`"`, false)
			for cmd, run := range map[string]func(*skel.CmdArgs) error{"ADD": h.p.CmdAdd, "CHECK": h.p.CmdCheck} {
				// The netns does not exist: past the lock dir check, the
				// command fails with code 8, without touching a netns.
				err := run(cmdArgs("bookinfo", "productpage", "uid-productpage", conf))
				var te *types.Error
				if !errors.As(err, &te) {
					t.Fatalf("%s: %v, want a CNI error", cmd, err)
				}
				if tc.refused == "" {
					if te.Code != types.ErrInvalidNetNS {
						t.Errorf("%s: %v, want past the lock dir check (code 8: no such netns)", cmd, te)
					}
					continue
				}
				if te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, `lockDir "`+dir+`"`) || !strings.Contains(te.Msg, tc.refused) {
					t.Errorf("%s: %v, want code 7 naming lockDir and %q", cmd, te, tc.refused)
				}
			}
			if tc.refused != "" {
				if ents, err := os.ReadDir(dir); err == nil && len(ents) != 0 {
					t.Errorf("files made in the refused lock dir: %d", len(ents))
				}
			}
			if _, err := h.add(t, cmdArgs("bookinfo", "skipped", "uid-skipped", conf)); err != nil {
				t.Errorf("a pod that is not captured: %v", err)
			}
		})
	}
}
