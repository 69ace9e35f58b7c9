package podinfo

import (
	"os/exec"
	"strings"
	"testing"
)

// The package is the plug-in's way to the API, in the meshcni-lookup
// helper, a new process whenever the agent's cache cannot answer: it must
// not link client-go or the API types (the package doc says what they
// cost). Besides the standard library and meshcni, it may link only the
// YAML parser for kubeconfigs and the CNI types of its errors.
func TestLinksNoClientGo(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool in PATH")
	}
	out, err := exec.Command(goTool, "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		switch {
		case strings.HasPrefix(pkg, "github.com/meshcni/meshcni/"),
			strings.HasPrefix(pkg, "github.com/containernetworking/cni/pkg/"),
			pkg == "sigs.k8s.io/yaml", pkg == "go.yaml.in/yaml/v2":
		default:
			t.Errorf("internal/podinfo links %s; use the standard library (net/http, encoding/json)", pkg)
		}
	}
}
