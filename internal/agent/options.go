package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/meshcni/meshcni/internal/apilookup"
	"github.com/meshcni/meshcni/internal/install"
	"github.com/meshcni/meshcni/internal/netconf"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/repair"
)

// Options are the agent's settings, one per flag (see docs/agent.md).
type Options struct {
	CNIConfDir   string
	CNIBinDir    string
	RunDir       string
	PluginBinary string

	// Where the plug-in's kubeconfig points: APIServer, else Kubeconfig's
	// server, else the in-cluster KUBERNETES_SERVICE_HOST/PORT.
	Kubeconfig string
	APIServer  string
	// TokenPath is the projected service account token the plug-in's
	// kubeconfig carries; CAPath the CA it trusts (empty: the
	// kubeconfig's CA, else DefaultCAPath).
	TokenPath string
	CAPath    string
	// AgentTokenPath is the token of the agent's own API calls (its watch
	// of the node's pods, repair, the startup taint, its DaemonSet):
	// empty means the pod's own service account token, DefaultTokenPath,
	// and outside a pod, where there is none, TokenPath.
	AgentTokenPath string

	ExcludeNamespaces []string
	LogLevel          string
	KeepOnExit        bool
	HealthAddr        string

	// Plug-in settings copied into the entry; zero values are left out so
	// the plug-in's own defaults apply.
	IptablesBackend   string
	PluginLogLevel    string
	PodLookupRetries  int
	PodLookupInterval time.Duration
	APITimeout        time.Duration

	// Fight throttle: more than FightLimit rewrites of the entry within
	// FightWindow and the agent waits until the window allows one more.
	// Zero means the defaults.
	FightLimit  int
	FightWindow time.Duration
	// Resync is the longest the agent sleeps without an event; zero means
	// DefaultResync.
	Resync time.Duration

	// NodeName (from the downward API) enables the repair controller and
	// the startup taint; empty: file installation only.
	NodeName string
	// RepairMode is repair, delete, label or off.
	RepairMode string
	// StartupTaint: remove StartupTaint once ready and on a confirmed
	// uninstall; the agent never adds it.
	StartupTaint bool
	// ProcDir is the host's /proc (hostPID), where repair finds pods.
	ProcDir string
	// PodName and PodNamespace (downward API) let the agent tell an
	// upgrade (its DaemonSet remains: keep the install) from an uninstall.
	PodName      string
	PodNamespace string
	// PluginServiceAccount, in PodNamespace: the agent mints the plug-in's
	// token for it with TokenRequest, bound to this node, and writes it to
	// TokenPath; empty: TokenPath is provided (a projected volume).
	PluginServiceAccount string
	// PluginTokenTTL is the minted token's requested lifetime (at least
	// 10 minutes, the API's minimum); it is renewed at 80% of it.
	PluginTokenTTL time.Duration
}

// Defaults of the flags and of the unexported knobs.
const (
	DefaultConfDir      = "/etc/cni/net.d"
	DefaultBinDir       = "/opt/cni/bin"
	DefaultRunDir       = "/var/run/meshcni"
	DefaultPluginBinary = "/opt/meshcni/bin/meshcni"
	DefaultTokenPath    = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultCAPath       = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
	DefaultHealthAddr   = ":8000"

	DefaultPluginTokenTTL = time.Hour

	DefaultFightLimit  = 10
	DefaultFightWindow = 30 * time.Second
	DefaultResync      = time.Minute
)

// DefaultOptions are the flag defaults.
func DefaultOptions() Options {
	return Options{
		CNIConfDir:        DefaultConfDir,
		CNIBinDir:         DefaultBinDir,
		RunDir:            DefaultRunDir,
		PluginBinary:      DefaultPluginBinary,
		TokenPath:         DefaultTokenPath,
		ExcludeNamespaces: netconf.DefaultExcludeNamespaces(),
		LogLevel:          "info",
		HealthAddr:        DefaultHealthAddr,
		PluginLogLevel:    "info",
		RepairMode:        string(repair.InPlace),
		StartupTaint:      true,
		ProcDir:           "/proc",
		PluginTokenTTL:    DefaultPluginTokenTTL,
	}
}

// agentTokenPath resolves AgentTokenPath.
func (o *Options) agentTokenPath() string {
	if o.AgentTokenPath != "" {
		return o.AgentTokenPath
	}
	if _, err := os.Stat(DefaultTokenPath); err == nil {
		return DefaultTokenPath
	}
	return o.TokenPath
}

// Paths under the run dir.
func (o *Options) KubeconfigPath() string { return filepath.Join(o.RunDir, "kubeconfig") }
func (o *Options) SocketPath() string     { return filepath.Join(o.RunDir, "log.sock") }
func (o *Options) LogFilePath() string    { return filepath.Join(o.RunDir, "meshcni.log") }
func (o *Options) LockDir() string        { return filepath.Join(o.RunDir, "locks") }

// InstalledBinary is where the plug-in lands in the CNI bin dir.
func (o *Options) InstalledBinary() string {
	return filepath.Join(o.CNIBinDir, filepath.Base(o.PluginBinary))
}

// HelperBinary is the plug-in's API lookup helper, beside --plugin-binary
// (internal/apilookup); InstalledHelper is where it lands, beside the
// installed plug-in, where the plug-in looks for it.
func (o *Options) HelperBinary() string {
	return filepath.Join(filepath.Dir(o.PluginBinary), apilookup.HelperName)
}

func (o *Options) InstalledHelper() string {
	return filepath.Join(o.CNIBinDir, apilookup.HelperName)
}

// Validate rejects settings that would break every pod on the node, and
// names the flag to fix.
func (o *Options) Validate() error {
	var errs []error
	for _, d := range []struct{ flag, val string }{
		{"--cni-conf-dir", o.CNIConfDir}, {"--cni-bin-dir", o.CNIBinDir}, {"--run-dir", o.RunDir},
		{"--plugin-binary", o.PluginBinary}, {"--token-path", o.TokenPath},
	} {
		if d.val == "" {
			errs = append(errs, fmt.Errorf("%s must be set", d.flag))
		} else if !filepath.IsAbs(d.val) {
			errs = append(errs, fmt.Errorf("%s %q: must be an absolute path", d.flag, d.val))
		}
	}
	if o.AgentTokenPath != "" && !filepath.IsAbs(o.AgentTokenPath) {
		errs = append(errs, fmt.Errorf("--agent-token-path %q: must be an absolute path", o.AgentTokenPath))
	}
	if filepath.Base(o.PluginBinary) != install.PluginType {
		errs = append(errs, fmt.Errorf("--plugin-binary %q: the file must be named %q, the entry's type", o.PluginBinary, install.PluginType))
	}
	for _, ns := range o.ExcludeNamespaces {
		if strings.TrimSpace(ns) == "" {
			errs = append(errs, errors.New("--exclude-namespaces holds an empty name"))
		}
	}
	for _, l := range []struct{ flag, val string }{{"--log-level", o.LogLevel}, {"--plugin-log-level", o.PluginLogLevel}} {
		switch strings.ToLower(l.val) {
		case "", "debug", "info", "warn", "error":
		default:
			errs = append(errs, fmt.Errorf("%s %q: must be debug, info, warn or error", l.flag, l.val))
		}
	}
	if _, err := netfilter.ParseBackend(o.IptablesBackend); err != nil {
		errs = append(errs, fmt.Errorf("--iptables-backend: %w", err))
	}
	if o.PodLookupRetries < 0 || o.PodLookupRetries > 120 {
		errs = append(errs, fmt.Errorf("--pod-lookup-retries %d: must be 1-120 (0: the plug-in's default)", o.PodLookupRetries))
	}
	if o.RepairMode != RepairOff {
		if _, err := repair.ParseMode(o.RepairMode); err != nil {
			errs = append(errs, fmt.Errorf("--repair-mode: %w (or off)", err))
		}
	}
	if o.PodLookupInterval < 0 || o.APITimeout < 0 {
		errs = append(errs, errors.New("--pod-lookup-interval and --api-timeout must not be negative"))
	}
	if o.PluginServiceAccount != "" {
		if o.NodeName == "" || o.PodNamespace == "" {
			errs = append(errs, errors.New("--plugin-service-account needs --node-name (the token is bound to the node) and --pod-namespace (the service account's)"))
		}
		if o.PluginTokenTTL < 10*time.Minute {
			errs = append(errs, fmt.Errorf("--plugin-token-ttl %v: must be at least 10m (the API's minimum)", o.PluginTokenTTL))
		}
	}
	return errors.Join(errs...)
}

// Entry is the meshcni entry the agent keeps last in the primary conflist:
// netconf.Config encoded, zero settings left out so that the plug-in's
// defaults apply, and parsed back as the plug-in will parse it, so that
// an entry the plug-in would refuse stops the agent at startup.
func (o *Options) Entry() (json.RawMessage, error) {
	c := netconf.Config{
		Type:              install.PluginType,
		Kubeconfig:        o.KubeconfigPath(),
		LogSocket:         o.SocketPath(),
		LogFile:           o.LogFilePath(),
		LockDir:           o.LockDir(),
		ExcludeNamespaces: o.ExcludeNamespaces,
		LogLevel:          strings.ToLower(o.PluginLogLevel),
		IptablesBackend:   o.IptablesBackend,
	}
	if c.ExcludeNamespaces == nil {
		c.ExcludeNamespaces = []string{} // none, not the plug-in's default
	}
	if o.PodLookupRetries > 0 {
		c.PodLookupRetries = &o.PodLookupRetries
	}
	if o.PodLookupInterval > 0 {
		c.PodLookupInterval = o.PodLookupInterval.String()
	}
	if o.APITimeout > 0 {
		c.APITimeout = o.APITimeout.String()
	}
	if o.NodeName != "" {
		c.PodCacheSocket = o.PodCacheSocketPath()
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("build meshcni entry: %w", err)
	}
	if _, err := netconf.Parse(b); err != nil {
		return nil, fmt.Errorf("the meshcni entry the flags make: %w", err)
	}
	return b, nil
}
