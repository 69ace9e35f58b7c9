package controller

import (
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/chart"
)

var excludeCases = []struct {
	name string
	spec []string
	want []string
}{
	{"absent: the schema's default", nil, []string{"kube-system", "istio-system", "mesh"}},
	{"empty: the release namespace only", []string{}, []string{"mesh"}},
	{"order kept", []string{"b", "a"}, []string{"b", "a", "mesh"}},
	{"duplicates once", []string{"a", "b", "a"}, []string{"a", "b", "mesh"}},
	{"release namespace moved last", []string{"mesh", "a"}, []string{"a", "mesh"}},
}

func TestExcludedNamespaces(t *testing.T) {
	for _, c := range excludeCases {
		t.Run(c.name, func(t *testing.T) {
			if got := ExcludedNamespaces(v1alpha1.MeshCNISpec{ExcludeNamespaces: c.spec}, "mesh"); !slices.Equal(got, c.want) {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

// The plug-in's list (the node side's ConfigMap, rendered by the chart
// from Values) is exactly what the webhook applies: one decision.
func TestPluginAndWebhookAgree(t *testing.T) {
	on := true
	for _, c := range excludeCases {
		t.Run(c.name, func(t *testing.T) {
			mc := &v1alpha1.MeshCNI{Spec: v1alpha1.MeshCNISpec{Enabled: &on, ExcludeNamespaces: c.spec}}
			v, err := Values(mc.Spec, "mesh", "reg/agent:v1")
			if err != nil {
				t.Fatal(err)
			}
			m, err := chart.Render(v, "mesh", FieldManager)
			if err != nil {
				t.Fatal(err)
			}
			var plugin string
			for _, o := range m.Objects {
				if o.GetKind() == "ConfigMap" && o.GetName() == chart.ConfigMapName {
					plugin, _, _ = unstructured.NestedString(o.Object, "data", "MESHCNI_EXCLUDE_NAMESPACES")
				}
			}
			p := WebhookPolicy(mc, "mesh")
			if !p.Enabled || plugin != strings.Join(p.Excluded, ",") || !slices.Equal(p.Excluded, c.want) {
				t.Errorf("plug-in %q, webhook %+v, want %q", plugin, p, c.want)
			}
		})
	}
}

func TestWebhookPolicy(t *testing.T) {
	on, off := true, false
	now := metav1.Now()
	for _, c := range []struct {
		name string
		mc   *v1alpha1.MeshCNI
		want bool
	}{
		{"no MeshCNI", nil, false},
		{"enabled absent: the default, on", &v1alpha1.MeshCNI{}, true},
		{"enabled", &v1alpha1.MeshCNI{Spec: v1alpha1.MeshCNISpec{Enabled: &on}}, true},
		{"disabled", &v1alpha1.MeshCNI{Spec: v1alpha1.MeshCNISpec{Enabled: &off}}, false},
		{"being deleted", &v1alpha1.MeshCNI{ObjectMeta: metav1.ObjectMeta{DeletionTimestamp: &now}, Spec: v1alpha1.MeshCNISpec{Enabled: &on}}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := WebhookPolicy(c.mc, "mesh")
			if p.Enabled != c.want || (!p.Enabled && p.Excluded != nil) {
				t.Errorf("got %+v, want enabled %v", p, c.want)
			}
		})
	}
}
