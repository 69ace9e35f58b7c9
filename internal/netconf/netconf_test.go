package netconf

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/charts"
	"github.com/meshcni/meshcni/internal/netfilter"
)

func code(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

func TestUnknownKeysAreError7NamingThem(t *testing.T) {
	_, err := Parse([]byte(`{"type":"meshcni","exclude_namespace":["a"],"logLevle":"debug","kubeconfig":"/k"}`))
	if code(err) != types.ErrInvalidNetworkConfig {
		t.Fatalf("code %d (%v), want 7", code(err), err)
	}
	for _, k := range []string{`"exclude_namespace"`, `"logLevle"`} {
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error %q does not name %s", err, k)
		}
	}
	if strings.Contains(err.Error(), "kubeconfig") {
		t.Errorf("error %q names a known key", err)
	}
}

// The keys the CNI spec and runtimes add to every plug-in's config are
// known keys.
func TestRuntimeKeysAccepted(t *testing.T) {
	in := `{"cniVersion":"1.0.0","name":"k8s","type":"meshcni","capabilities":{"portMappings":true},
	 "runtimeConfig":{"portMappings":[]},"args":{"cni":{}},"ipam":{},"dns":{},
	 "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/24"}]}}`
	e, err := Parse([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := current.NewResultFromResult(e.NetConf.PrevResult); err != nil || e.NetConf.CNIVersion != "1.0.0" {
		t.Fatalf("prevResult %v, version %q: %v", e.NetConf.PrevResult, e.NetConf.CNIVersion, err)
	}
}

// Every alias reads as its key, to the same entry; both spellings of one
// setting in an entry are an error naming both.
func TestAliases(t *testing.T) {
	values := map[string]string{
		"excludeNamespaces": `["a","b"]`, "logLevel": `"debug"`, "logFile": `"/l"`, "logSocket": `"/s"`,
		"podCacheSocket": `"/p"`, "apiTimeout": `"2s"`, "podLookupRetries": `3`, "podLookupInterval": `"1s"`,
		"iptablesBackend": `"nft"`, "lockDir": `"/locks"`, "proxyPort": `15101`, "inboundCapturePort": `15106`,
		"inboundTunnelPort": `15108`, "proxyUID": `1000`, "proxyGID": `1001`,
	}
	if len(values) != len(Aliases) {
		t.Fatalf("%d values for %d aliases", len(values), len(Aliases))
	}
	for old, key := range Aliases {
		v, ok := values[key]
		if !ok {
			t.Fatalf("alias %s names %s, which has no value here", old, key)
		}
		want, err := Parse([]byte(`{"type":"meshcni",` + `"` + key + `":` + v + `}`))
		if err != nil {
			t.Fatalf("%s: %v", key, err)
		}
		got, err := Parse([]byte(`{"type":"meshcni",` + `"` + old + `":` + v + `}`))
		if err != nil {
			t.Fatalf("%s: %v", old, err)
		}
		got.written, want.written = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s reads as\n%+v\nwant as %s\n%+v", old, got, key, want)
		}
		if reflect.DeepEqual(want.Config, Config{Type: "meshcni", ExcludeNamespaces: DefaultExcludeNamespaces()}) {
			t.Errorf("%s: %s changed nothing", key, v)
		}
		_, err = Parse([]byte(`{"type":"meshcni","` + key + `":` + v + `,"` + old + `":` + v + `}`))
		if code(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), old) {
			t.Errorf("%s and %s together: %v, want error 7 naming both", key, old, err)
		}
	}
}

// Errors name the key as the entry wrote it, alias or not.
func TestErrorsNameTheKey(t *testing.T) {
	cases := map[string]string{
		`{"cniVersion":"1.0.0","exclude_namespaces":"kube-system"}`: "exclude_namespaces",
		`{"cniVersion":"1.0.0","excludeNamespaces":[""]}`:           "excludeNamespaces",
		`{"cniVersion":"1.0.0","api_timeout":"soon"}`:               "api_timeout",
		`{"cniVersion":"1.0.0","apiTimeout":"-1s"}`:                 "apiTimeout",
		`{"cniVersion":"1.0.0","pod_lookup_retries":0}`:             "pod_lookup_retries",
		`{"cniVersion":"1.0.0","iptables_backend":"ebpf"}`:          "iptables_backend",
		`{"cniVersion":"1.0.0","proxy_port":70000}`:                 "proxy_port",
		`{"cniVersion":"1.0.0","proxyPort":0}`:                      "proxyPort",
		`{"cniVersion":"1.0.0","log_level":"loud"}`:                 "log_level",
		`{"cniVersion":"1.0.0","lockDir":"run/x"}`:                  "lockDir",
	}
	for in, key := range cases {
		_, err := Parse([]byte(in))
		if code(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), key) {
			t.Errorf("%s: want error 7 naming %q, got %v", in, key, err)
		}
	}
	for _, in := range []string{`{"cniVersion":"1.0.0",`, `[]`, `null`} {
		if _, err := Parse([]byte(in)); code(err) != types.ErrDecodingFailure {
			t.Errorf("%s: want error 6, got %v", in, err)
		}
	}
}

func TestDefaults(t *testing.T) {
	e, err := Parse([]byte(`{"type":"meshcni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if e.Timeout != DefaultAPITimeout || e.Attempts != DefaultLookupRetries || e.Interval != DefaultLookupInterval ||
		e.Locks != DefaultLockDir || e.Backend != netfilter.Auto {
		t.Errorf("defaults: %+v", e)
	}
	if !reflect.DeepEqual(e.ExcludeNamespaces, DefaultExcludeNamespaces()) {
		t.Errorf("absent excludeNamespaces = %v, want the default %v", e.ExcludeNamespaces, DefaultExcludeNamespaces())
	}
	if _, done := e.Judge.Namespace("istio-system"); !done {
		t.Error("the default does not exclude istio-system")
	}
	none, err := Parse([]byte(`{"type":"meshcni","excludeNamespaces":[]}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, done := none.Judge.Namespace("kube-system"); done {
		t.Error("excludeNamespaces [] still excludes kube-system")
	}
}

// What the agent encodes parses back to the same settings.
func TestEncodeParses(t *testing.T) {
	retries, port, uid := 3, uint16(15101), uint32(1000)
	c := Config{Type: "meshcni", Kubeconfig: "/run/kubeconfig", ExcludeNamespaces: []string{"a"}, LogLevel: "debug",
		LogFile: "/run/log", LogSocket: "/run/log.sock", PodCacheSocket: "/run/pods.sock", APITimeout: "3s",
		PodLookupRetries: &retries, PodLookupInterval: "200ms", IptablesBackend: "nftables", LockDir: "/run/locks",
		ProxyPort: &port, ProxyUID: &uid}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Parse(b)
	if err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	if !reflect.DeepEqual(e.Config, c) {
		t.Fatalf("parsed %+v\nwant %+v", e.Config, c)
	}
	if e.Timeout != 3*time.Second || e.Attempts != 3 || e.Interval != 200*time.Millisecond || e.Backend != netfilter.Nftables ||
		e.Base.ProxyPort != 15101 || e.Base.ProxyUIDs[0] != 1000 || e.Base.ProxyGIDs[0] != 1000 {
		t.Fatalf("parsed forms %+v", e)
	}
	if strings.Contains(string(b), "_") {
		t.Errorf("encoded with an old spelling: %s", b)
	}
}

// The chart's default exclusion list, and the MeshCNI CRD schema's, are
// this package's.
func TestChartDefaultsMatch(t *testing.T) {
	raw, err := charts.FS.ReadFile(charts.Root + "/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		ExcludeNamespaces []string `json:"excludeNamespaces"`
	}
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(v.ExcludeNamespaces, DefaultExcludeNamespaces()) {
		t.Errorf("chart excludeNamespaces %v, netconf.DefaultExcludeNamespaces %v", v.ExcludeNamespaces, DefaultExcludeNamespaces())
	}
	raw, err = charts.FS.ReadFile(charts.Root + "/crds/meshcni.io_meshcnis.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd struct {
		Spec struct {
			Versions []struct {
				Schema struct {
					OpenAPIV3Schema struct {
						Properties struct {
							Spec struct {
								Properties struct {
									ExcludeNamespaces struct {
										Default []string `json:"default"`
									} `json:"excludeNamespaces"`
								} `json:"properties"`
							} `json:"spec"`
						} `json:"properties"`
					} `json:"openAPIV3Schema"`
				} `json:"schema"`
			} `json:"versions"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(raw, &crd); err != nil || len(crd.Spec.Versions) == 0 {
		t.Fatalf("the CRD: %v", err)
	}
	for _, ver := range crd.Spec.Versions {
		got := ver.Schema.OpenAPIV3Schema.Properties.Spec.Properties.ExcludeNamespaces.Default
		if !reflect.DeepEqual(got, DefaultExcludeNamespaces()) {
			t.Errorf("CRD spec.excludeNamespaces default %v, netconf.DefaultExcludeNamespaces %v", got, DefaultExcludeNamespaces())
		}
	}
}

// FuzzParse: any bytes on stdin give an entry or a CNI error, never a
// panic, and an accepted entry has usable values.
func FuzzParse(f *testing.F) {
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		f.Add([]byte(`{"cniVersion":"` + v + `","type":"meshcni","prevResult":{"cniVersion":"` + v + `","ips":[]}}`))
		f.Add([]byte(`{"cniVersion":"` + v + `","api_timeout":"1s","podLookupRetries":3}`))
	}
	f.Add([]byte(`{"cniVersion":"1.0.0","prevResult":{"ips":[{"address":"nope"}]}}`))
	f.Add([]byte(`{"cniVersion":"1.0.0","exclude_namespaces":[""]}`))
	f.Add([]byte(`{"proxy_port":-1,"proxyPort":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		e, err := Parse(data)
		if err != nil {
			if code(err) == 0 {
				t.Fatalf("not a CNI error: %v", err)
			}
			return
		}
		if e.Timeout <= 0 || e.Interval <= 0 || e.Attempts < 1 {
			t.Fatalf("accepted unusable timing: %+v", e)
		}
		if err := e.Base.Validate(); err != nil {
			t.Fatalf("accepted an entry whose capture defaults are invalid: %v", err)
		}
		b, err := json.Marshal(e.Config)
		if err != nil {
			t.Fatalf("entry does not re-marshal: %v", err)
		}
		again, err := Parse(b)
		if err != nil {
			t.Fatalf("re-marshalled entry %s does not parse: %v", b, err)
		}
		if !reflect.DeepEqual(again.Config, e.Config) {
			t.Fatalf("round trip changed the entry:\n%+v\n%+v", e.Config, again.Config)
		}
	})
}

// benchEntry is an entry as the agent writes it, with a runtime's
// prevResult: what every ADD parses.
const benchEntry = `{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"meshcni",
 "kubeconfig":"/var/run/meshcni/kubeconfig","excludeNamespaces":["kube-system","istio-system"],
 "logLevel":"info","logFile":"/var/run/meshcni/meshcni.log","logSocket":"/var/run/meshcni/log.sock",
 "lockDir":"/var/run/meshcni/locks","podCacheSocket":"/var/run/meshcni/pods.sock",
 "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/x"}],
 "ips":[{"address":"10.22.0.5/16","gateway":"10.22.0.1","interface":0}],"dns":{}}}`

// BenchmarkParse is the config's share of an ADD (docs/performance.md).
func BenchmarkParse(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse([]byte(benchEntry)); err != nil {
			b.Fatal(err)
		}
	}
}
