package install

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

const m = `{"type":"meshcni"}`

func TestInsertEntryLayout(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"compact", `{"name":"n","plugins":[{"type":"a"}]}`,
			`{"name":"n","plugins":[{"type":"a"},{"type":"meshcni"}]}`},
		{"empty array", `{"name":"n","plugins":[]}`,
			`{"name":"n","plugins":[{"type":"meshcni"}]}`},
		{"one-line elements", "{\"plugins\": [\n  {\"type\": \"a\"}\n]}",
			"{\"plugins\": [\n  {\"type\": \"a\"},\n  {\"type\":\"meshcni\"}\n]}"},
		{"tabs", "{\n\t\"plugins\": [\n\t\t{\n\t\t\t\"type\": \"a\"\n\t\t}\n\t]\n}",
			"{\n\t\"plugins\": [\n\t\t{\n\t\t\t\"type\": \"a\"\n\t\t},\n\t\t{\n\t\t\t\"type\": \"meshcni\"\n\t\t}\n\t]\n}"},
		{"crlf", "{\r\n  \"plugins\": [\r\n    {\r\n      \"type\": \"a\"\r\n    }\r\n  ]\r\n}\r\n",
			"{\r\n  \"plugins\": [\r\n    {\r\n      \"type\": \"a\"\r\n    },\r\n    {\n      \"type\": \"meshcni\"\n    }\r\n  ]\r\n}\r\n"},
		{"strings that look like structure", `{"a":"\"plugins\": [","plugins":[{"type":"a","s":"], {\"type\":\"meshcni\"}"}]}`,
			`{"a":"\"plugins\": [","plugins":[{"type":"a","s":"], {\"type\":\"meshcni\"}"},{"type":"meshcni"}]}`},
		{"nested plugins key", `{"x":{"plugins":[]},"plugins":[{"type":"a","plugins":[{"type":"meshcni"}]}]}`,
			`{"x":{"plugins":[]},"plugins":[{"type":"a","plugins":[{"type":"meshcni"}]},{"type":"meshcni"}]}`},
		{"several old entries", `{"plugins":[{"type":"meshcni","v":1}, {"type":"a"}, {"type":"meshcni","v":2}]}`,
			`{"plugins":[{"type":"a"},{"type":"meshcni"}]}`},
		{"only old entry", `{"plugins":[ {"type":"meshcni","v":1} ]}`,
			`{"plugins":[{"type":"meshcni"}  ]}`},
		{"type matched like libcni, case-insensitively", `{"plugins":[{"type":"a"},{"TYPE":"meshcni"},{"type":"b"}]}`,
			`{"plugins":[{"type":"a"},{"type":"b"},{"type":"meshcni"}]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, changed, err := InsertEntry([]byte(tc.in), []byte(m))
			if err != nil {
				t.Fatal(err)
			}
			if !changed || string(got) != tc.want {
				t.Errorf("InsertEntry = %v\n%q\nwant\n%q", changed, got, tc.want)
			}
			checkSpliceProperties(t, []byte(tc.in), []byte(m))
		})
	}
}

func TestInsertEntryErrors(t *testing.T) {
	for _, in := range []string{``, `null`, `[]`, `{"plugins":{}}`, `{"plugins":[]`, `{"name":"x"}`,
		`{"plugins":[],"plugins":[]}`, `{"plugins":[]} x`, `{"meshcniWrappedConf":1,"plugins":[]}`} {
		if _, _, err := InsertEntry([]byte(in), []byte(m)); err == nil {
			t.Errorf("InsertEntry(%q) succeeded", in)
		}
	}
}

func TestRemoveEntry(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"plugins":[{"type":"a"}]}`, `{"plugins":[{"type":"a"}]}`},
		{`{"plugins":[ {"type":"meshcni"} , {"type":"a"} ]}`, `{"plugins":[ {"type":"a"} ]}`},
		{`{"plugins":[ {"type":"a"} , {"type":"meshcni"} , {"type":"b"} ]}`, `{"plugins":[ {"type":"a"} , {"type":"b"} ]}`},
		{`{"plugins":[ {"type":"meshcni"} ]}`, `{"plugins":[  ]}`},
	} {
		got, changed, err := RemoveEntry([]byte(tc.in))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want || changed != (tc.in != tc.want) {
			t.Errorf("RemoveEntry(%s) = %v %s, want %s", tc.in, changed, got, tc.want)
		}
	}
}

func TestWrapConfKeepsVersion(t *testing.T) {
	for _, v := range []string{"0.1.0", "0.3.0", "0.3.1", "1.0.0", ""} {
		conf := []byte(`{"cniVersion":"` + v + `","name":"net","type":"bridge"}`)
		out, err := WrapConf(conf, "10-net.conf", []byte(testEntry))
		if err != nil {
			t.Fatal(err)
		}
		list, err := libcni.NetworkConfFromBytes(out)
		if err != nil {
			t.Fatal(err)
		}
		if list.CNIVersion != v || list.Name != "net" || len(list.Plugins) != 2 {
			t.Errorf("wrapped %s: version %q name %q plugins %d", conf, list.CNIVersion, list.Name, len(list.Plugins))
		}
	}
	for _, conf := range []string{`{"name":"x"}`, `{"type":"meshcni"}`, `[]`, ``} {
		if _, err := WrapConf([]byte(conf), "x.conf", []byte(testEntry)); err == nil {
			t.Errorf("WrapConf(%s) succeeded", conf)
		}
	}
}

// checkSpliceProperties holds for every conflist InsertEntry accepts:
//   - the result is valid JSON, and loads in libcni if the input did;
//   - everything outside the plugins array is unchanged, and the other
//     plugins are there in order, byte for byte, followed by entry;
//   - inserting again changes nothing;
//   - RemoveEntry(InsertEntry(x)) == RemoveEntry(x).
func checkSpliceProperties(t *testing.T, in, entry []byte) {
	t.Helper()
	c, err := parseConflist(in)
	if err != nil {
		if _, _, err := InsertEntry(in, entry); err == nil {
			t.Fatalf("InsertEntry accepted what parseConflist rejects: %q", in)
		}
		return
	}
	ins, _, err := InsertEntry(in, entry)
	if err != nil {
		t.Fatalf("InsertEntry(%q): %v", in, err)
	}
	if !json.Valid(ins) {
		t.Fatalf("InsertEntry(%q) = invalid JSON %q", in, ins)
	}
	if l, err := libcni.NetworkConfFromBytes(in); err == nil && len(l.Plugins) > 0 {
		if _, err := libcni.NetworkConfFromBytes(ins); err != nil {
			t.Fatalf("libcni loads %q but not %q: %v", in, ins, err)
		}
	}
	ci, err := parseConflist(ins)
	if err != nil {
		t.Fatalf("parse %q: %v", ins, err)
	}
	if !bytes.Equal(in[:c.open+1], ins[:ci.open+1]) || !bytes.Equal(in[c.close:], ins[ci.close:]) {
		t.Fatalf("text outside plugins changed:\n%q\n%q", in, ins)
	}
	var others [][]byte
	for i := range c.plugins {
		if c.types[i] != PluginType {
			others = append(others, c.elem(i))
		}
	}
	n := len(ci.plugins)
	if n != len(others)+1 || ci.types[n-1] != PluginType || !jsonEqual(ci.elem(n-1), entry) {
		t.Fatalf("InsertEntry(%q) = %q: want %d others then the entry", in, ins, len(others))
	}
	for i, o := range others {
		if !bytes.Equal(ci.elem(i), o) {
			t.Fatalf("plugin %d changed: %q -> %q", i, o, ci.elem(i))
		}
	}
	again, changed, err := InsertEntry(ins, entry)
	if err != nil || changed || !bytes.Equal(again, ins) {
		t.Fatalf("second InsertEntry(%q) = %v, %v", ins, changed, err)
	}
	r1, _, err1 := RemoveEntry(in)
	r2, _, err2 := RemoveEntry(ins)
	if err1 != nil || err2 != nil || !bytes.Equal(r1, r2) {
		t.Fatalf("RemoveEntry(InsertEntry(x)) != RemoveEntry(x):\n%q\n%q\n(%v, %v)", r2, r1, err1, err2)
	}
}

func FuzzInsertRemove(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "configs", "*"))
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, []byte(testEntry))
	}
	f.Fuzz(func(t *testing.T, in, entry []byte) {
		if err := checkEntry(entry); err != nil {
			return
		}
		checkSpliceProperties(t, in, entry)
	})
}

// FuzzWrapUnwrap: any single-plugin config libcni accepts wraps into a
// conflist libcni loads, with the same cniVersion and name, and unwraps to
// the same bytes.
func FuzzWrapUnwrap(f *testing.F) {
	for _, p := range []string{"10-terway.conf", "10-bridge.json", "garbage.conf", "conflist-in-a.conf"} {
		data, err := os.ReadFile(filepath.Join("testdata", "configs", p))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, conf []byte) {
		pc, err := libcni.NetworkPluginConfFromBytes(conf)
		if err != nil || pc.Network.Type == PluginType {
			return
		}
		out, err := WrapConf(conf, "10-x.conf", []byte(testEntry))
		if err != nil {
			t.Fatalf("WrapConf(%q): %v", conf, err)
		}
		list, err := libcni.NetworkConfFromBytes(out)
		if err != nil {
			t.Fatalf("libcni rejects %q: %v", out, err)
		}
		if list.CNIVersion != pc.Network.CNIVersion || list.Name != pc.Network.Name || len(list.Plugins) != 2 {
			t.Fatalf("wrapped %q: %+v", conf, list)
		}
		name, back, ok, err := UnwrapConf(out)
		if err != nil || !ok || name != "10-x.conf" || !bytes.Equal(back, conf) {
			t.Fatalf("UnwrapConf = %q %q %v %v, want %q", name, back, ok, err, conf)
		}
	})
}
