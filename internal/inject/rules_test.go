package inject

import (
	"encoding/json"
	"testing"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/golden"
	"github.com/meshcni/meshcni/internal/podspec"
	"github.com/meshcni/meshcni/internal/rules"
)

// pluginRules is the iptables-restore input the plug-in would program
// for the pod template in js (IPv4 pod address; the real-netns check is
// test/webhook's).
func pluginRules(t *testing.T, js []byte, prefix string) (bool, string) {
	t.Helper()
	tmpl, err := TemplateAt(js, prefix)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(tmpl)
	var p podspec.Pod
	if err := json.Unmarshal(raw, &p); err != nil {
		t.Fatal(err)
	}
	v, err := podspec.NewJudge(capture.Default(), nil).Pod(&p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Capture {
		return false, ""
	}
	var out string
	for _, rs := range rules.Build(v.Spec).Sets {
		out += rs.Restore()
	}
	return true, out
}

// The converted stock pod is captured by the plug-in with exactly the
// rules Istio's own CNI-mode pod gets, rule for rule.
func TestConvertedPodGetsCNIModeRules(t *testing.T) {
	for _, set := range []string{"bookinfo", "pods"} {
		stock := readFixtures(t, set+"-injected-default.yaml")
		cni := readFixtures(t, set+"-injected-cni.yaml")
		for i, f := range stock {
			t.Run(set+"/"+f.name, func(t *testing.T) {
				p := templatePaths[f.kind]
				got, _ := mutateJSON(t, f, nil)
				gotOK, gotRules := pluginRules(t, got, p)
				wantOK, wantRules := pluginRules(t, cni[i].js, p)
				if gotOK != wantOK {
					t.Fatalf("captured %v, Istio's CNI-mode pod %v", gotOK, wantOK)
				}
				if gotRules != wantRules {
					t.Errorf("rules differ from the CNI-mode pod's:\n%s", golden.LineDiff(wantRules, gotRules))
				}
				if f.name != "opted-out" && gotRules == "" {
					t.Error("no rules")
				}
			})
		}
	}
}
