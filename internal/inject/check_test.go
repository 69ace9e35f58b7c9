package inject

import (
	"testing"

	"github.com/go-json-experiment/json/jsontext"
)

// CheckPatch agrees with applying the patch (json-patch), on documents
// where the patch applies and on the ones where it does not, except that
// it refuses duplicate names, which json-patch resolves to the last.
func TestCheckPatchAgreesWithApply(t *testing.T) {
	c := Record{Index: 1, Annotations: [][2]string{{"a/b~c", "1"}, {"d", "2"}}}
	for _, c := range []struct {
		name, doc string
		ops       []Op
		ok        bool
	}{
		{"annotations present", `{"metadata":{"annotations":{"x":"y"}},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true), true},
		{"annotations absent", `{"metadata":{},"spec":{"initContainers":[{},{}]}}`, c.Patch("", false), true},
		{"annotations null", `{"metadata":{"annotations":null},"spec":{"initContainers":[{},{}]}}`, c.Patch("", false), true},
		{"annotations in another case", `{"metadata":{"Annotations":{"x":"y"}},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true), false},
		{"annotations not an object", `{"metadata":{"annotations":"x"},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true), false},
		{"no metadata", `{"spec":{"initContainers":[{},{}]}}`, c.Patch("", false), false},
		{"metadata null", `{"metadata":null,"spec":{"initContainers":[{},{}]}}`, c.Patch("", false), false},
		{"index out of range", `{"metadata":{},"spec":{"initContainers":[{}]}}`, c.Patch("", false), false},
		{"no init containers", `{"metadata":{},"spec":{}}`, c.Patch("", false), false},
		{"init containers in another case", `{"metadata":{},"spec":{"InitContainers":[{},{}]}}`, c.Patch("", false), false},
		{"init containers an object", `{"metadata":{},"spec":{"initContainers":{"1":{}}}}`, c.Patch("", false), true},
		{"duplicate keys, last wins", `{"metadata":{"annotations":{}},"metadata":{},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true), false},
		{"duplicate keys, last applies", `{"metadata":{},"metadata":{"annotations":{}},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true), false},
		{"invalid UTF-8", "{\"metadata\":{\"annotations\":{\"x\":\"\xff\"}},\"spec\":{\"initContainers\":[{},{}]}}", c.Patch("", true), false},
		{"more after the document", `{"metadata":{"annotations":{}},"spec":{"initContainers":[{},{}]}} {}`, c.Patch("", true), false},
		{"escaped key", `{"meta\u0064ata":{"annotations":{}},"spec":{"initContainers":[{},{}]}}`, c.Patch("", true), true},
		{"template", `{"spec":{"template":{"metadata":{"annotations":{}},"spec":{"initContainers":[{},{}]}}}}`, c.Patch("/spec/template", true), true},
		{"no template", `{"spec":{}}`, c.Patch("/spec/template", true), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, applyErr := ApplyPatch([]byte(c.doc), c.ops)
			checkErr := CheckPatch([]byte(c.doc), c.ops)
			if (checkErr == nil) != c.ok {
				t.Errorf("check: %v, want ok %v", checkErr, c.ok)
			}
			if checkErr == nil && applyErr != nil {
				t.Errorf("check accepts a patch json-patch refuses: %v", applyErr)
			}
		})
	}
}

// FuzzCheckPatch: on any document, CheckPatch accepts a patch Patch
// wrote only when json-patch applies it, and whenever it does on a
// document without duplicate names or invalid UTF-8.
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
		if checkErr == nil && applyErr != nil {
			t.Errorf("check accepts a patch json-patch refuses: %v", applyErr)
		}
		if applyErr == nil && checkErr != nil && jsontext.Value(doc).IsValid() {
			t.Errorf("check refuses a patch json-patch applies: %v", checkErr)
		}
	})
}
