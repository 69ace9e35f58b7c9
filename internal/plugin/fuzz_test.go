package plugin

import "testing"

// FuzzParseArgs: CNI_ARGS is runtime input; it must never panic.
func FuzzParseArgs(f *testing.F) {
	f.Add("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u")
	f.Add("K8S_POD_NAME=a=b;;=;")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseArgs(s)
		if err == nil && a == nil {
			t.Fatal("nil args without error")
		}
	})
}
