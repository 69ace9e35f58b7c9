//go:build integration

package controller

import (
	"context"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/api/v1alpha1"
)

func meshcni(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte("apiVersion: meshcni.io/v1alpha1\nkind: MeshCNI\n"+doc), &obj.Object); err != nil {
		t.Fatal(err)
	}
	return obj
}

// TestSchemaDefaults: an empty spec comes back with every default, so the
// controller and the console read one spelling of each setting.
func TestSchemaDefaults(t *testing.T) {
	ctx := context.Background()
	rc := dynamic.NewForConfigOrDie(cluster.Config).Resource(v1alpha1.GroupVersionResource)
	got, err := rc.Create(ctx, meshcni(t, "metadata: {name: default}\nspec: {}\n"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatal(err)
	}
	spec, _, _ := unstructured.NestedMap(got.Object, "spec")
	js, _ := yaml.Marshal(spec)
	want := `enabled: true
excludeNamespaces:
- kube-system
- istio-system
image: ""
iptablesBackend: ""
keepOnExit: false
logLevel: info
platform: default
pluginLogLevel: info
repairMode: repair
`
	if string(js) != want {
		t.Errorf("defaults:\n%s\nwant:\n%s", js, want)
	}

	// An explicit empty list stays empty (exclude only meshcni's own namespace).
	got, err = rc.Create(ctx, meshcni(t, "metadata: {name: default}\nspec: {excludeNamespaces: []}\n"), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatal(err)
	}
	if l, found, _ := unstructured.NestedStringSlice(got.Object, "spec", "excludeNamespaces"); !found || len(l) != 0 {
		t.Errorf("excludeNamespaces: [] became %v (found %v)", l, found)
	}
}

// TestSchemaRejects: each bad spec is refused by the API server with a
// message naming the field, so no controller ever sees it.
func TestSchemaRejects(t *testing.T) {
	rc := dynamic.NewForConfigOrDie(cluster.Config).Resource(v1alpha1.GroupVersionResource)
	for _, tc := range []struct{ name, doc, want string }{
		{"second object", "metadata: {name: other}\nspec: {}\n", "named 'default'"},
		{"repair mode", "metadata: {name: default}\nspec: {repairMode: fix}\n", "spec.repairMode"},
		{"backend", "metadata: {name: default}\nspec: {iptablesBackend: ipfw}\n", "spec.iptablesBackend"},
		{"platform", "metadata: {name: default}\nspec: {platform: eks}\n", "spec.platform"},
		{"log level", "metadata: {name: default}\nspec: {logLevel: trace}\n", "spec.logLevel"},
		{"namespace name", "metadata: {name: default}\nspec: {excludeNamespaces: [Kube_System]}\n", "spec.excludeNamespaces[0]"},
		{"duplicate namespace", "metadata: {name: default}\nspec: {excludeNamespaces: [a, a]}\n", "spec.excludeNamespaces[1]"},
		{"image digest", "metadata: {name: default}\nspec: {image: 'repo@sha256:123'}\n", "spec.image"},
		{"enabled type", "metadata: {name: default}\nspec: {enabled: maybe}\n", "spec.enabled"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := rc.Create(context.Background(), meshcni(t, tc.doc), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
	ok := meshcni(t, "metadata: {name: default}\nspec: {image: 'registry.local:5000/meshcni/agent@sha256:"+strings.Repeat("ab", 32)+"'}\n")
	if _, err := rc.Create(context.Background(), ok, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Errorf("a digest reference is refused: %v", err)
	}
}
