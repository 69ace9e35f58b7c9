package agent

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// envFor maps each flag to its environment variable. A flag given on the
// command line wins over the variable, which wins over the default.
var envFor = map[string]string{
	"cni-conf-dir":           "CNI_CONF_DIR",
	"cni-bin-dir":            "CNI_BIN_DIR",
	"run-dir":                "MESHCNI_RUN_DIR",
	"plugin-binary":          "MESHCNI_PLUGIN_BINARY",
	"kubeconfig":             "MESHCNI_KUBECONFIG",
	"api-server":             "MESHCNI_API_SERVER",
	"token-path":             "MESHCNI_TOKEN_PATH",
	"ca-path":                "MESHCNI_CA_PATH",
	"agent-token-path":       "MESHCNI_AGENT_TOKEN_PATH",
	"exclude-namespaces":     "MESHCNI_EXCLUDE_NAMESPACES",
	"log-level":              "MESHCNI_LOG_LEVEL",
	"keep-on-exit":           "MESHCNI_KEEP_ON_EXIT",
	"health-addr":            "MESHCNI_HEALTH_ADDR",
	"iptables-backend":       "MESHCNI_IPTABLES_BACKEND",
	"plugin-log-level":       "MESHCNI_PLUGIN_LOG_LEVEL",
	"pod-lookup-retries":     "MESHCNI_POD_LOOKUP_RETRIES",
	"pod-lookup-interval":    "MESHCNI_POD_LOOKUP_INTERVAL",
	"api-timeout":            "MESHCNI_API_TIMEOUT",
	"node-name":              "NODE_NAME",
	"repair-mode":            "MESHCNI_REPAIR_MODE",
	"startup-taint":          "MESHCNI_STARTUP_TAINT",
	"proc-dir":               "MESHCNI_PROC_DIR",
	"pod-name":               "POD_NAME",
	"pod-namespace":          "POD_NAMESPACE",
	"plugin-service-account": "MESHCNI_PLUGIN_SERVICE_ACCOUNT",
	"plugin-token-ttl":       "MESHCNI_PLUGIN_TOKEN_TTL",
}

// NewCommand is the meshcni-agent root command. Logs go to stderr as JSON.
func NewCommand(stderr io.Writer) *cobra.Command {
	o := DefaultOptions()
	cmd := &cobra.Command{
		Use:   "meshcni-agent",
		Short: "Installs meshcni into the node's CNI chain and keeps it there",
		Long: `meshcni-agent runs on every node (a DaemonSet). It copies the meshcni plug-in
into the CNI bin dir, writes the plug-in's kubeconfig from the pod's service
account token (and rewrites it when the token rotates), appends the meshcni
entry to the primary CNI config, and puts it back within a second whenever
something removes or reorders it. On SIGTERM it removes all of it again,
unless --keep-on-exit. Every flag can also be set by the environment
variable shown in its help.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), os.LookupEnv); err != nil {
				return err
			}
			log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: parseLevel(o.LogLevel)}))
			a, err := New(o, log)
			if err != nil {
				return err
			}
			return a.Run(cmd.Context())
		},
	}
	addFlags(cmd.Flags(), &o)
	return cmd
}

// addFlags binds every option to its flag, with its variable in the help.
func addFlags(f *pflag.FlagSet, o *Options) {
	f.StringVar(&o.CNIConfDir, "cni-conf-dir", o.CNIConfDir, "the node's CNI config directory")
	f.StringVar(&o.CNIBinDir, "cni-bin-dir", o.CNIBinDir, "the node's CNI plug-in directory")
	f.StringVar(&o.RunDir, "run-dir", o.RunDir, "host directory for the plug-in's kubeconfig, log socket, log file and locks")
	f.StringVar(&o.PluginBinary, "plugin-binary", o.PluginBinary, "the meshcni binary to install")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig whose server and CA the plug-in uses (default: in-cluster KUBERNETES_SERVICE_HOST/PORT)")
	f.StringVar(&o.APIServer, "api-server", "", "API server URL for the plug-in (overrides --kubeconfig and in-cluster)")
	f.StringVar(&o.TokenPath, "token-path", o.TokenPath, "service account token file the plug-in authenticates with; watched for rotation")
	f.StringVar(&o.CAPath, "ca-path", "", "CA bundle the plug-in trusts (default: --kubeconfig's CA, else "+DefaultCAPath+")")
	f.StringVar(&o.AgentTokenPath, "agent-token-path", "", "token of the agent's own API calls (default: the pod's service account token, "+DefaultTokenPath+"; outside a pod, --token-path)")
	f.StringSliceVar(&o.ExcludeNamespaces, "exclude-namespaces", o.ExcludeNamespaces, "comma-separated namespaces the plug-in never captures")
	f.StringVar(&o.LogLevel, "log-level", o.LogLevel, "agent log level: debug, info, warn, error")
	f.BoolVar(&o.KeepOnExit, "keep-on-exit", false, "on SIGTERM keep the entry, binary and kubeconfig (for upgrades)")
	f.StringVar(&o.HealthAddr, "health-addr", o.HealthAddr, "address for /healthz, /readyz and /metrics (empty: off)")
	f.StringVar(&o.IptablesBackend, "iptables-backend", "", "plug-in backend: legacy (iptables-legacy), nft (iptables-nft), nftables (native nft) or auto (default auto)")
	f.StringVar(&o.PluginLogLevel, "plugin-log-level", o.PluginLogLevel, "plug-in log level: debug, info, warn, error")
	f.IntVar(&o.PodLookupRetries, "pod-lookup-retries", 0, "plug-in pod lookup attempts, 1-120 (0: the plug-in's default)")
	f.DurationVar(&o.PodLookupInterval, "pod-lookup-interval", 0, "plug-in pause between lookups (0: the plug-in's default)")
	f.DurationVar(&o.APITimeout, "api-timeout", 0, "plug-in timeout per API request (0: the plug-in's default)")
	f.StringVar(&o.NodeName, "node-name", "", "this node's name; enables the repair controller and the startup taint (empty: off)")
	f.StringVar(&o.RepairMode, "repair-mode", o.RepairMode, "what to do with pods that started uncaptured: repair (in place), delete, label, or off")
	f.BoolVar(&o.StartupTaint, "startup-taint", o.StartupTaint, "remove the "+StartupTaint.Key+":NoSchedule taint (set at node registration) from the node once ready, and on a confirmed uninstall")
	f.StringVar(&o.ProcDir, "proc-dir", o.ProcDir, "the host's /proc (the agent runs with hostPID), where repair finds running pods")
	f.StringVar(&o.PodName, "pod-name", "", "this agent's pod; with --pod-namespace, a stop uninstalls only once its DaemonSet is gone or being deleted")
	f.StringVar(&o.PodNamespace, "pod-namespace", "", "this agent's namespace (see --pod-name)")
	f.StringVar(&o.PluginServiceAccount, "plugin-service-account", "", "mint the plug-in's token for this service account (in --pod-namespace) with TokenRequest, bound to this node, into --token-path (empty: --token-path is provided)")
	f.DurationVar(&o.PluginTokenTTL, "plugin-token-ttl", o.PluginTokenTTL, "lifetime of the minted plug-in token (at least 10m); renewed at 80%")
	f.VisitAll(func(fl *pflag.Flag) {
		if env, ok := envFor[fl.Name]; ok {
			fl.Usage += " [$" + env + "]"
		}
	})
}

// applyEnv sets every flag not given on the command line from its
// environment variable, if set.
func applyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(fl *pflag.Flag) {
		env, ok := envFor[fl.Name]
		if err != nil || !ok || fl.Changed {
			return
		}
		v, set := lookup(env)
		if !set {
			return
		}
		if fl.Value.Type() == "stringSlice" {
			// Replace the default instead of appending to it.
			if sv, ok := fl.Value.(pflag.SliceValue); ok {
				err = sv.Replace(splitList(v))
				if err != nil {
					err = fmt.Errorf("$%s=%q: %w", env, v, err)
				}
				return
			}
		}
		if e := fs.Set(fl.Name, v); e != nil {
			err = fmt.Errorf("$%s=%q: %w", env, v, e)
		}
	})
	return err
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func parseLevel(s string) slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return slog.LevelInfo
	}
	return l
}
