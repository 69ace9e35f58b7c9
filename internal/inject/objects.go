package inject

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// templatePaths is where each kind keeps the pod (template) the webhook
// would see: its metadata and spec, as a JSON Pointer.
var templatePaths = map[string]string{
	"Pod":         "",
	"Deployment":  "/spec/template",
	"StatefulSet": "/spec/template",
	"DaemonSet":   "/spec/template",
	"ReplicaSet":  "/spec/template",
	"Job":         "/spec/template",
	"CronJob":     "/spec/jobTemplate/spec/template",
}

// Object is one document's outcome in Documents.
type Object struct {
	Kind, Namespace, Name string
	Record                Record
}

// Documents mutates every Pod and workload pod template in a
// multi-document YAML stream as the webhook would, each in its own
// namespace or else defaultNS; other documents, and objects left alone,
// are copied byte for byte. The whole stream is checked before anything
// is returned, so a bad document loses nothing.
func Documents(in []byte, defaultNS string, excluded []string) ([]byte, []Object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(in)))
	var out bytes.Buffer
	var objs []Object
	for n := 1; ; n++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("document %d: %v", n, err)
		}
		mutated, obj, err := document(doc, defaultNS, excluded)
		if err != nil {
			return nil, nil, fmt.Errorf("document %d: %v", n, err)
		}
		if len(bytes.TrimSpace(mutated)) == 0 {
			continue
		}
		if out.Len() > 0 {
			out.WriteString("---\n")
		}
		out.Write(mutated)
		if len(mutated) > 0 && mutated[len(mutated)-1] != '\n' {
			out.WriteByte('\n')
		}
		if obj != nil {
			objs = append(objs, *obj)
		}
	}
	return out.Bytes(), objs, nil
}

func document(doc []byte, defaultNS string, excluded []string) ([]byte, *Object, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, nil, err
	}
	var head struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if bytes.Equal(bytes.TrimSpace(js), []byte("null")) || json.Unmarshal(js, &head) != nil {
		return doc, nil, nil // not an object (comments only, a scalar): as is
	}
	prefix, ok := templatePaths[head.Kind]
	if !ok {
		return doc, nil, nil
	}
	ns := head.Metadata.Namespace
	if ns == "" {
		ns = defaultNS
	}
	obj := &Object{Kind: head.Kind, Namespace: ns, Name: head.Metadata.Name}
	tmpl, err := TemplateAt(js, prefix)
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %v", head.Kind, head.Metadata.Name, err)
	}
	_, _, rec := Template(tmpl.ObjectMeta, tmpl.Spec, ns, excluded)
	obj.Record = rec
	if !rec.Changed() {
		return doc, obj, nil
	}
	patched, err := ApplyPatch(js, rec.Patch(prefix, tmpl.Annotations != nil))
	if err != nil {
		return nil, nil, fmt.Errorf("%s %s: %v", head.Kind, head.Metadata.Name, err)
	}
	y, err := yaml.JSONToYAML(patched)
	return y, obj, err
}

// TemplateAt decodes the pod template at prefix (a JSON Pointer with
// only object keys) of the JSON object js.
func TemplateAt(js []byte, prefix string) (corev1.PodTemplateSpec, error) {
	var t corev1.PodTemplateSpec
	sub := js
	for _, key := range splitPointer(prefix) {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(sub, &m); err != nil {
			return t, fmt.Errorf("%s: %v", prefix, err)
		}
		v, ok := m[key]
		if !ok {
			return t, fmt.Errorf("no %s", prefix)
		}
		sub = v
	}
	if err := json.Unmarshal(sub, &t); err != nil {
		return t, fmt.Errorf("pod template: %v", err)
	}
	return t, nil
}

func splitPointer(p string) []string {
	var keys []string
	for _, k := range bytes.Split([]byte(p), []byte("/")) {
		if len(k) > 0 {
			keys = append(keys, string(k))
		}
	}
	return keys
}

// ApplyPatch applies ops to the JSON document js.
func ApplyPatch(js []byte, ops []Op) ([]byte, error) {
	raw, err := json.Marshal(ops)
	if err != nil {
		return nil, err
	}
	p, err := jsonpatch.DecodePatch(raw)
	if err != nil {
		return nil, err
	}
	return p.Apply(js)
}
