package capture

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// hostileValues are annotation values crafted to smuggle iptables
// arguments or rules through, or to blow up the ruleset or the error
// message. Every annotation parser must refuse every one of them.
var hostileValues = map[string]string{
	"port then target":        "80 -j ACCEPT",
	"name then option":        "eth0 --dport",
	"newline then rule":       "80\n-A OUTPUT -j ACCEPT",
	"carriage return":         "eth0\r-j",
	"bare -A":                 "-A",
	"option":                  "-j ACCEPT",
	"long option":             "--to-ports=1",
	"negation":                "!",
	"negated match":           "! -d 10.0.0.0/8",
	"option in list":          "eth0,-j",
	"wildcard then option":    "*,-j",
	"leading tab then option": "\t-j",
	"prefix then match":       "10.0.0.0/8 ! -d 1.1.1.1",
	"NUL":                     "eth0\x00",
	"double quote":            `eth0"`,
	"backslash":               `eth0\`,
	"fullwidth digits":        "８０",
	"fullwidth name":          "eth０",
	"RTL override":            "\u202eeth0",
	"combining accent":        "e\u0301th0",
	"mode with target":        "REDIRECT -j ACCEPT",
	"mode with rule":          "TPROXY\n-A",
	"1 MiB":                   strings.Repeat("9", 1<<20),
	"1 MiB of options":        strings.Repeat("-j ", 1<<18),
}

// checkMessage asserts that err names key, is short, and prints no raw
// control character (a log line per message, whatever the input).
func checkMessage(t *testing.T, err error, key string) {
	t.Helper()
	var ae *AnnotationError
	if !errors.As(err, &ae) || ae.Key != key {
		t.Errorf("error %q: want an AnnotationError naming %s", trunc(err.Error()), key)
	}
	msg := err.Error()
	if !strings.Contains(msg, key) {
		t.Errorf("message does not name %s: %q", key, trunc(msg))
	}
	if len(msg) > 512 {
		t.Errorf("message is %d bytes, want at most 512: %q", len(msg), trunc(msg))
	}
	if i := strings.IndexFunc(msg, unicode.IsControl); i >= 0 {
		t.Errorf("message holds a raw control character at %d: %q", i, msg)
	}
}

func trunc(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

func TestHostileAnnotationsAreRejected(t *testing.T) {
	for _, key := range KnownAnnotations() {
		for name, v := range hostileValues {
			t.Run(key+"/"+name, func(t *testing.T) {
				s, err := FromPod(Default(), map[string]string{key: v}, Proxy{}, nil)
				if err == nil {
					t.Fatalf("accepted %q, giving %+v", trunc(v), s)
				}
				checkMessage(t, err, key)
			})
		}
	}
}

// A hostile value among valid ones is still found, and the message names
// the annotation it is in, not a neighbour.
func TestHostileValueAmongValidOnes(t *testing.T) {
	valid := map[string]string{
		AnnotationInterceptionMode:     "TPROXY",
		AnnotationIncludeOutboundCIDRs: "10.0.0.0/8",
		AnnotationExcludeOutboundCIDRs: "10.96.0.1",
		AnnotationIncludeInboundPorts:  "9080",
		AnnotationExcludeInboundPorts:  "7777",
		AnnotationIncludeOutboundPorts: "443",
		AnnotationExcludeOutboundPorts: "3306",
		AnnotationExcludeInterfaces:    "net1",
		AnnotationRerouteInterfaces:    "vm0",
		AnnotationKubevirtInterfaces:   "vm1",
	}
	if _, err := FromPod(Default(), valid, Proxy{}, nil); err != nil {
		t.Fatalf("the valid set itself: %v", err)
	}
	for _, key := range KnownAnnotations() {
		ann := map[string]string{}
		for k, v := range valid {
			ann[k] = v
		}
		ann[key] = valid[key] + ",-j ACCEPT"
		if key == AnnotationInterceptionMode {
			ann[key] = "TPROXY -j ACCEPT"
		}
		_, err := FromPod(Default(), ann, Proxy{}, nil)
		if err == nil {
			t.Errorf("%s=%q accepted", key, ann[key])
			continue
		}
		checkMessage(t, err, key)
	}
}

// Whitespace around items is trimmed, never kept: what reaches the rules
// is the parsed value, re-rendered.
func TestWhitespaceIsNormalizedNotPassedThrough(t *testing.T) {
	s, err := FromPod(Default(), map[string]string{
		AnnotationExcludeOutboundPorts: " 80 ,\n443\t",
		AnnotationExcludeInterfaces:    " net1 ,\tnet2\n",
		AnnotationIncludeOutboundCIDRs: "\n10.0.0.0/8 , fd00::/8 ",
		AnnotationInterceptionMode:     " TPROXY\n",
	}, Proxy{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.ExcludeOutboundPorts, []uint16{80, 443}) || !slices.Equal(s.ExcludeInterfaces, []string{"net1", "net2"}) ||
		len(s.OutboundCIDRs.List) != 2 || s.Mode != TProxy {
		t.Fatalf("got %+v", s)
	}
}

// The proxy's identity comes from the pod spec. The API server admits
// 0-2147483647; a value outside that (a spec that skipped validation)
// must be refused, not wrapped around into another UID.
func TestProxyIdentityOutOfRange(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proxy Proxy
		want  string
	}{
		{"negative uid", Proxy{UID: ptr[int64](-1)}, "runAsUser -1"},
		{"uid wraps to 1337", Proxy{UID: ptr[int64](1<<32 + 1337)}, "runAsUser 4294968633"},
		{"uid above int32", Proxy{UID: ptr[int64](math.MaxInt32 + 1)}, "runAsUser"},
		{"negative gid", Proxy{GID: ptr[int64](-1337)}, "runAsGroup -1337"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := FromPod(Default(), nil, tc.proxy, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("FromPod = %+v, %v; want an error saying %q", s.ProxyUIDs, err, tc.want)
			}
		})
	}
	s, err := FromPod(Default(), nil, Proxy{UID: ptr[int64](math.MaxInt32), GID: ptr[int64](1)}, nil)
	if err != nil || !slices.Equal(s.ProxyUIDs, []uint32{math.MaxInt32}) || !slices.Equal(s.ProxyGIDs, []uint32{1}) {
		t.Fatalf("the largest valid uid: %v %v %v", s.ProxyUIDs, s.ProxyGIDs, err)
	}
}

// The sidecar's env is pod input too. Istio reads a flag it cannot parse
// as false; so does meshcni, and the warning that says so stays one short
// line whatever the value.
func TestHostileProxyEnv(t *testing.T) {
	for _, v := range []string{"true -j ACCEPT", "1\n-A", strings.Repeat("t", 1<<20)} {
		proxy := Proxy{Env: map[string]string{EnvInvalidDrop: v}}
		s, err := FromPod(Default(), nil, proxy, nil)
		if err != nil || s.DropInvalid {
			t.Errorf("%s=%q: got DropInvalid %v, %v; want false, as Istio reads it", EnvInvalidDrop, trunc(v), s.DropInvalid, err)
		}
		w := proxy.FlagWarnings()
		if len(w) != 1 {
			t.Fatalf("%s=%q: warnings %q, want one", EnvInvalidDrop, trunc(v), w)
		}
		if msg := w[0]; !strings.Contains(msg, EnvInvalidDrop) || len(msg) > 512 || strings.ContainsRune(msg, '\n') {
			t.Errorf("warning %q: must name %s, be short, one line", trunc(msg), EnvInvalidDrop)
		}
	}
}

// quote keeps messages short whatever the value: a prefix, quoted, never
// a cut rune, and the real length.
func TestQuote(t *testing.T) {
	if got := quote("short"); got != `"short"` {
		t.Errorf("quote(short) = %s", got)
	}
	for _, long := range []string{strings.Repeat("é", 100), strings.Repeat("\x18", 100), strings.Repeat("\U0010ffff", 30), strings.Repeat("a", 1<<20)} {
		long = strings.NewReplacer(`\x18`, "\x18", `\U0010ffff`, "\U0010ffff").Replace(long)
		got := quote(long)
		suffix := fmt.Sprintf("...(%d bytes)", len(long))
		if !strings.HasSuffix(got, suffix) || len(got) > maxQuoted+len(suffix) {
			t.Errorf("quote(%d bytes) = %s", len(long), got)
		}
		prefix, err := strconv.Unquote(strings.TrimSuffix(got, suffix))
		if err != nil || !strings.HasPrefix(long, prefix) || !utf8.ValidString(prefix) != !utf8.ValidString(long[:len(prefix)]) {
			t.Errorf("quote(%d bytes) = %s: not a quoted prefix (%v)", len(long), got, err)
		}
	}
}
