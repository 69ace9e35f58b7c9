package chart

import (
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func agentHash(t *testing.T, version string, overrides map[string]any) (hash, image string) {
	t.Helper()
	chrt, err := LoadChart()
	if err != nil {
		t.Fatal(err)
	}
	chrt.Metadata.Version = version
	m, err := render(chrt, overrides, DefaultNamespace, "test")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range m.Objects {
		if o.GetKind() == "DaemonSet" {
			hash, _, _ = unstructured.NestedString(o.Object, "spec", "template", "metadata", "annotations", ConfigHashAnnotation)
			cs, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
			image, _ = cs[0].(map[string]any)["image"].(string)
			return hash, image
		}
	}
	t.Fatal("no DaemonSet rendered")
	return "", ""
}

// TestConfigHashIgnoresChartVersion: an upgrade to a chart version with
// the same settings and image keeps the agents' pod template (no roll);
// a settings change moves the hash.
func TestConfigHashIgnoresChartVersion(t *testing.T) {
	pinned := map[string]any{"nodeSide": true, "image": map[string]any{"tag": "v1"}}
	h1, img1 := agentHash(t, "0.1.0", pinned)
	h2, img2 := agentHash(t, "0.2.0", pinned)
	if h1 != h2 || img1 != img2 {
		t.Errorf("chart 0.1.0 → 0.2.0 with the same settings: hash %s → %s, image %s → %s", h1, h2, img1, img2)
	}
	h3, _ := agentHash(t, "0.2.0", map[string]any{"nodeSide": true, "image": map[string]any{"tag": "v1"}, "logLevel": "debug"})
	if h3 == h1 {
		t.Error("logLevel changed and the hash did not")
	}
}
