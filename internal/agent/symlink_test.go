package agent

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A primary conflist linked into the conf dir from the primary's own
// directory: the agent edits it through the link, and when the primary
// rewrites its file there (the conf dir sees no event), the agent puts
// its entry back at once, not at the next resync (an hour here): until
// then pods would start without meshcni in their chain.
func TestSymlinkedPrimaryRewriteIsSeen(t *testing.T) {
	n := newNode(t, nil)
	own := filepath.Join(n.root, "primary")
	if err := os.MkdirAll(own, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(own, "bridge.conflist")
	writeFile(t, target, bridgeList)
	link := filepath.Join(n.conf, "10-bridge.conflist")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	o := n.options()
	o.Resync = time.Hour
	r := start(t, o)
	r.waitInstalled(t, 5*time.Second)
	isLink := func() bool {
		fi, err := os.Lstat(link)
		return err == nil && fi.Mode().Type() == fs.ModeSymlink
	}
	if !isLink() {
		t.Fatal("the link was replaced")
	}
	for i := range 5 { // more than the wake-ups the start-up's own writes leave
		replace(t, target, []byte(strings.Replace(bridgeList, `"cni0"`, `"cni`+string(rune('1'+i))+`"`, 1)))
		took := eventually(t, 5*time.Second, "entry back after the primary's rewrite through its own dir", func() bool {
			data, err := os.ReadFile(target)
			return err == nil && strings.Contains(string(data), `"cni`+string(rune('1'+i))+`"`) && r.installed(t)
		})
		t.Logf("rewrite %d: entry back in %v", i+1, took)
	}
	if !isLink() {
		t.Fatal("the link was replaced")
	}
}
