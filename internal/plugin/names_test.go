package plugin

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
)

// A pod name or namespace the API server could never have accepted fails
// ADD and CHECK with code 7 naming the value, before the agent's cache or
// the API is asked (before the fix: code 11 "cannot reach the Kubernetes
// API" after every retry).
func TestInvalidPodNamesFailBeforeAnyLookup(t *testing.T) {
	for _, tc := range []struct {
		name, ns, pod, want string
	}{
		{"upper-case name", "bookinfo", "Reviews", `K8S_POD_NAME "Reviews"`},
		{"underscore in name", "bookinfo", "re_views", `K8S_POD_NAME "re_views"`},
		{"leading dash", "bookinfo", "-reviews", `K8S_POD_NAME "-reviews"`},
		{"trailing dot", "bookinfo", "reviews.", `K8S_POD_NAME "reviews."`},
		{"empty part", "bookinfo", "a..b", `K8S_POD_NAME "a..b"`},
		{"slash", "bookinfo", "a/b", `K8S_POD_NAME "a/b"`},
		{"path", "bookinfo", "../../x", `K8S_POD_NAME "../../x"`},
		{"space", "bookinfo", "a b", `K8S_POD_NAME "a b"`},
		{"control character", "bookinfo", "a\x01b", `K8S_POD_NAME "a\x01b"`},
		{"non-ASCII", "bookinfo", "revíews", `K8S_POD_NAME "revíews"`},
		{"name of 254", "bookinfo", strings.Repeat("a", 254), `K8S_POD_NAME "` + strings.Repeat("a", 80) + `"...(254 bytes)`},
		{"namespace with a dot", "book.info", "reviews", `K8S_POD_NAMESPACE "book.info"`},
		{"namespace of 64", strings.Repeat("n", 64), "reviews", `K8S_POD_NAMESPACE "` + strings.Repeat("n", 64) + `"`},
		{"upper-case namespace", "Bookinfo", "reviews", `K8S_POD_NAMESPACE "Bookinfo"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(meshPod(tc.ns, tc.pod))
			cache := h.withCache(meshPod(tc.ns, tc.pod))
			conf := stdinConf("1.0.0", cacheConf, false)
			for cmd, run := range map[string]func(*skel.CmdArgs) error{"ADD": h.p.CmdAdd, "CHECK": h.p.CmdCheck} {
				err := run(cmdArgs(tc.ns, tc.pod, "uid-"+tc.pod, conf))
				var te *types.Error
				if !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig {
					t.Fatalf("%s: %v, want CNI error %d", cmd, err, types.ErrInvalidNetworkConfig)
				}
				if !strings.Contains(te.Msg, tc.want) || strings.Contains(te.Msg, "reach") {
					t.Errorf("%s: message %q, want it to name %s", cmd, te.Msg, tc.want)
				}
				if len(te.Msg) > 512 {
					t.Errorf("%s: message of %d bytes", cmd, len(te.Msg))
				}
			}
			if cache.calls != 0 || h.pods.calls != 0 {
				t.Errorf("asked the cache %d and the API %d times, want none", cache.calls, h.pods.calls)
			}
			if _, ok := h.rules.Spec("/var/run/netns/" + tc.pod); ok {
				t.Error("rules written")
			}
		})
	}
}

// The longest and oddest names the API server accepts still go through.
func TestValidPodNamesAtTheLimits(t *testing.T) {
	for _, tc := range []struct{ ns, pod string }{
		{strings.Repeat("n", 63), "reviews"},
		{"0", "0"},
		{"a-1", "reviews-v1-5d5b8c7f9-x2x7k"},
		{"bookinfo", strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 61)},
		{"bookinfo", "a.b-c.0"},
	} {
		h := newHarness(meshPod(tc.ns, tc.pod))
		if _, err := h.add(t, cmdArgs(tc.ns, tc.pod, "uid-"+tc.pod, stdinConf("1.0.0", "", false))); err != nil {
			t.Errorf("%s/%s: %v", tc.ns, tc.pod, err)
		}
	}
}

// The plug-in's own name rules (it links no k8s.io package) agree with
// apimachinery's on chosen and on random strings over the characters
// that matter.
func TestNameRulesMatchApimachinery(t *testing.T) {
	check := func(s string) {
		t.Helper()
		if got, want := isDNS1123Label(s), len(validation.IsDNS1123Label(s)) == 0; got != want {
			t.Errorf("isDNS1123Label(%q) = %v, apimachinery says %v", s, got, want)
		}
		if got, want := isDNS1123Subdomain(s), len(validation.IsDNS1123Subdomain(s)) == 0; got != want {
			t.Errorf("isDNS1123Subdomain(%q) = %v, apimachinery says %v", s, got, want)
		}
	}
	for _, s := range []string{"", "a", "-", ".", "a.", ".a", "a-", "-a", "a.b", "a..b", "a.-b", "a-.b", "A", "a_b", "é",
		strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("a", 253), strings.Repeat("a", 254),
		strings.Repeat("a.", 126) + "a", strings.Repeat("a.", 126) + "ab"} {
		check(s)
	}
	const alphabet = "ab09-.A_ "
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		b := make([]byte, r.IntN(12))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}
		check(string(b))
	}
}
