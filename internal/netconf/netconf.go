// Package netconf is meshcni's entry in a CNI conflist: the one type the
// agent encodes and the plug-in, repair and meshcnictl decode, with its
// keys, its defaults and its checks, so that a setting has one spelling
// and one default from the chart's values to the conflist (docs/config.md).
// It links only what the plug-in links anyway: no HTTP, TLS or YAML.
package netconf

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podspec"
)

// Config is meshcni's entry as JSON. Its keys are the chart's spelling
// (camelCase, as CNI's own cniVersion and prevResult); the snake_case keys
// that earlier agents wrote are read as aliases (Aliases). Zero values are
// left out, so that the defaults below apply.
type Config struct {
	CNIVersion string `json:"cniVersion,omitempty"`
	Name       string `json:"name,omitempty"`
	Type       string `json:"type"`

	// Kubeconfig is the plug-in's kubeconfig, written by the agent.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// ExcludeNamespaces are never captured, decided before any API call.
	// Absent or null: DefaultExcludeNamespaces; [] excludes none.
	ExcludeNamespaces []string `json:"excludeNamespaces"`
	LogLevel          string   `json:"logLevel,omitempty"`
	// LogFile receives the plug-in's log when the agent's socket is absent.
	LogFile string `json:"logFile,omitempty"`
	// LogSocket is the agent's Unix socket for log lines and ADD results.
	LogSocket string `json:"logSocket,omitempty"`
	// PodCacheSocket is the agent's Unix socket serving its watch of the
	// node's pods; asked before the API.
	PodCacheSocket string `json:"podCacheSocket,omitempty"`

	APITimeout        string `json:"apiTimeout,omitempty"`
	PodLookupRetries  *int   `json:"podLookupRetries,omitempty"`
	PodLookupInterval string `json:"podLookupInterval,omitempty"`

	IptablesBackend string `json:"iptablesBackend,omitempty"`
	// LockDir holds the per-netns lock files; DefaultLockDir if empty.
	LockDir string `json:"lockDir,omitempty"`

	// Capture defaults for every pod; annotations override per pod.
	ProxyPort          *uint16 `json:"proxyPort,omitempty"`
	InboundCapturePort *uint16 `json:"inboundCapturePort,omitempty"`
	InboundTunnelPort  *uint16 `json:"inboundTunnelPort,omitempty"`
	ProxyUID           *uint32 `json:"proxyUID,omitempty"`
	ProxyGID           *uint32 `json:"proxyGID,omitempty"`

	// Keys the CNI spec and runtimes put in every plug-in's config;
	// meshcni reads prevResult and passes the others by.
	Capabilities  map[string]bool `json:"capabilities,omitempty"`
	RuntimeConfig json.RawMessage `json:"runtimeConfig,omitempty"`
	Args          json.RawMessage `json:"args,omitempty"`
	IPAM          json.RawMessage `json:"ipam,omitempty"`
	DNS           json.RawMessage `json:"dns,omitempty"`
	PrevResult    map[string]any  `json:"prevResult,omitempty"`
}

// Defaults of the keys that are left out.
const (
	DefaultAPITimeout     = 5 * time.Second
	DefaultLookupRetries  = 10
	DefaultLookupInterval = 500 * time.Millisecond
	// DefaultLockDir is under the agent's default run dir, which the
	// agent keeps root-owned and closed to others: a lock dir anyone can
	// write lets them hold a pod's lock.
	DefaultLockDir = "/var/run/meshcni/locks"
)

// DefaultExcludeNamespaces is the one default of the exclusion list: the
// plug-in's when the key is absent, the agent's flag's, and the chart's
// excludeNamespaces (TestChartDefaultsMatch).
func DefaultExcludeNamespaces() []string { return []string{"kube-system", "istio-system"} }

// Aliases are the keys of earlier entries, snake_case as Istio's: an
// installed conflist written by an earlier agent, or by hand, may still
// hold them. Each reads as its new key; both in one entry is an error.
var Aliases = map[string]string{
	"exclude_namespaces":   "excludeNamespaces",
	"log_level":            "logLevel",
	"log_file":             "logFile",
	"log_socket":           "logSocket",
	"pod_cache_socket":     "podCacheSocket",
	"api_timeout":          "apiTimeout",
	"pod_lookup_retries":   "podLookupRetries",
	"pod_lookup_interval":  "podLookupInterval",
	"iptables_backend":     "iptablesBackend",
	"lock_dir":             "lockDir",
	"proxy_port":           "proxyPort",
	"inbound_capture_port": "inboundCapturePort",
	"inbound_tunnel_port":  "inboundTunnelPort",
	"proxy_uid":            "proxyUID",
	"proxy_gid":            "proxyGID",
}

// keys are Config's JSON keys and their fields' indexes, read from its
// tags so that they cannot drift from the type.
var keys = func() map[string]int {
	k := map[string]int{}
	t := reflect.TypeFor[Config]()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		k[name] = i
	}
	return k
}()

// Entry is a Config parsed and checked, with what it decides.
type Entry struct {
	Config
	// NetConf carries the CNI version and the parsed prevResult.
	NetConf types.NetConf
	// Backend is IptablesBackend parsed; Auto when left out.
	Backend netfilter.Backend
	// Locks is LockDir, or DefaultLockDir.
	Locks string
	// Lookup bounds: per request, attempts, and the pause between them.
	Timeout  time.Duration
	Attempts int
	Interval time.Duration
	// Base is the capture spec every pod starts from.
	Base capture.Spec
	// Judge decides about pods with this entry's base and exclusions,
	// exactly as ADD does.
	Judge podspec.Judge

	// written maps a key as Config names it to the key as the entry
	// wrote it (an alias, say), so that errors name what is there.
	written map[string]string
}

// invalid is a CNI error 7 naming what to fix.
func invalid(format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "meshcni: invalid config: "+fmt.Sprintf(format, a...), "")
}

// Parse decodes and checks an entry (or a plug-in's whole stdin) before
// any side effect. Its errors are *types.Error: 6 for what is not JSON,
// 7 naming the key to fix, unknown keys included.
func Parse(data []byte) (*Entry, error) {
	conf, written, err := decode(data)
	if err != nil {
		return nil, err
	}
	e := &Entry{Config: *conf, written: written,
		NetConf: types.NetConf{CNIVersion: conf.CNIVersion, Name: conf.Name, Type: conf.Type, RawPrevResult: conf.PrevResult}}
	if err := version.ParsePrevResult(&e.NetConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "meshcni: cannot parse prevResult", err.Error())
	}
	if err := e.check(); err != nil {
		return nil, err
	}
	return e, nil
}

// decode reads data into a Config: keys are renamed from their aliases,
// and any key Config does not know is an error that names it. written
// maps each key as Config names it to the key as data wrote it.
func decode(data []byte) (*Config, map[string]string, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil || raw == nil {
		details := "not a JSON object"
		if err != nil {
			details = err.Error()
		}
		return nil, nil, types.NewError(types.ErrDecodingFailure, "meshcni: config is not valid JSON", details)
	}
	written := map[string]string{} // key as Config names it -> as written
	var unknown []string
	for k := range raw {
		key := k
		if to, ok := Aliases[k]; ok {
			key = to
		}
		if _, ok := keys[key]; !ok {
			unknown = append(unknown, k)
			continue
		}
		if other, twice := written[key]; twice {
			a, b := min(k, other), max(k, other)
			return nil, nil, invalid("keys %q and %q are one setting: keep %q", a, b, key)
		}
		written[key] = k
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, nil, invalid("unknown key(s) %s: meshcni's keys are listed in docs/config.md", quoteAll(unknown))
	}
	// Each value straight into its field: no second pass over the JSON
	// (an ADD parses its config once, on a path where every allocation
	// shows; docs/performance.md).
	conf := &Config{}
	v := reflect.ValueOf(conf).Elem()
	for key, k := range written {
		if err := json.Unmarshal(raw[k], v.Field(keys[key]).Addr().Interface()); err != nil {
			var te *json.UnmarshalTypeError
			if errors.As(err, &te) {
				return nil, nil, invalid("field %q: got JSON %s, want %s", k, te.Value, te.Type)
			}
			return nil, nil, types.NewError(types.ErrDecodingFailure, "meshcni: config is not valid JSON", err.Error())
		}
	}
	return conf, written, nil
}

func quoteAll(s []string) string {
	q := make([]string, len(s))
	for i, k := range s {
		q[i] = fmt.Sprintf("%q", k)
	}
	return strings.Join(q, ", ")
}

// check fills e's parsed forms from its Config, naming the key of the
// first bad value.
func (e *Entry) check() error {
	var err error
	if e.Timeout, err = duration(e.key("apiTimeout"), e.APITimeout, DefaultAPITimeout); err != nil {
		return err
	}
	if e.Interval, err = duration(e.key("podLookupInterval"), e.PodLookupInterval, DefaultLookupInterval); err != nil {
		return err
	}
	e.Attempts = DefaultLookupRetries
	if r := e.PodLookupRetries; r != nil {
		if *r < 1 || *r > 120 {
			return invalid("%s %d: must be 1-120", e.key("podLookupRetries"), *r)
		}
		e.Attempts = *r
	}
	if e.Backend, err = netfilter.ParseBackend(e.IptablesBackend); err != nil {
		return invalid("%s: %v", e.key("iptablesBackend"), err)
	}
	for _, p := range []struct{ key, path string }{
		{"podCacheSocket", e.PodCacheSocket}, {"logSocket", e.LogSocket}, {"lockDir", e.LockDir},
	} {
		if p.path != "" && !filepath.IsAbs(p.path) {
			return invalid("%s %q: must be an absolute path", e.key(p.key), p.path)
		}
	}
	e.Locks = e.LockDir
	if e.Locks == "" {
		e.Locks = DefaultLockDir
	}
	switch strings.ToLower(e.LogLevel) {
	case "", "debug", "info", "warn", "error":
	default:
		return invalid("%s %q: must be debug, info, warn or error", e.key("logLevel"), e.LogLevel)
	}
	if e.ExcludeNamespaces == nil {
		e.ExcludeNamespaces = DefaultExcludeNamespaces()
	}
	for _, ns := range e.ExcludeNamespaces {
		if strings.TrimSpace(ns) == "" {
			return invalid("%s holds an empty name", e.key("excludeNamespaces"))
		}
	}

	base := capture.Default()
	for _, p := range []struct {
		key string
		src *uint16
		dst *uint16
	}{
		{"proxyPort", e.ProxyPort, &base.ProxyPort},
		{"inboundCapturePort", e.InboundCapturePort, &base.InboundCapturePort},
		{"inboundTunnelPort", e.InboundTunnelPort, &base.InboundTunnelPort},
	} {
		if p.src == nil {
			continue
		}
		if *p.src == 0 {
			return invalid("%s: must be 1-65535", e.key(p.key))
		}
		*p.dst = *p.src
	}
	if e.ProxyUID != nil {
		base.ProxyUIDs = []uint32{*e.ProxyUID}
		base.ProxyGIDs = []uint32{*e.ProxyUID}
	}
	if e.ProxyGID != nil {
		base.ProxyGIDs = []uint32{*e.ProxyGID}
	}
	e.Base = base
	e.Judge = podspec.NewJudge(base, e.ExcludeNamespaces)
	return nil
}

// key is k as the entry wrote it.
func (e *Entry) key(k string) string {
	if w, ok := e.written[k]; ok {
		return w
	}
	return k
}

func duration(key, s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, invalid("%s %q: must be a positive duration like 5s", key, s)
	}
	return d, nil
}
