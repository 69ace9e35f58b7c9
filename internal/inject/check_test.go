package inject

import (
	"testing"
)

// CheckPatch agrees with applying the patch (json-patch), on documents
// where the patch applies and on the ones where it does not.
func TestCheckPatchAgreesWithApply(t *testing.T) {
	c := Record{Index: 1, Annotations: [][2]string{{"a/b~c", "1"}, {"d", "2"}}}
	for _, c := range []struct {
		name, doc string
		ops       []Op
	}{
		{"annotations present", `{"metadata":{"annotations":{"x":"y"}},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true)},
		{"annotations absent", `{"metadata":{},"spec":{"initContainers":[{},{}]}}`, c.Patch("", false)},
		{"annotations null", `{"metadata":{"annotations":null},"spec":{"initContainers":[{},{}]}}`, c.Patch("", false)},
		{"annotations in another case", `{"metadata":{"Annotations":{"x":"y"}},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true)},
		{"annotations not an object", `{"metadata":{"annotations":"x"},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true)},
		{"no metadata", `{"spec":{"initContainers":[{},{}]}}`, c.Patch("", false)},
		{"metadata null", `{"metadata":null,"spec":{"initContainers":[{},{}]}}`, c.Patch("", false)},
		{"index out of range", `{"metadata":{},"spec":{"initContainers":[{}]}}`, c.Patch("", false)},
		{"no init containers", `{"metadata":{},"spec":{}}`, c.Patch("", false)},
		{"init containers in another case", `{"metadata":{},"spec":{"InitContainers":[{},{}]}}`, c.Patch("", false)},
		{"init containers an object", `{"metadata":{},"spec":{"initContainers":{"1":{}}}}`, c.Patch("", false)},
		{"duplicate keys, last wins", `{"metadata":{"annotations":{}},"metadata":{},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true)},
		{"escaped key", `{"meta\u0064ata":{"annotations":{}},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true)},
		{"template", `{"spec":{"template":{"metadata":{"annotations":{}},"spec":{"initContainers":[{},{}]}}}}`, c.Patch("/spec/template", true)},
		{"no template", `{"spec":{}}`, c.Patch("/spec/template", true)},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, applyErr := ApplyPatch([]byte(c.doc), c.ops)
			checkErr := CheckPatch([]byte(c.doc), c.ops)
			if (applyErr == nil) != (checkErr == nil) {
				t.Errorf("apply: %v; check: %v", applyErr, checkErr)
			}
		})
	}
}

// FuzzCheckPatch: on any document, CheckPatch accepts a patch Patch
// wrote exactly when json-patch applies it.
func FuzzCheckPatch(f *testing.F) {
	f.Add([]byte(`{"metadata":{"annotations":{"x":"y"}},"spec":{"initContainers":[{},{}]}}`), 1, true, true)
	f.Add([]byte(`{"metadata":{},"spec":{"initContainers":[{}]}}`), 0, false, true)
	f.Fuzz(func(t *testing.T, doc []byte, index int, hadAnnotations, withAnnotations bool) {
		if index < -1 || index > 5 {
			return
		}
		r := Record{Index: index}
		if withAnnotations {
			r.Annotations = [][2]string{{"k", "v"}, {"a/b", "w"}}
		}
		ops := r.Patch("", hadAnnotations)
		if len(ops) == 0 {
			return
		}
		_, applyErr := ApplyPatch(doc, ops)
		checkErr := CheckPatch(doc, ops)
		if (applyErr == nil) != (checkErr == nil) {
			t.Errorf("apply: %v; check: %v", applyErr, checkErr)
		}
	})
}
