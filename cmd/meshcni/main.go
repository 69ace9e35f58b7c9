// Command meshcni is the chained CNI plug-in; all logic is in
// internal/plugin.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/meshcni/meshcni/internal/plugin"
)

func main() {
	p := &plugin.Plugin{}
	skel.PluginMainFuncs(p.Funcs(), plugin.Supported, "meshcni: redirects mesh pods' traffic into their sidecar")
}
