package install

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"

	"github.com/containernetworking/cni/libcni"
)

// PluginType is the "type" that marks a plugin entry as ours. Every entry of
// this type is meshcni's to replace or remove; no other entry is touched.
const PluginType = "meshcni"

// wrapKey is the top-level key of a conflist that WrapConf made from a lone
// .conf. Its value is the original file's base name; the original bytes are
// the first element of the plugins array, verbatim.
const wrapKey = "meshcniWrappedConf"

// The functions in this file are bytes to bytes. They never re-encode a
// document: they find the plugins array and splice text in or out, so every
// byte outside our own entry stays as it was and
// RemoveEntry(InsertEntry(x)) == RemoveEntry(x) for any valid conflist x.

type span struct{ start, end int }

// conflist is the layout of a conflist document: where its plugins array
// and each element are, and each element's type.
type conflist struct {
	data    []byte
	open    int    // offset of the plugins array's '['
	close   int    // offset of its ']'
	plugins []span // each element, without surrounding whitespace
	types   []string
	wrapped string // value of wrapKey, "" if absent
}

func parseConflist(data []byte) (*conflist, error) {
	if !json.Valid(data) {
		return nil, errors.New("not valid JSON")
	}
	c := &conflist{data: data, open: -1}
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		switch key, _ := tok.(string); key {
		case "plugins":
			if c.open >= 0 {
				return nil, errors.New(`duplicate "plugins" key`)
			}
			if err := c.parsePlugins(dec); err != nil {
				return nil, err
			}
		case wrapKey:
			if err := dec.Decode(&c.wrapped); err != nil {
				return nil, fmt.Errorf("%s: %w", wrapKey, err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, err
			}
		}
	}
	if c.open < 0 {
		return nil, errors.New(`no "plugins" array`)
	}
	return c, nil
}

func (c *conflist) parsePlugins(dec *json.Decoder) error {
	if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
		return errors.New(`"plugins" is not an array`)
	}
	c.open = int(dec.InputOffset()) - 1
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		end := int(dec.InputOffset())
		s := span{end - len(raw), end}
		if s.start < 0 || !bytes.Equal(c.data[s.start:s.end], raw) {
			return errors.New("cannot locate plugin entry in the text") // never expected
		}
		c.plugins = append(c.plugins, s)
		c.types = append(c.types, pluginType(raw))
	}
	if _, err := dec.Token(); err != nil { // ']'
		return err
	}
	c.close = int(dec.InputOffset()) - 1
	return nil
}

// pluginType reads "type" the way libcni does (encoding/json into a struct),
// so what counts as a meshcni entry here is what the runtime would run as one.
func pluginType(raw []byte) string {
	var p struct {
		Type string `json:"type"`
	}
	if json.Unmarshal(raw, &p) != nil {
		return ""
	}
	return p.Type
}

func (c *conflist) ours() (idx []int) {
	for i, t := range c.types {
		if t == PluginType {
			idx = append(idx, i)
		}
	}
	return idx
}

func (c *conflist) elem(i int) []byte { return c.data[c.plugins[i].start:c.plugins[i].end] }

// status reports where our entry is, relative to the desired one.
func (c *conflist) status(entry []byte) (present, last, equal bool) {
	ours := c.ours()
	n := len(c.plugins)
	present = len(ours) > 0
	last = len(ours) == 1 && ours[0] == n-1
	equal = last && jsonEqual(c.elem(n-1), entry)
	return present, last, equal
}

// remove cuts element i and exactly one adjacent separator. It is the inverse
// of appendEntry: appendEntry adds "," + whitespace + entry after the last
// element, and removing a non-first element cuts from the end of the element
// before it.
func (c *conflist) remove(i int) []byte {
	var from, to int
	switch {
	case len(c.plugins) == 1:
		from, to = c.plugins[0].start, c.plugins[0].end
	case i == 0:
		from, to = c.plugins[0].start, c.plugins[1].start
	default:
		from, to = c.plugins[i-1].end, c.plugins[i].end
	}
	return concat(c.data[:from], c.data[to:])
}

// appendEntry adds entry as the last element, laid out like the element
// before it: same leading whitespace, and indented alike if that one spans
// several lines.
func (c *conflist) appendEntry(entry []byte) []byte {
	n := len(c.plugins)
	if n == 0 {
		return concat(c.data[:c.open+1], entry, c.data[c.open+1:])
	}
	last := c.plugins[n-1]
	ws := last.start
	for ws > 0 && isSpace(c.data[ws-1]) {
		ws--
	}
	lead := c.data[ws:last.start]
	return concat(c.data[:last.end], []byte(","), lead, layout(entry, lead, c.elem(n-1)), c.data[last.end:])
}

// layout renders entry compact, or indented to match like when both the
// separator before like and like itself span lines.
func layout(entry, lead, like []byte) []byte {
	var buf bytes.Buffer
	nl := bytes.LastIndexByte(lead, '\n')
	inner := indentAfterNewline(like)
	if nl < 0 || inner == nil {
		_ = json.Compact(&buf, entry) // entry is valid JSON, checked by checkEntry
		return buf.Bytes()
	}
	prefix := string(lead[nl+1:])
	unit := "  "
	if len(inner) > len(prefix) && bytes.HasPrefix(inner, []byte(prefix)) {
		unit = string(inner[len(prefix):])
	}
	_ = json.Indent(&buf, compact(entry), prefix, unit)
	return buf.Bytes()
}

// indentAfterNewline returns the whitespace that starts the second line of
// b, or nil if b is one line.
func indentAfterNewline(b []byte) []byte {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil
	}
	j := i + 1
	for j < len(b) && (b[j] == ' ' || b[j] == '\t') {
		j++
	}
	return b[i+1 : j]
}

// InsertEntry returns conflist with entry as its last plugin. Older entries
// of type PluginType are removed first. If exactly one such entry exists,
// last and equal (as JSON) to entry, conflist is returned unchanged and
// changed is false.
func InsertEntry(conflist, entry []byte) (out []byte, changed bool, err error) {
	if err := checkEntry(entry); err != nil {
		return nil, false, err
	}
	c, err := parseConflist(conflist)
	if err != nil {
		return nil, false, err
	}
	if _, _, equal := c.status(entry); equal {
		return conflist, false, nil
	}
	out, _, err = RemoveEntry(conflist)
	if err != nil {
		return nil, false, err
	}
	if c, err = parseConflist(out); err != nil {
		return nil, false, err
	}
	return c.appendEntry(entry), true, nil
}

// RemoveEntry returns conflist without any plugin of type PluginType.
func RemoveEntry(conflist []byte) (out []byte, changed bool, err error) {
	out = conflist
	for {
		c, err := parseConflist(out)
		if err != nil {
			return nil, false, err
		}
		ours := c.ours()
		if len(ours) == 0 {
			return out, changed, nil
		}
		out, changed = c.remove(ours[len(ours)-1]), true
	}
}

// WrapConf turns a single-plugin .conf (named confName) into a conflist
// ending with entry. The wrapper takes its cniVersion and name from the
// .conf, as libcni's ConfListFromConf does; the cniVersion is never raised.
// The .conf's bytes become the first plugin verbatim, so UnwrapConf can give
// them back exactly.
func WrapConf(conf []byte, confName string, entry []byte) ([]byte, error) {
	var pc struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Type       string `json:"type"`
	}
	if err := json.Unmarshal(conf, &pc); err != nil {
		return nil, fmt.Errorf("parse single-plugin config: %w", err)
	}
	switch pc.Type {
	case "":
		return nil, errors.New(`single-plugin config has no "type"`)
	case PluginType:
		return nil, fmt.Errorf("single-plugin config is a lone %s plugin; nothing to chain after", PluginType)
	}
	head, err := json.MarshalIndent(struct {
		CNIVersion string `json:"cniVersion"`
		Name       string `json:"name"`
		Wrapped    string `json:"meshcniWrappedConf"`
	}{pc.CNIVersion, pc.Name, confName}, "", "  ")
	if err != nil {
		return nil, err
	}
	head = bytes.TrimSuffix(head, []byte("\n}"))
	list := concat(head, []byte(",\n  \"plugins\": ["), conf, []byte("]\n}\n"))
	out, _, err := InsertEntry(list, entry)
	return out, err
}

// UnwrapConf undoes WrapConf: for a conflist carrying the wrap marker, it
// returns the original .conf's name and bytes. ok is false for any other
// conflist, or if the wrapper no longer holds exactly one other plugin.
func UnwrapConf(conflist []byte) (confName string, conf []byte, ok bool, err error) {
	rest, _, err := RemoveEntry(conflist)
	if err != nil {
		return "", nil, false, err
	}
	c, err := parseConflist(rest)
	if err != nil {
		return "", nil, false, err
	}
	if c.wrapped == "" || len(c.plugins) != 1 {
		return "", nil, false, nil
	}
	return c.wrapped, bytes.Clone(rest[c.open+1 : c.close]), true, nil
}

// checkEntry insists entry is a plugin config libcni loads, of type
// PluginType: a bad entry would break every pod on the node.
func checkEntry(entry []byte) error {
	pc, err := libcni.NetworkPluginConfFromBytes(entry)
	if err != nil {
		return fmt.Errorf("meshcni entry: %w", err)
	}
	if pc.Network.Type != PluginType {
		return fmt.Errorf("meshcni entry: type is %q, want %q", pc.Network.Type, PluginType)
	}
	return nil
}

func jsonEqual(a, b []byte) bool {
	va, errA := decodeNumbers(a)
	vb, errB := decodeNumbers(b)
	return errA == nil && errB == nil && reflect.DeepEqual(va, vb)
}

func decodeNumbers(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var v any
	err := dec.Decode(&v)
	return v, err
}

func compact(b []byte) []byte {
	var buf bytes.Buffer
	_ = json.Compact(&buf, b)
	return buf.Bytes()
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

func concat(parts ...[]byte) []byte {
	return bytes.Join(parts, nil)
}
