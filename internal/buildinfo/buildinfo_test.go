package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestFrom(t *testing.T) {
	cases := []struct {
		name     string
		bi       *debug.BuildInfo
		ok       bool
		version  string
		revision string
	}{
		{"no build info", nil, false, "unknown", "unknown"},
		{"repository build", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}}}, true, "(devel)", "abc123"},
		{"dirty tree", &debug.BuildInfo{Main: debug.Module{Version: "v0.2.0"}, Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}}, true, "v0.2.0", "abc123-dirty"},
		{"no vcs", &debug.BuildInfo{Main: debug.Module{Version: "v0.2.0"}}, true, "v0.2.0", "unknown"},
	}
	for _, tc := range cases {
		in := From(tc.bi, tc.ok)
		if in.Version != tc.version || in.Revision != tc.revision || !strings.HasPrefix(in.GoVersion, "go") {
			t.Errorf("%s: %+v; want version %s revision %s", tc.name, in, tc.version, tc.revision)
		}
	}
}

// The series is 1 with its three labels, and registering it twice in one
// registry (the controller and the webhook in one binary) is no error.
func TestMustRegisterTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	MustRegister(reg)
	MustRegister(reg)
	in := Read()
	want := `# HELP meshcni_build_info Always 1; its labels name the meshcni build that runs: version, VCS revision, Go version.
# TYPE meshcni_build_info gauge
meshcni_build_info{goversion="` + in.GoVersion + `",revision="` + in.Revision + `",version="` + in.Version + `"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "meshcni_build_info"); err != nil {
		t.Error(err)
	}
}
