package inject

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/internal/golden"
)

// fixture is one injected object of Istio's fixtures, as JSON.
type fixture struct {
	kind, name, ns string
	js             []byte
}

func readFixtures(t *testing.T, file string) []fixture {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "istio", file))
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufioReader(raw))
	var out []fixture
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		js, err := yaml.YAMLToJSON(doc)
		if err != nil {
			t.Fatal(err)
		}
		var h struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
		}
		if err := json.Unmarshal(js, &h); err != nil || h.Kind == "" {
			continue
		}
		if _, ok := templatePaths[h.Kind]; !ok {
			continue
		}
		ns := h.Metadata.Namespace
		if ns == "" {
			ns = "default"
		}
		out = append(out, fixture{h.Kind, h.Metadata.Name, ns, js})
	}
	if len(out) == 0 {
		t.Fatalf("%s: no pods or workloads", file)
	}
	return out
}

// mutateJSON runs one object through the same path as the webhook and
// meshcnictl mutate: Template, then the JSON Patch.
func mutateJSON(t *testing.T, f fixture, excluded []string) ([]byte, Record) {
	t.Helper()
	prefix := templatePaths[f.kind]
	tmpl, err := TemplateAt(f.js, prefix)
	if err != nil {
		t.Fatal(err)
	}
	_, _, rec := Template(tmpl.ObjectMeta, tmpl.Spec, f.ns, excluded)
	if !rec.Changed() {
		return f.js, rec
	}
	out, err := ApplyPatch(f.js, rec.Patch(prefix, tmpl.Annotations != nil))
	if err != nil {
		t.Fatal(err)
	}
	return out, rec
}

// generic decodes JSON into maps, dropping the annotations named.
func generic(t *testing.T, js []byte, prefix string, drop ...string) any {
	t.Helper()
	var v map[string]any
	if err := json.Unmarshal(js, &v); err != nil {
		t.Fatal(err)
	}
	m := v
	for _, k := range splitPointer(prefix) {
		m = m[k].(map[string]any)
	}
	if md, ok := m["metadata"].(map[string]any); ok {
		if an, ok := md["annotations"].(map[string]any); ok {
			for _, d := range drop {
				delete(an, d)
			}
		}
	}
	return v
}

func equalJSON(t *testing.T, what string, got, want any) {
	t.Helper()
	g, _ := json.MarshalIndent(got, "", " ")
	w, _ := json.MarshalIndent(want, "", " ")
	if !bytes.Equal(g, w) {
		t.Errorf("%s differs:\n%s", what, golden.LineDiff(string(w), string(g)))
	}
}

// A stock-injected object in a captured namespace becomes exactly what
// Istio's CNI mode injects for it (the -cni fixture), but for the
// webhook's own record.
func TestStockBecomesIstioCNIMode(t *testing.T) {
	for _, set := range []string{"bookinfo", "pods"} {
		stock := readFixtures(t, set+"-injected-default.yaml")
		cni := readFixtures(t, set+"-injected-cni.yaml")
		if len(stock) != len(cni) {
			t.Fatalf("%s: %d stock objects, %d CNI-mode ones", set, len(stock), len(cni))
		}
		for i, f := range stock {
			t.Run(set+"/"+f.name, func(t *testing.T) {
				got, rec := mutateJSON(t, f, []string{"istio-system", "kube-system"})
				wantAction := ToValidation
				if f.name == "opted-out" {
					wantAction = "" // sidecar.istio.io/inject: "false": no istio-init at all
				}
				if rec.Action != wantAction {
					t.Fatalf("action %q, want %q", rec.Action, wantAction)
				}
				p := templatePaths[f.kind]
				equalJSON(t, f.name, generic(t, got, p, AnnotationMutated), generic(t, cni[i].js, p))
			})
		}
	}
}

// A CNI-mode object in an excluded namespace gets Istio's stock
// istio-init back: the stock fixture, but for the CNI-mode annotations
// (harmless there: istio-init reads its arguments) and the record.
func TestCNIModeGetsIstioInitWhenExcluded(t *testing.T) {
	for _, set := range []string{"bookinfo", "pods"} {
		stock := readFixtures(t, set+"-injected-default.yaml")
		cni := readFixtures(t, set+"-injected-cni.yaml")
		for i, f := range cni {
			t.Run(set+"/"+f.name, func(t *testing.T) {
				got, rec := mutateJSON(t, f, []string{f.ns})
				if f.name != "opted-out" && rec.Action != ToInit {
					t.Fatalf("action %q, want %q", rec.Action, ToInit)
				}
				p := templatePaths[f.kind]
				// Compare with the CNI-mode annotations on both sides.
				var cniAnn map[string]string
				tmpl, _ := TemplateAt(f.js, p)
				cniAnn = tmpl.Annotations
				stockTmpl, _ := TemplateAt(stock[i].js, p)
				var drop []string
				for k := range cniAnn {
					if _, ok := stockTmpl.Annotations[k]; !ok || k == istioStatus {
						drop = append(drop, k)
					}
				}
				for k := range stockTmpl.Annotations {
					if strings.HasPrefix(k, "traffic.sidecar.istio.io/") || k == istioStatus {
						drop = append(drop, k)
					}
				}
				equalJSON(t, f.name, generic(t, got, p, append(drop, AnnotationMutated)...), generic(t, stock[i].js, p, drop...))
				gotTmpl, _ := TemplateAt(got, p)
				if st, want := gotTmpl.Annotations[istioStatus], stockTmpl.Annotations[istioStatus]; st != want {
					t.Errorf("status annotation %q, want %q", st, want)
				}
			})
		}
	}
}

// Every fixture file through Documents, in both Istio modes, with its
// namespace captured and excluded: one golden per object and case, and
// a second pass changes nothing (the webhook is reinvoked).
func TestDocumentsGolden(t *testing.T) {
	for _, file := range []string{"bookinfo-injected-default", "bookinfo-injected-cni", "pods-injected-default", "pods-injected-cni", "bookinfo", "pods"} {
		raw, err := os.ReadFile(filepath.Join("testdata", "istio", file+".yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			name     string
			excluded []string
		}{
			{"captured", []string{"istio-system"}},
			{"excluded", []string{"default", "shop"}},
		} {
			t.Run(file+"/"+c.name, func(t *testing.T) {
				out, objs, err := Documents(raw, "default", c.excluded)
				if err != nil {
					t.Fatal(err)
				}
				again, _, err := Documents(out, "default", c.excluded)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(again, out) {
					t.Errorf("not idempotent:\n%s", golden.LineDiff(string(out), string(again)))
				}
				docs := splitDocs(t, out)
				if len(docs) != len(objsAll(t, raw)) {
					t.Fatalf("%d documents out, %d in", len(docs), len(objsAll(t, raw)))
				}
				for _, o := range objs {
					golden.Compare(t, file+"."+o.Name+"."+c.name, objectDoc(t, docs, o))
				}
				if file == "bookinfo" || file == "pods" {
					// Not injected: no document may change, byte for byte
					// (an empty trailing document is dropped).
					in := splitDocs(t, raw)
					for i, d := range splitDocs(t, out) {
						if !bytes.Equal(d, in[i]) {
							t.Errorf("document %d changed:\n%s", i+1, golden.LineDiff(string(in[i]), string(d)))
						}
					}
				}
			})
		}
	}
}

func splitDocs(t *testing.T, b []byte) [][]byte {
	t.Helper()
	r := utilyaml.NewYAMLReader(bufioReader(b))
	var docs [][]byte
	for {
		d, err := r.Read()
		if err != nil {
			return docs
		}
		if len(bytes.TrimSpace(d)) > 0 {
			docs = append(docs, d)
		}
	}
}

func objsAll(t *testing.T, b []byte) [][]byte { return splitDocs(t, b) }

func objectDoc(t *testing.T, docs [][]byte, o Object) string {
	t.Helper()
	for _, d := range docs {
		var h struct {
			Kind     string
			Metadata struct{ Name string }
		}
		js, _ := yaml.YAMLToJSON(d)
		if json.Unmarshal(js, &h) == nil && h.Kind == o.Kind && h.Metadata.Name == o.Name {
			return string(d)
		}
	}
	t.Fatalf("%s %s not in the output", o.Kind, o.Name)
	return ""
}

func stockPod(t *testing.T, name string) (metav1.ObjectMeta, corev1.PodSpec) {
	t.Helper()
	for _, f := range readFixtures(t, "pods-injected-default.yaml") {
		if f.name == name {
			var p corev1.Pod
			if err := json.Unmarshal(f.js, &p); err != nil {
				t.Fatal(err)
			}
			return p.ObjectMeta, p.Spec
		}
	}
	t.Fatalf("no pod %s", name)
	return metav1.ObjectMeta{}, corev1.PodSpec{}
}

// Settings no annotation can carry keep istio-init, with the reason on
// the pod: never a conversion that redirects differently.
func TestUnrepresentableKeepsIstioInit(t *testing.T) {
	for _, c := range []struct {
		name, why string
		edit      func(*metav1.ObjectMeta, *corev1.PodSpec)
	}{
		{"envoy port", "-p (envoy-port)", func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
			s.InitContainers[0].Args[2] = "15999"
		}},
		{"proxy gid", "--proxy-gid", func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
			s.InitContainers[0].Args = append(s.InitContainers[0].Args, "-g", "1000")
		}},
		{"root uid", "not one non-root UID", func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
			s.InitContainers[0].Args[6] = "0"
		}},
		{"unknown flag", "istio-init arguments", func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
			s.InitContainers[0].Args = append(s.InitContainers[0].Args, "--no-such-flag")
		}},
		{"dns only in init", "DNS capture", func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
			s.InitContainers[0].Env = append(s.InitContainers[0].Env, corev1.EnvVar{Name: "ISTIO_META_DNS_CAPTURE", Value: "true"})
		}},
		{"dns on in both, but under a name the plug-in does not read", "DNS capture", func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
			s.InitContainers[0].Env = append(s.InitContainers[0].Env, corev1.EnvVar{Name: "REDIRECT_DNS", Value: "true"})
			s.Containers[1].Env = append(s.Containers[1].Env, corev1.EnvVar{Name: "REDIRECT_DNS", Value: "true"})
		}},
		{"dual stack on in both, the sidecar's from valueFrom", "dual-stack", func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
			s.InitContainers[0].Env = append(s.InitContainers[0].Env, corev1.EnvVar{Name: "ISTIO_DUAL_STACK", Value: "true"})
			s.Containers[1].Env = append(s.Containers[1].Env, corev1.EnvVar{Name: "ISTIO_DUAL_STACK",
				ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}})
		}},
		{"bad range the plug-in rejects", "would reject", func(m *metav1.ObjectMeta, s *corev1.PodSpec) {
			s.InitContainers[0].Args[10] = "10.0.0.0/33"
		}},
		{"no sidecar", "would not capture", func(_ *metav1.ObjectMeta, s *corev1.PodSpec) {
			s.Containers = s.Containers[:1]
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			meta, spec := stockPod(t, "ranges-ports")
			if spec.InitContainers[0].Args[1] != "-p" || spec.InitContainers[0].Args[5] != "-u" || spec.InitContainers[0].Args[9] != "-i" {
				t.Fatalf("fixture arguments moved: %q", spec.InitContainers[0].Args)
			}
			c.edit(&meta, &spec)
			m2, s2, rec := Template(meta, spec, "shop", nil)
			if rec.Action != "" || rec.Index != -1 {
				t.Fatalf("converted: %+v", rec)
			}
			if s2.InitContainers[0].Name != InitName {
				t.Fatalf("init container %s", s2.InitContainers[0].Name)
			}
			if why := m2.Annotations[AnnotationNotMutated]; !strings.Contains(why, c.why) {
				t.Fatalf("reason %q, want it to mention %q", why, c.why)
			}
		})
	}
}

// istio-init's switches, set as the plug-in reads them from the sidecar,
// convert: the plug-in then programs what istio-init would have.
func TestSwitchesOnInBothConvert(t *testing.T) {
	meta, spec := stockPod(t, "ranges-ports")
	for _, name := range []string{"ISTIO_META_DNS_CAPTURE", "INVALID_DROP", "ISTIO_DUAL_STACK"} {
		on := corev1.EnvVar{Name: name, Value: "true"}
		spec.InitContainers[0].Env = append(spec.InitContainers[0].Env, on)
		spec.Containers[1].Env = append(spec.Containers[1].Env, on)
	}
	if _, _, rec := Template(meta, spec, "shop", nil); rec.Action != ToValidation {
		t.Fatalf("not converted: %+v", rec.Annotations)
	}
}

// A pod without annotations gets the annotations object first (JSON
// Patch cannot add a key to a missing object), and keys with "/" are
// escaped.
func TestPatchWithoutAnnotations(t *testing.T) {
	meta, spec := stockPod(t, "nics")
	meta.Annotations = nil
	pod := corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"}, ObjectMeta: meta, Spec: spec}
	js, _ := json.Marshal(pod)
	_, _, rec := Template(meta, spec, "shop", nil)
	ops := rec.Patch("", false)
	if ops[1].Path != "/metadata/annotations" {
		t.Fatalf("second op %+v, want the annotations object", ops[1])
	}
	out, err := ApplyPatch(js, ops)
	if err != nil {
		t.Fatal(err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	if got.Annotations["traffic.sidecar.istio.io/includeInboundPorts"] != "*" || got.Annotations[AnnotationMutated] != ToValidation {
		t.Fatalf("annotations %v", got.Annotations)
	}
	if got.Spec.InitContainers[0].Name != ValidationName {
		t.Fatalf("init container %s", got.Spec.InitContainers[0].Name)
	}
}

// Pods without Istio, and opted-out ones, are not touched at all.
func TestLeavesOthersAlone(t *testing.T) {
	plain := corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}, InitContainers: []corev1.Container{{Name: "istio-init", Args: []string{"sh"}}}}
	for _, excl := range [][]string{nil, {"ns"}} {
		if _, _, rec := Template(metav1.ObjectMeta{}, plain, "ns", excl); rec.Changed() {
			t.Errorf("excluded=%v: changed %+v", excl, rec)
		}
	}
	meta, spec := stockPod(t, "nics")
	meta.Annotations["sidecar.istio.io/inject"] = "false"
	if _, _, rec := Template(meta, spec, "shop", nil); rec.Changed() {
		t.Errorf("opted-out pod changed: %+v", rec)
	}
}

func TestBadDocument(t *testing.T) {
	for _, in := range []string{
		"kind: Pod\nspec: {initContainers: 3}\n",
		"kind: Deployment\nspec: {}\n",
		"a: [\n",
	} {
		if _, _, err := Documents([]byte(in), "default", nil); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
