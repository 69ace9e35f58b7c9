//go:build integration

package image

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// `make image` twice: the real binaries, compiled twice, give the same
// tarball and digest.
func TestBuildFromCmdsTwice(t *testing.T) {
	ctx := context.Background()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	var tars [][]byte
	for i := 0; i < 2; i++ {
		img, err := FromCmds(ctx, CmdOptions{ModuleDir: root, Cmds: []string{"meshcni-agent", "meshcni", "meshcni-lookup", "meshcni-iptables"}, Arch: "amd64", Epoch: epoch, Version: "test"})
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(t.TempDir(), "meshcni-agent.oci.tar")
		d, err := WriteOCITar(dst, img, "example.test/meshcni-agent:dev", epoch)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		digests, tars = append(digests, d.String()), append(tars, b)
	}
	if digests[0] != digests[1] || !bytes.Equal(tars[0], tars[1]) {
		t.Fatalf("two builds differ: %v", digests)
	}
	img := readLayout(t, tars[0])
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if len(cf.Config.Entrypoint) == 0 || cf.Config.Entrypoint[0] != AgentBinary {
		t.Errorf("entrypoint %v", cf.Config.Entrypoint)
	}
	t.Logf("digest %s, %d bytes", digests[0], len(tars[0]))
}
