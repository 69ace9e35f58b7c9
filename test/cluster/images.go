package cluster

import (
	"path/filepath"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/meshcni/meshcni/internal/image"
)

// ProxyImage is the stand-in for Istio's proxyv2. The injected manifests
// name it with the tag "latest", which the API server defaults to
// imagePullPolicy Always, and this machine has no registry to pull from:
// the journey gives it this tag instead (ApplyBookinfo says so).
const ProxyImage = "registry.istio.io/testing/proxyv2:standin"

// istioRefs are the names of the one stand-in image (the standin binary
// and meshcni-iptables, entrypoint standin, command app): Istio's proxy,
// whose arguments choose "proxy" or "istio-iptables", and the Bookinfo
// apps, which run with no arguments.
var istioRefs = []string{
	ProxyImage,
	"registry.istio.io/release/examples-bookinfo-details-v1:1.20.3",
	"registry.istio.io/release/examples-bookinfo-ratings-v1:1.20.3",
	"registry.istio.io/release/examples-bookinfo-reviews-v1:1.20.3",
	"registry.istio.io/release/examples-bookinfo-reviews-v2:1.20.3",
	"registry.istio.io/release/examples-bookinfo-reviews-v3:1.20.3",
	"registry.istio.io/release/examples-bookinfo-productpage-v1:1.20.3",
}

func (c *Cluster) imagePath(name string) string {
	return filepath.Join(c.Dir, "images", name+".oci.tar")
}

// buildImages writes the sandbox image and the stand-in image as OCI
// tarballs, offline, with the project's image builder.
func (c *Cluster) buildImages(string) error {
	epoch := time.Unix(0, 0)
	for _, im := range []struct {
		name, ref  string
		files      []string
		entrypoint []string
		cmd        []string
		env        []string
	}{
		{"pause", "registry.k8s.io/pause:3.10", []string{"standin"}, []string{"/standin", "pause"}, nil, nil},
		// meshcni-iptables needs no iptables binary with its native nftables
		// backend; Istio's real image carries iptables instead.
		{"istio", istioRefs[0], []string{"standin", "meshcni-iptables"}, []string{"/standin"}, []string{"app"},
			[]string{"MESHCNI_IPTABLES_BACKEND=nftables"}},
	} {
		var files []image.File
		for _, f := range im.files {
			files = append(files, image.File{Path: "/" + f, Source: c.Tool(f), Mode: 0o755})
		}
		img, err := image.Build(image.Options{Files: files, Epoch: epoch, Arch: runtime.GOARCH, Entrypoint: im.entrypoint, Env: im.env})
		if err != nil {
			return err
		}
		if im.cmd != nil {
			cf, err := img.ConfigFile()
			if err != nil {
				return err
			}
			cf = cf.DeepCopy()
			cf.Config.Cmd = im.cmd
			if img, err = mutate.ConfigFile(img, cf); err != nil {
				return err
			}
		}
		if _, err := image.WriteOCITar(c.imagePath(im.name), img, im.ref, epoch); err != nil {
			return err
		}
	}
	return nil
}
