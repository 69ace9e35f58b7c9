package inject

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/internal/podspec"
)

// judged gives what podspec.Of (the plug-in's JSON view) gives, for
// every pod and pod template in the fixtures, as they come and as
// converted, and for the corner cases JSON's omitempty decides.
func TestJudgedIsPodspecOf(t *testing.T) {
	var pods []corev1.Pod
	files, _ := filepath.Glob(filepath.Join("testdata", "istio", "*.yaml"))
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(raw), "\n---\n") {
			var obj struct {
				Kind string
				Spec struct{ Template corev1.PodTemplateSpec }
			}
			if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
				t.Fatal(err)
			}
			switch obj.Kind {
			case "Pod":
				var p corev1.Pod
				if err := yaml.Unmarshal([]byte(doc), &p); err != nil {
					t.Fatal(err)
				}
				pods = append(pods, p)
			case "Deployment":
				pods = append(pods, corev1.Pod{ObjectMeta: obj.Spec.Template.ObjectMeta, Spec: obj.Spec.Template.Spec})
			}
		}
	}
	if len(pods) < 20 {
		t.Fatalf("only %d fixture pods", len(pods))
	}
	for _, p := range pods {
		m, s, _ := Template(p.ObjectMeta, p.Spec, "shop", nil)
		pods = append(pods, corev1.Pod{ObjectMeta: m, Spec: s})
	}
	always := corev1.ContainerRestartPolicyAlways
	pods = append(pods,
		corev1.Pod{},
		corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{}, InitContainers: []corev1.Container{}}},
		corev1.Pod{ObjectMeta: metaWith(map[string]string{}), Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{},
			Containers: []corev1.Container{{Name: "a", Env: []corev1.EnvVar{}, SecurityContext: &corev1.SecurityContext{}},
				{Name: "b", Env: []corev1.EnvVar{{Name: "X", ValueFrom: &corev1.EnvVarSource{}}}}},
			InitContainers: []corev1.Container{{Name: "istio-proxy", RestartPolicy: &always}},
		}},
	)
	for i, p := range pods {
		want, err := podspec.Of(&p)
		if err != nil {
			t.Fatal(err)
		}
		if got := judged(p.ObjectMeta, p.Spec); !reflect.DeepEqual(got, want) {
			t.Errorf("pod %d (%s%s):\n got %+v\nwant %+v", i, p.Name, p.GenerateName, got, want)
		}
	}
}

// judged copies every field podspec.Pod has: a field added there fails
// here until judged copies it too.
func TestJudgedKnowsPodspecFields(t *testing.T) {
	want := "Pod{ObjectMeta{Name Namespace UID Annotations} Spec{Containers InitContainers SecurityContext{RunAsUser RunAsGroup}} Status{PodIPs}}" +
		" Container{Name RestartPolicy SecurityContext{RunAsUser RunAsGroup} Env{Name Value}}"
	got := fields("Pod", reflect.TypeFor[podspec.Pod]()) + " " + fields("Container", reflect.TypeFor[podspec.Container]())
	if got != want {
		t.Errorf("podspec's fields changed; copy the new ones in judged:\n got %s\nwant %s", got, want)
	}
}

// fields lists a struct's fields, nested structs (not slices of them,
// listed on their own) inside braces.
func fields(name string, t reflect.Type) string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct && t.Elem().Name() == "EnvVar" {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return name
	}
	var parts []string
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Type.Kind() == reflect.Slice && f.Type.Elem().Name() != "EnvVar" {
			parts = append(parts, f.Name)
			continue
		}
		parts = append(parts, fields(f.Name, f.Type))
	}
	return name + "{" + strings.Join(parts, " ") + "}"
}

func metaWith(annotations map[string]string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: "corner", Annotations: annotations}
}
