package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podspec"
	"github.com/meshcni/meshcni/internal/trust"
)

// Config is meshcni's entry in the conflist. Keys are flat, snake_case,
// documented in the README.
type Config struct {
	types.NetConf

	Kubeconfig        string   `json:"kubeconfig"`
	ExcludeNamespaces []string `json:"exclude_namespaces"`
	LogLevel          string   `json:"log_level"`
	// LogFile receives the plug-in's log when the agent's socket is absent.
	LogFile string `json:"log_file"`
	// LogSocket is the agent's Unix socket for log lines and ADD results.
	LogSocket string `json:"log_socket"`

	APITimeout        string `json:"api_timeout"`
	PodLookupRetries  *int   `json:"pod_lookup_retries"`
	PodLookupInterval string `json:"pod_lookup_interval"`
	// PodCacheSocket is the agent's Unix socket serving its watch of the
	// node's pods; asked before the API.
	PodCacheSocket string `json:"pod_cache_socket"`

	IptablesBackend string `json:"iptables_backend"`
	// LockDir holds the per-netns xtables lock files; default
	// defaultLockDir. It must be a directory only root can change
	// (checkLockDir).
	LockDir string `json:"lock_dir"`

	// Capture defaults for every pod; annotations override per pod.
	ProxyPort          *uint16 `json:"proxy_port"`
	InboundCapturePort *uint16 `json:"inbound_capture_port"`
	InboundTunnelPort  *uint16 `json:"inbound_tunnel_port"`
	ProxyUID           *uint32 `json:"proxy_uid"`
	ProxyGID           *uint32 `json:"proxy_gid"`

	// Parsed forms, filled by parseConfig.
	apiTimeout  time.Duration
	lookupRetry time.Duration
	lookupTries int
	backend     netfilter.Backend
	lockDir     string
	captureBase capture.Spec
	// judge is the pod verdict of this config: its base and exclusions.
	judge podspec.Judge
}

// Supported lists the CNI versions meshcni speaks.
var Supported = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

const (
	defaultAPITimeout     = 5 * time.Second
	defaultLookupRetries  = 10
	defaultLookupInterval = 500 * time.Millisecond
	// podCacheTimeout bounds the question to the agent's pod cache; past
	// it the plug-in asks the API. The agent waits up to
	// podcache.DefaultWait for a pod its watch has not shown yet. It is
	// generous because what makes the answer slow is a CPU-starved node:
	// with 200 ms, 100 ADDs at once on 2 cores sent a third of the pods
	// to the API (TLS handshakes and GETs) at the worst moment. A hung
	// agent costs each ADD this much once more before the API answers.
	podCacheTimeout = time.Second
	// defaultLockDir is under the agent's default run dir, which the
	// agent keeps root-owned and closed to others. It was under the
	// temp dir, which anyone can write: a user could make the directory
	// first and then hold a pod's lock (its ADD failed after 20 s) or
	// have root create files where they chose.
	defaultLockDir = "/var/run/meshcni/locks"
)

// configError is a CNI error 7 naming what to fix.
func configError(format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "meshcni: invalid config: "+fmt.Sprintf(format, a...), "")
}

// parseConfig decodes and checks everything before any side effect.
func parseConfig(stdin []byte) (*Config, error) {
	conf := &Config{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return nil, configError("field %q: got JSON %s, want %s", te.Field, te.Value, te.Type)
		}
		return nil, types.NewError(types.ErrDecodingFailure, "meshcni: config is not valid JSON", err.Error())
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "meshcni: cannot parse prevResult", err.Error())
	}

	var err error
	if conf.apiTimeout, err = duration("api_timeout", conf.APITimeout, defaultAPITimeout); err != nil {
		return nil, err
	}
	if conf.lookupRetry, err = duration("pod_lookup_interval", conf.PodLookupInterval, defaultLookupInterval); err != nil {
		return nil, err
	}
	conf.lookupTries = defaultLookupRetries
	if conf.PodLookupRetries != nil {
		if *conf.PodLookupRetries < 1 || *conf.PodLookupRetries > 120 {
			return nil, configError("pod_lookup_retries %d: must be 1-120", *conf.PodLookupRetries)
		}
		conf.lookupTries = *conf.PodLookupRetries
	}
	if conf.backend, err = netfilter.ParseBackend(conf.IptablesBackend); err != nil {
		return nil, configError("iptables_backend: %v", err)
	}
	for _, p := range []struct{ key, path string }{
		{"pod_cache_socket", conf.PodCacheSocket}, {"log_socket", conf.LogSocket}, {"lock_dir", conf.LockDir},
	} {
		if p.path != "" && !filepath.IsAbs(p.path) {
			return nil, configError("%s %q: must be an absolute path", p.key, p.path)
		}
	}
	conf.lockDir = conf.LockDir
	if conf.lockDir == "" {
		conf.lockDir = defaultLockDir
	}
	switch strings.ToLower(conf.LogLevel) {
	case "", "debug", "info", "warn", "error":
	default:
		return nil, configError("log_level %q: must be debug, info, warn or error", conf.LogLevel)
	}

	for _, ns := range conf.ExcludeNamespaces {
		if strings.TrimSpace(ns) == "" {
			return nil, configError("exclude_namespaces holds an empty name")
		}
	}

	base := capture.Default()
	for _, p := range []struct {
		name string
		src  *uint16
		dst  *uint16
	}{
		{"proxy_port", conf.ProxyPort, &base.ProxyPort},
		{"inbound_capture_port", conf.InboundCapturePort, &base.InboundCapturePort},
		{"inbound_tunnel_port", conf.InboundTunnelPort, &base.InboundTunnelPort},
	} {
		if p.src == nil {
			continue
		}
		if *p.src == 0 {
			return nil, configError("%s: must be 1-65535", p.name)
		}
		*p.dst = *p.src
	}
	if conf.ProxyUID != nil {
		base.ProxyUIDs = []uint32{*conf.ProxyUID}
		base.ProxyGIDs = []uint32{*conf.ProxyUID}
	}
	if conf.ProxyGID != nil {
		base.ProxyGIDs = []uint32{*conf.ProxyGID}
	}
	conf.captureBase = base
	conf.judge = podspec.NewJudge(base, conf.ExcludeNamespaces)
	return conf, nil
}

// checkLockDir refuses a lock dir others could change: root creates and
// removes lock files there, and whoever can write it can hold any pod's
// lock. A dir that does not exist yet is made by root (0700) under its
// nearest existing ancestor, which must then be as closed itself.
func checkLockDir(dir string) error {
	existing := dir
	for {
		if _, err := os.Lstat(existing); err == nil || !errors.Is(err, fs.ErrNotExist) {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if err := trust.Dir(existing); err != nil {
		return configError("lock_dir %q: %v; use a directory only root can write (the agent keeps <run-dir>/locks so)", dir, err)
	}
	return nil
}

func duration(field, s string, def time.Duration) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, configError("%s %q: must be a positive duration like 5s", field, s)
	}
	return d, nil
}

// k8sArgs are the pod identity the runtime passes in CNI_ARGS.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive,stylecheck // CNI_ARGS key
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive,stylecheck // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive,stylecheck // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive,stylecheck // CNI_ARGS key
}

func parseArgs(s string) (*k8sArgs, error) {
	a := &k8sArgs{}
	a.IgnoreUnknown = true
	if err := types.LoadArgs(s, a); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "meshcni: cannot parse CNI_ARGS", err.Error())
	}
	// Only a pod with both names is looked up (the other is "not a
	// Kubernetes pod"); check them before any lookup. A name the API
	// server could never have accepted used to reach it, come back as an
	// error, be retried and reported as "cannot reach the Kubernetes API".
	ns, name := string(a.K8S_POD_NAMESPACE), string(a.K8S_POD_NAME)
	if ns != "" && name != "" {
		if !isDNS1123Label(ns) {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(
				"meshcni: CNI_ARGS K8S_POD_NAMESPACE %s is not a Kubernetes namespace name "+
					"(at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit)", quoteArg(ns)), "")
		}
		if !isDNS1123Subdomain(name) {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(
				"meshcni: CNI_ARGS K8S_POD_NAME %s is not a Kubernetes pod name "+
					"(at most 253 characters: '.'-separated parts of lower-case letters, digits and '-', each starting and ending with a letter or digit)", quoteArg(name)), "")
		}
	}
	return a, nil
}

// The names the API server accepts, as k8s.io/apimachinery's
// validation.IsDNS1123Label and IsDNS1123Subdomain define them (a
// namespace is a label, a pod's name a subdomain). Written out because
// the plug-in links no k8s.io package (each costs every exec its init);
// TestNameRulesMatchApimachinery compares the two.
const (
	dns1123LabelMax     = 63
	dns1123SubdomainMax = 253
)

func isDNS1123Label(s string) bool {
	if len(s) == 0 || len(s) > dns1123LabelMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

func isDNS1123Subdomain(s string) bool {
	if len(s) == 0 || len(s) > dns1123SubdomainMax {
		return false
	}
	for part := range strings.SplitSeq(s, ".") {
		// Each part is a label, without the label's own length limit.
		if len(part) == 0 || part[0] == '-' || part[len(part)-1] == '-' {
			return false
		}
		for i := 0; i < len(part); i++ {
			if c := part[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// maxQuotedArg bounds how much of a rejected CNI_ARGS value an error
// repeats: the runtime copies the message into the pod's events.
const maxQuotedArg = 80

// quoteArg is %q, clipped to maxQuotedArg bytes of s with its real length.
func quoteArg(s string) string {
	if len(s) <= maxQuotedArg {
		return strconv.Quote(s)
	}
	cut := maxQuotedArg
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("...(%d bytes)", len(s))
}
