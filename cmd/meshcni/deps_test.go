package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The plug-in is a new process for every pod, so what it links is paid at
// every pod start. It reads pods as podspec.Pod straight from JSON:
// linking k8s.io/api and client-go cost about 3.5 ms of process start-up
// per ADD, measured (docs/performance.md), more than the nftables rules
// themselves. The API fallback runs in the meshcni-lookup helper, so the
// HTTP, TLS and YAML code stays out too (about 0.7 ms more).
func TestPluginStaysSmall(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch {
		case strings.HasPrefix(pkg, "k8s.io/"), strings.HasPrefix(pkg, "github.com/gogo/protobuf"):
			t.Errorf("cmd/meshcni links %s; keep Kubernetes libraries out of the plug-in (see internal/podspec)", pkg)
		case pkg == "net/http", pkg == "crypto/tls", strings.Contains(pkg, "yaml"), pkg == "github.com/meshcni/meshcni/internal/podinfo":
			t.Errorf("cmd/meshcni links %s; the API fallback belongs in cmd/meshcni-lookup (see internal/apilookup)", pkg)
		}
	}
}
