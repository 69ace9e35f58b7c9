package webhook

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/google/go-cmp/cmp"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/internal/golden"
)

// fixturePods is every Pod, and every Deployment's pod template as the
// Pod it creates, in the Istio fixtures of internal/inject, in file
// order, as JSON.
func fixturePods(t testing.TB) (names []string, pods [][]byte) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "inject", "testdata", "istio", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			var obj struct {
				Kind     string         `json:"kind"`
				Metadata map[string]any `json:"metadata"`
				Spec     struct {
					Template map[string]any `json:"template"`
				} `json:"spec"`
			}
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(js, &obj); err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("%s/%s/%v", filepath.Base(f), obj.Kind, obj.Metadata["name"])
			switch obj.Kind {
			case "Pod":
			case "Deployment":
				pod := map[string]any{"apiVersion": "v1", "kind": "Pod"}
				for k, v := range obj.Spec.Template {
					pod[k] = v
				}
				if js, err = json.Marshal(pod); err != nil {
					t.Fatal(err)
				}
			default:
				continue
			}
			names, pods = append(names, name), append(pods, js)
		}
	}
	return names, pods
}

// The handler's whole answer, byte for byte, for every fixture pod in a
// captured and an excluded namespace: what the API server gets must not
// change when the handler's internals do.
func TestResponsesGolden(t *testing.T) {
	names, pods := fixturePods(t)
	var b strings.Builder
	for _, c := range []struct {
		name string
		h    *Handler
	}{{"captured", enabled("istio-system")}, {"excluded", enabled("istio-system", "shop")}} {
		for i, pod := range pods {
			w := post(c.h, "POST", "application/json", review("Pod", admissionv1.Create, "shop", pod))
			decode(t, w)
			b.WriteString(c.name + " " + names[i] + "\n" + w.Body.String() + "\n")
		}
	}
	golden.Compare(t, "responses", b.String())
}

// The handler decodes with encoding/json/v2's implementation; on every
// fixture pod it must read what encoding/json reads.
func TestDecodersAgree(t *testing.T) {
	names, pods := fixturePods(t)
	for i, js := range pods {
		var v1, v2 corev1.Pod
		if err := json.Unmarshal(js, &v1); err != nil {
			t.Fatal(err)
		}
		if err := jsonv2.Unmarshal(js, &v2); err != nil {
			t.Fatalf("%s: %v", names[i], err)
		}
		if !reflect.DeepEqual(v1, v2) {
			t.Errorf("%s: decoded differently:\n%s", names[i], cmp.Diff(v1, v2))
		}
	}
}
