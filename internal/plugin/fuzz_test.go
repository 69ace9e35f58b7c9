package plugin

import (
	"encoding/json"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
)

// FuzzParseConfig: any bytes on stdin give a config or a CNI error, never a
// panic, and an accepted config has usable values.
func FuzzParseConfig(f *testing.F) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		f.Add(netconf(v, "", true))
		f.Add(netconf(v, `,"api_timeout":"1s","pod_lookup_retries":3`, false))
	}
	f.Add([]byte(`{"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"nope"}]}}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","exclude_namespaces":[""]}`))
	f.Add([]byte(`{"proxy_port":-1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		conf, err := parseConfig(data)
		if err != nil {
			return
		}
		if conf.apiTimeout <= 0 || conf.lookupRetry <= 0 || conf.lookupTries < 1 {
			t.Fatalf("accepted unusable timing: %+v", conf)
		}
		if err := conf.captureBase.Validate(); err != nil {
			t.Fatalf("accepted a config whose capture defaults are invalid: %v", err)
		}
		if conf.PrevResult != nil {
			if _, err := current.NewResultFromResult(conf.PrevResult); err != nil {
				return
			}
		}
		if _, err := json.Marshal(conf); err != nil {
			t.Fatalf("config does not re-marshal: %v", err)
		}
	})
}

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
