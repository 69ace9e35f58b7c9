package inject

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// CheckPatch reports whether ApplyPatch(js, ops) would succeed, without
// building the patched document: it decodes only the objects and arrays
// on the ops' paths (with exact, case-sensitive keys, as JSON Patch
// resolves them) and skips the rest as raw bytes. It knows the "add" and
// "replace" operations Patch writes; any other operation is an error.
func CheckPatch(js []byte, ops []Op) error {
	if len(js) == 0 {
		return nil // as json-patch: an empty document is returned as is
	}
	c := checker{doc: js, objects: map[string]map[string]json.RawMessage{}, arrays: map[string]int{}, added: map[string]bool{}}
	for _, op := range ops {
		if err := c.op(op); err != nil {
			return fmt.Errorf("%s %s: %v", op.Op, op.Path, err)
		}
	}
	return nil
}

type checker struct {
	doc     []byte
	objects map[string]map[string]json.RawMessage // decoded objects by JSON Pointer
	arrays  map[string]int                        // decoded arrays' lengths by JSON Pointer
	added   map[string]bool                       // objects the patch itself added
}

func (c *checker) op(op Op) error {
	i := strings.LastIndexByte(op.Path, '/')
	if i < 0 {
		return fmt.Errorf("not a JSON Pointer")
	}
	parent, last := op.Path[:i], unescape(op.Path[i+1:])
	if c.added[parent] {
		if op.Op != "add" {
			return fmt.Errorf("unsupported in an added object")
		}
		return nil
	}
	raw, err := c.value(parent)
	if err != nil {
		return err
	}
	switch kind(raw) {
	case '{':
		m, err := c.object(parent, raw)
		if err != nil {
			return err
		}
		switch op.Op {
		case "add":
			if _, isMap := op.Value.(map[string]string); isMap {
				c.added[op.Path] = true
			}
			return nil
		case "replace":
			if _, ok := m[last]; !ok {
				return fmt.Errorf("no %q to replace", last)
			}
			return nil
		}
	case '[':
		n, err := c.array(parent, raw)
		if err != nil {
			return err
		}
		idx, err := strconv.Atoi(last)
		if err != nil || idx < 0 || last != strconv.Itoa(idx) {
			return fmt.Errorf("%q is not an array index", last)
		}
		if op.Op == "replace" && idx < n {
			return nil
		}
		return fmt.Errorf("index %d out of %d", idx, n)
	default:
		return fmt.Errorf("%q is neither an object nor an array", parent)
	}
	return fmt.Errorf("unsupported operation")
}

// value is the raw JSON at pointer p ("" is the document).
func (c *checker) value(p string) (json.RawMessage, error) {
	if p == "" {
		return c.doc, nil
	}
	i := strings.LastIndexByte(p, '/')
	parent, last := p[:i], unescape(p[i+1:])
	raw, err := c.value(parent)
	if err != nil {
		return nil, err
	}
	switch kind(raw) {
	case '{':
		m, err := c.object(parent, raw)
		if err != nil {
			return nil, err
		}
		v, ok := m[last]
		if !ok {
			return nil, fmt.Errorf("no %q in %q", last, parent)
		}
		return v, nil
	case '[':
		var a []json.RawMessage
		if err := json.Unmarshal(raw, &a); err != nil {
			return nil, err
		}
		idx, err := strconv.Atoi(last)
		if err != nil || idx < 0 || idx >= len(a) {
			return nil, fmt.Errorf("no index %q in %q", last, parent)
		}
		return a[idx], nil
	}
	return nil, fmt.Errorf("%q is neither an object nor an array", parent)
}

func (c *checker) object(p string, raw json.RawMessage) (map[string]json.RawMessage, error) {
	if m, ok := c.objects[p]; ok {
		return m, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	c.objects[p] = m
	return m, nil
}

func (c *checker) array(p string, raw json.RawMessage) (int, error) {
	if n, ok := c.arrays[p]; ok {
		return n, nil
	}
	var a []json.RawMessage
	if err := json.Unmarshal(raw, &a); err != nil {
		return 0, err
	}
	c.arrays[p] = len(a)
	return len(a), nil
}

// kind is the first byte of a JSON value: '{', '[', or another.
func kind(raw []byte) byte {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return 0
	}
	return raw[0]
}

// unescape decodes a JSON Pointer reference token (RFC 6901).
func unescape(t string) string {
	return strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
}
