package podinfo

import (
	"os/exec"
	"strings"
	"testing"
)

// The package is the plug-in's only way to the API and the plug-in is a
// new process per pod: it must not link client-go or the API types (the
// package doc says what they cost). Besides the standard library and
// meshcni, it may link only the YAML parser for kubeconfigs.
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
			pkg == "sigs.k8s.io/yaml", pkg == "go.yaml.in/yaml/v2":
		default:
			t.Errorf("internal/podinfo links %s; use the standard library (net/http, encoding/json)", pkg)
		}
	}
}
