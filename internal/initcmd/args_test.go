package initcmd

import (
	"maps"
	"slices"
	"testing"
)

// Set names exactly the flags given: on the command line (long or short
// form) or from the environment, never a default or an ignored flag.
func TestParseArgsSet(t *testing.T) {
	env := func(kv ...string) func(string) (string, bool) {
		return func(name string) (string, bool) {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == name {
					return kv[i+1], true
				}
			}
			return "", false
		}
	}
	for _, tc := range []struct {
		name string
		args []string
		env  func(string) (string, bool)
		want []string
	}{
		{"defaults only", nil, env(), nil},
		{"istio-init's", []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT", "-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"},
			env(), []string{"envoy-port", "inbound-capture-port", "istio-inbound-interception-mode", "istio-inbound-ports", "istio-local-exclude-ports", "istio-service-cidr", "istio-service-exclude-cidr", "proxy-uid"}},
		{"long forms and booleans", []string{"--proxy-gid=1337", "--capture-all-dns", "--dry-run"}, env(), []string{"capture-all-dns", "dry-run", "proxy-gid"}},
		{"environment", nil, env("ISTIO_META_DNS_CAPTURE", "true", "ENVOY_PORT", "15001", "INVALID_DROP", ""), []string{"envoy-port", "redirect-dns"}},
		{"both", []string{"-p", "15001"}, env("ENVOY_PORT", "16001", "PROXY_GID", "1"), []string{"envoy-port", "proxy-gid"}},
		{"ignored flags", []string{"--restore-format=false", "--trace-logging", "--log_as_json"}, env(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := ParseArgs(tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if got := slices.Sorted(maps.Keys(a.Set)); !slices.Equal(got, tc.want) {
				t.Errorf("Set = %q, want %q", got, tc.want)
			}
		})
	}
	a, err := ParseArgs([]string{"-p", "15001"}, env("ENVOY_PORT", "16001"))
	if err != nil || a.ProxyPort != "15001" {
		t.Errorf("the command line wins over the environment: port %q, err %v", a.ProxyPort, err)
	}
}
