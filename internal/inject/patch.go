package inject

import "strings"

// Op is one RFC 6902 JSON Patch operation.
type Op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Patch is the JSON Patch that makes the Record's changes to the object
// whose pod template is at prefix ("" for a Pod, "/spec/template" for a
// Deployment). It touches only the replaced init container and the
// annotations written, so everything else stays byte for byte.
// hadAnnotations says whether the template's metadata has an
// annotations object already (JSON Patch cannot add into a missing one).
func (r Record) Patch(prefix string, hadAnnotations bool) []Op {
	var ops []Op
	if r.Index >= 0 {
		ops = append(ops, Op{Op: "replace", Path: prefix + "/spec/initContainers/" + itoa(r.Index), Value: r.Container})
	}
	if len(r.Annotations) > 0 && !hadAnnotations {
		ops = append(ops, Op{Op: "add", Path: prefix + "/metadata/annotations", Value: map[string]string{}})
	}
	for _, kv := range r.Annotations {
		ops = append(ops, Op{Op: "add", Path: prefix + "/metadata/annotations/" + escape(kv[0]), Value: kv[1]})
	}
	return ops
}

// escape encodes a key as a JSON Pointer reference token (RFC 6901).
func escape(k string) string {
	return strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}
