package agent

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/spf13/pflag"

	"github.com/meshcni/meshcni/internal/netconf"
	"github.com/meshcni/meshcni/internal/netfilter"
)

// parse runs the command's flag parsing and env lookup without running
// the agent.
func parse(t *testing.T, args []string, env map[string]string) (Options, error) {
	t.Helper()
	o := DefaultOptions()
	fs := pflag.NewFlagSet("meshcni-agent", pflag.ContinueOnError)
	addFlags(fs, &o)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	return o, applyEnv(fs, lookup)
}

func TestFlagsAndEnv(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, o Options)
	}{
		{"defaults", nil, nil, func(t *testing.T, o Options) {
			if !reflect.DeepEqual(o, DefaultOptions()) {
				t.Errorf("got %+v\nwant %+v", o, DefaultOptions())
			}
		}},
		{"env", nil, map[string]string{
			"CNI_CONF_DIR": "/host/etc/cni/net.d", "CNI_BIN_DIR": "/host/opt/cni/bin", "MESHCNI_RUN_DIR": "/host/run/meshcni",
			"MESHCNI_EXCLUDE_NAMESPACES": "kube-system, istio-system", "MESHCNI_KEEP_ON_EXIT": "true",
			"MESHCNI_POD_LOOKUP_INTERVAL": "250ms", "MESHCNI_HEALTH_ADDR": "",
		}, func(t *testing.T, o Options) {
			if o.CNIConfDir != "/host/etc/cni/net.d" || o.CNIBinDir != "/host/opt/cni/bin" || o.RunDir != "/host/run/meshcni" {
				t.Errorf("dirs: %+v", o)
			}
			if !reflect.DeepEqual(o.ExcludeNamespaces, []string{"kube-system", "istio-system"}) {
				t.Errorf("exclude = %q", o.ExcludeNamespaces)
			}
			if !o.KeepOnExit || o.PodLookupInterval != 250*time.Millisecond || o.HealthAddr != "" {
				t.Errorf("%+v", o)
			}
		}},
		{"flag beats env", []string{"--cni-conf-dir=/flag", "--exclude-namespaces=a,b"},
			map[string]string{"CNI_CONF_DIR": "/env", "MESHCNI_EXCLUDE_NAMESPACES": "c"}, func(t *testing.T, o Options) {
				if o.CNIConfDir != "/flag" || !reflect.DeepEqual(o.ExcludeNamespaces, []string{"a", "b"}) {
					t.Errorf("%+v", o)
				}
			}},
		{"empty exclude list", nil, map[string]string{"MESHCNI_EXCLUDE_NAMESPACES": ""}, func(t *testing.T, o Options) {
			if len(o.ExcludeNamespaces) != 0 {
				t.Errorf("exclude = %q", o.ExcludeNamespaces)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parse(t, tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, o)
		})
	}
	if _, err := parse(t, nil, map[string]string{"MESHCNI_KEEP_ON_EXIT": "maybe"}); err == nil || !strings.Contains(err.Error(), "MESHCNI_KEEP_ON_EXIT") {
		t.Errorf("bad env value: %v", err)
	}
}

func TestEveryFlagHasAnEnv(t *testing.T) {
	cmd := NewCommand(&bytes.Buffer{})
	for name := range envFor {
		if cmd.Flags().Lookup(name) == nil {
			t.Errorf("envFor names a missing flag %s", name)
		}
	}
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if _, ok := envFor[f.Name]; !ok {
			t.Errorf("flag --%s has no environment variable", f.Name)
		}
	})
	// docs/agent.md documents every flag and variable.
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "agent.md"))
	if err != nil {
		t.Fatal(err)
	}
	for name, env := range envFor {
		if !bytes.Contains(doc, []byte("`--"+name+"`")) || !bytes.Contains(doc, []byte("`"+env+"`")) {
			t.Errorf("docs/agent.md lacks --%s / %s", name, env)
		}
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		want string
	}{
		{"relative conf dir", func(o *Options) { o.CNIConfDir = "net.d" }, "--cni-conf-dir"},
		{"empty run dir", func(o *Options) { o.RunDir = "" }, "--run-dir must be set"},
		{"binary name", func(o *Options) { o.PluginBinary = "/opt/bin/meshcni-v2" }, `must be named "meshcni"`},
		{"empty namespace", func(o *Options) { o.ExcludeNamespaces = []string{"a", " "} }, "--exclude-namespaces"},
		{"log level", func(o *Options) { o.PluginLogLevel = "trace" }, "--plugin-log-level"},
		{"backend", func(o *Options) { o.IptablesBackend = "ebpf" }, "--iptables-backend"},
		{"retries", func(o *Options) { o.PodLookupRetries = 500 }, "--pod-lookup-retries"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			tc.mod(&o)
			if err := o.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
	o := DefaultOptions()
	if err := o.Validate(); err != nil {
		t.Errorf("defaults: %v", err)
	}
}

func TestEntryLoads(t *testing.T) {
	o := DefaultOptions()
	o.IptablesBackend, o.PodLookupRetries, o.PodLookupInterval, o.APITimeout = "nft", 3, 200*time.Millisecond, 3*time.Second
	e, err := o.Entry()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := libcni.NetworkPluginConfFromBytes(e); err != nil {
		t.Fatal(err)
	}
	// Compared through the plug-in's own parser: what ADD will read.
	got, err := netconf.Parse(e)
	if err != nil {
		t.Fatal(err)
	}
	retries := 3
	want := netconf.Config{
		Type: "meshcni", Kubeconfig: "/var/run/meshcni/kubeconfig", LogSocket: "/var/run/meshcni/log.sock",
		LogFile: "/var/run/meshcni/meshcni.log", LockDir: "/var/run/meshcni/locks",
		ExcludeNamespaces: []string{"kube-system", "istio-system"}, LogLevel: "info", IptablesBackend: "nft",
		PodLookupRetries: &retries, PodLookupInterval: "200ms", APITimeout: "3s",
	}
	if !reflect.DeepEqual(got.Config, want) {
		t.Errorf("entry = %+v\nwant    %+v", got.Config, want)
	}
	if got.Backend != netfilter.NFT || got.Attempts != 3 || got.Interval != 200*time.Millisecond || got.Timeout != 3*time.Second {
		t.Errorf("the plug-in reads %+v", got)
	}
}

// An agent whose flags exclude no namespace writes [] (none), never
// leaves the key out (the plug-in's default list).
func TestEntryExcludesNoneWhenTold(t *testing.T) {
	o := DefaultOptions()
	o.ExcludeNamespaces = nil
	e, err := o.Entry()
	if err != nil {
		t.Fatal(err)
	}
	got, err := netconf.Parse(e)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.ExcludeNamespaces) != 0 {
		t.Errorf("entry %s excludes %v", e, got.ExcludeNamespaces)
	}
}

func TestResolveAPI(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	writeFile(t, kc, `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster:
    server: https://kube.example:6443
    certificate-authority-data: `+base64.StdEncoding.EncodeToString([]byte(testCA))+`
contexts:
- name: c
  context: {cluster: c, user: u}
users:
- name: u
  user: {}
current-context: c
`)
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	inCluster := env(map[string]string{"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})

	for _, tc := range []struct {
		name       string
		o          Options
		getenv     func(string) string
		server     string
		ca, caPath string
	}{
		{"in-cluster", Options{}, inCluster, "https://[fd00::1]:443", "", DefaultCAPath},
		{"kubeconfig", Options{Kubeconfig: kc}, inCluster, "https://kube.example:6443", testCA, ""},
		{"api-server and ca-path win", Options{Kubeconfig: kc, APIServer: "https://other:443", CAPath: "/ca.pem"}, inCluster, "https://other:443", "", "/ca.pem"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveAPI(&tc.o, tc.getenv)
			if err != nil {
				t.Fatal(err)
			}
			if got.server != tc.server || string(got.ca) != tc.ca || got.caPath != tc.caPath {
				t.Errorf("got %+v", got)
			}
		})
	}
	if _, err := resolveAPI(&Options{}, env(nil)); err == nil || !strings.Contains(err.Error(), "--api-server") {
		t.Errorf("no server: %v", err)
	}
}
