package inject

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/go-json-experiment/json/jsontext"
)

// CheckPatch reports whether ApplyPatch(js, ops) would succeed, without
// building the patched document. It reads js once with jsontext, which
// validates all of it, and looks only into the objects and arrays on the
// ops' paths (names matched exactly, as JSON Patch resolves them),
// skipping everything else; the map decoding it replaces was a third of
// a webhook review's CPU (docs/performance.md).
//
// It never accepts a patch json-patch would refuse, and refuses a little
// more: a document with a duplicate name or invalid UTF-8 (RFC 7493; the
// API server sends neither), where json-patch would take the last name.
// It knows the "add" and "replace" operations Patch writes; any other
// operation is an error.
func CheckPatch(js []byte, ops []Op) error {
	if len(js) == 0 {
		return nil // as json-patch: an empty document is returned as is
	}
	parents := make([]string, len(ops))
	for i, op := range ops {
		j := strings.LastIndexByte(op.Path, '/')
		if j < 0 {
			return fmt.Errorf("%s %s: not a JSON Pointer", op.Op, op.Path)
		}
		parents[i] = op.Path[:j]
	}
	s := scan{dec: jsontext.NewDecoder(bytes.NewBuffer(js)), parents: parents, nodes: map[string]node{}}
	if err := s.value(""); err != nil {
		return fmt.Errorf("not a JSON document: %v", err)
	}
	if _, err := s.dec.ReadToken(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("not a JSON document: more after its value")
	}
	added := map[string]bool{} // objects the patch itself adds
	for i, op := range ops {
		if err := s.check(op, parents[i], added); err != nil {
			return fmt.Errorf("%s %s: %v", op.Op, op.Path, err)
		}
	}
	return nil
}

// node is what an op needs of a value on its path.
type node struct {
	kind  jsontext.Kind
	len   int             // an array's
	names map[string]bool // an object's member names
}

type scan struct {
	dec     *jsontext.Decoder
	parents []string        // the ops' parents, as JSON Pointers
	nodes   map[string]node // the values on the parents' paths, by JSON Pointer
}

// value reads the value at JSON Pointer p, and records it if it is on the
// path to a parent.
func (s *scan) value(p string) error {
	if !s.onPath(p) {
		return s.dec.SkipValue()
	}
	n := node{kind: s.dec.PeekKind()}
	switch n.kind {
	case '{':
		if _, err := s.dec.ReadToken(); err != nil {
			return err
		}
		n.names = map[string]bool{}
		for s.dec.PeekKind() != '}' {
			tok, err := s.dec.ReadToken()
			if err != nil {
				return err
			}
			name := tok.String()
			n.names[name] = true
			if err := s.value(p + "/" + escape(name)); err != nil {
				return err
			}
		}
		if _, err := s.dec.ReadToken(); err != nil {
			return err
		}
	case '[':
		if _, err := s.dec.ReadToken(); err != nil {
			return err
		}
		for ; s.dec.PeekKind() != ']'; n.len++ {
			if err := s.value(p + "/" + strconv.Itoa(n.len)); err != nil {
				return err
			}
		}
		if _, err := s.dec.ReadToken(); err != nil {
			return err
		}
	default:
		if err := s.dec.SkipValue(); err != nil {
			return err
		}
	}
	s.nodes[p] = n
	return nil
}

// onPath reports whether p is a parent or leads to one.
func (s *scan) onPath(p string) bool {
	for _, q := range s.parents {
		if q == p || strings.HasPrefix(q, p+"/") {
			return true
		}
	}
	return false
}

func (s *scan) check(op Op, parent string, added map[string]bool) error {
	last := unescape(op.Path[len(parent)+1:])
	if added[parent] {
		if op.Op != "add" {
			return fmt.Errorf("unsupported in an added object")
		}
		return nil
	}
	n, ok := s.nodes[parent]
	if !ok {
		return fmt.Errorf("no %q", parent)
	}
	switch n.kind {
	case '{':
		switch op.Op {
		case "add":
			if _, isMap := op.Value.(map[string]string); isMap {
				added[op.Path] = true
			}
			return nil
		case "replace":
			if !n.names[last] {
				return fmt.Errorf("no %q to replace", last)
			}
			return nil
		}
	case '[':
		idx, err := strconv.Atoi(last)
		if err != nil || idx < 0 || last != strconv.Itoa(idx) {
			return fmt.Errorf("%q is not an array index", last)
		}
		if op.Op == "replace" && idx < n.len {
			return nil
		}
		return fmt.Errorf("index %d out of %d", idx, n.len)
	default:
		return fmt.Errorf("%q is neither an object nor an array", parent)
	}
	return fmt.Errorf("unsupported operation")
}

// unescape decodes a JSON Pointer reference token (RFC 6901).
func unescape(t string) string {
	return strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
}
