// Command image builds the agent image into an OCI layout tarball, offline
// and reproducibly: `make image` runs it. See internal/image.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/meshcni/meshcni/internal/image"
)

func main() {
	out := flag.String("o", "dist/meshcni-agent.oci.tar", "output OCI layout tarball")
	cmds := flag.String("cmds", "meshcni-agent,meshcni,meshcni-lookup,meshcni-iptables", "comma-separated cmd/ binaries to include")
	ref := flag.String("ref", "ghcr.io/meshcni/meshcni-agent:0.1.0", "image name recorded in the layout's index (org.opencontainers.image.ref.name)")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH of the binaries and the image")
	flag.Parse()
	if err := run(context.Background(), *out, *cmds, *ref, *arch); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out, cmds, ref, arch string) error {
	epoch, err := image.SourceDateEpoch(ctx, ".")
	if err != nil {
		return err
	}
	version := ref[strings.LastIndex(ref, ":")+1:]
	img, err := image.FromCmds(ctx, image.CmdOptions{ModuleDir: ".", Cmds: strings.Split(cmds, ","), Arch: arch, Epoch: epoch, Version: version})
	if err != nil {
		return err
	}
	digest, err := image.WriteOCITar(out, img, ref, epoch)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %s %s (SOURCE_DATE_EPOCH=%d)\n", out, ref, digest, epoch.Unix())
	return nil
}
