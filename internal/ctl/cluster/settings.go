package cluster

import (
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
)

// Settings are the MeshCNI spec fields enable takes as flags. Only the
// flags a user gives are written (Given): a setting made in the console or
// with kubectl, or by an earlier enable, stays as it is.
type Settings struct {
	ExcludeNamespaces []string
	Backend           string
	RepairMode        string
	LogLevel          string
	PluginLogLevel    string
	KeepOnExit        bool
	Image             string
	Platform          string

	// Given holds the names of the flags the user set.
	Given map[string]bool
}

// settingFlags maps each flag to its spec field, in the spec's order.
var settingFlags = []struct{ flag, field string }{
	{"exclude-namespaces", "excludeNamespaces"},
	{"backend", "iptablesBackend"},
	{"repair-mode", "repairMode"},
	{"log-level", "logLevel"},
	{"plugin-log-level", "pluginLogLevel"},
	{"keep-on-exit", "keepOnExit"},
	{"image", "image"},
	{"platform", "platform"},
}

// The values the CRD's schema admits, for errors that list them.
var (
	Backends    = []string{"", "iptables-legacy", "iptables-nft", "nftables", "legacy", "nft"}
	RepairModes = []string{"repair", "delete", "label", "off"}
	LogLevels   = []string{"debug", "info", "warn", "error"}
)

func addSettingsFlags(fs *pflag.FlagSet, s *Settings) {
	fs.StringSliceVar(&s.ExcludeNamespaces, "exclude-namespaces", nil, "namespaces whose pods are never captured (default kube-system,istio-system; the release namespace is always added; \"\" for none else)")
	fs.StringVar(&s.Backend, "backend", "", "the plug-in's backend: iptables-legacy, iptables-nft, nftables, or \"\" for auto")
	fs.StringVar(&s.RepairMode, "repair-mode", "", "what an agent does with a pod that started uncaptured: "+strings.Join(RepairModes, ", ")+" (default repair)")
	fs.StringVar(&s.LogLevel, "log-level", "", "the agents' log level: "+strings.Join(LogLevels, ", ")+" (default info)")
	fs.StringVar(&s.PluginLogLevel, "plugin-log-level", "", "the plug-in's log level: "+strings.Join(LogLevels, ", ")+" (default info)")
	fs.BoolVar(&s.KeepOnExit, "keep-on-exit", false, "leave the plug-in installed when an agent stops")
	fs.StringVar(&s.Image, "image", "", "agent image, repository:tag or repository@sha256:digest (default: the controller's own)")
	fs.StringVar(&s.Platform, "platform", "", "node layout: "+strings.Join(cmdutil.Platforms, ", ")+" (default default)")
}

// given records which setting flags fs saw.
func (s *Settings) given(fs *pflag.FlagSet) {
	s.Given = map[string]bool{}
	for _, f := range settingFlags {
		if fs.Changed(f.flag) {
			s.Given[f.flag] = true
		}
	}
}

// Validate checks the given flags against what the CRD admits, with
// messages that list the choices. Pure.
func (s *Settings) Validate() error {
	oneOf := func(flag, v string, choices []string) error {
		if s.Given[flag] && !slices.Contains(choices, v) {
			return fmt.Errorf("--%s %q: must be one of %s", flag, v, strings.Join(quoted(choices), ", "))
		}
		return nil
	}
	for _, err := range []error{
		oneOf("backend", s.Backend, Backends),
		oneOf("repair-mode", s.RepairMode, RepairModes),
		oneOf("log-level", s.LogLevel, LogLevels),
		oneOf("plugin-log-level", s.PluginLogLevel, LogLevels),
		oneOf("platform", s.Platform, cmdutil.Platforms),
	} {
		if err != nil {
			return err
		}
	}
	for _, ns := range s.ExcludeNamespaces {
		if ns = strings.TrimSpace(ns); ns != "" && !dnsLabel.MatchString(ns) {
			return fmt.Errorf("--exclude-namespaces: %q is not a namespace name (lower-case letters, digits and '-')", ns)
		}
	}
	if s.Given["image"] && s.Image != "" {
		if _, err := chart.ImageValues(s.Image); err != nil {
			return fmt.Errorf("--image: %w", err)
		}
	}
	return nil
}

func quoted(l []string) []string {
	out := make([]string, len(l))
	for i, v := range l {
		out[i] = v
		if v == "" {
			out[i] = `""`
		}
	}
	return out
}

// Spec is the part of the MeshCNI spec the user gave, with enabled. Pure.
func (s *Settings) Spec(enabled bool) map[string]any {
	spec := map[string]any{"enabled": enabled}
	for _, f := range settingFlags {
		if !s.Given[f.flag] {
			continue
		}
		switch f.flag {
		case "exclude-namespaces":
			list := []any{}
			for _, ns := range s.ExcludeNamespaces {
				if ns = strings.TrimSpace(ns); ns != "" && !slices.Contains(list, any(ns)) {
					list = append(list, ns)
				}
			}
			spec[f.field] = list
		case "backend":
			spec[f.field] = s.Backend
		case "repair-mode":
			spec[f.field] = s.RepairMode
		case "log-level":
			spec[f.field] = s.LogLevel
		case "plugin-log-level":
			spec[f.field] = s.PluginLogLevel
		case "keep-on-exit":
			spec[f.field] = s.KeepOnExit
		case "image":
			spec[f.field] = s.Image
		case "platform":
			spec[f.field] = s.Platform
		}
	}
	return spec
}
