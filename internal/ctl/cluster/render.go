package cluster

import (
	"fmt"
	"regexp"
	"strings"

	"helm.sh/helm/v3/pkg/strvals"

	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
)

// FieldManager owns every field meshcnictl applies.
const FieldManager = "meshcnictl"

// Names the chart gives its objects; status and disable look them up.
const (
	DefaultNamespace     = chart.DefaultNamespace
	DaemonSetName        = chart.DaemonSetName
	ConfigMapName        = chart.ConfigMapName
	ConfigHashAnnotation = chart.ConfigHashAnnotation
	PartOfSelector       = chart.PartOfSelector
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// Render renders the node side of the chart in the default namespace, as
// meshcni-controller renders it, with the namespace itself: what the
// chart's tests here and test/agent check.
func Render(overrides map[string]any) (*chart.Manifest, error) {
	return RenderIn(overrides, DefaultNamespace)
}

// RenderIn is Render into namespace.
func RenderIn(overrides map[string]any, namespace string) (*chart.Manifest, error) {
	v := map[string]any{"nodeSide": true, "createNamespace": true}
	for k, val := range overrides {
		v[k] = val
	}
	return chart.Render(v, namespace, FieldManager)
}

// Platforms are the names values.yaml knows, for flag help and errors.
var Platforms = cmdutil.Platforms

// ChartValues are chart values given as flags (render's --image and
// --set, enable's --set for the controller's release). Zero values keep
// the chart's defaults.
type ChartValues struct {
	Platform          string
	ExcludeNamespaces []string // nil: the chart's list
	Image             string   // repository[:tag]
	Set               []string // Helm --set syntax, applied last
}

// Values turns the settings into chart value overrides.
func (s ChartValues) Values() (map[string]any, error) {
	v := map[string]any{}
	if s.Platform != "" {
		v["platform"] = s.Platform
	}
	if s.ExcludeNamespaces != nil {
		list := []any{}
		for _, ns := range s.ExcludeNamespaces {
			if ns = strings.TrimSpace(ns); ns != "" {
				list = append(list, ns)
			}
		}
		v["excludeNamespaces"] = list
	}
	if s.Image != "" {
		img, err := chart.ImageValues(s.Image)
		if err != nil {
			return nil, fmt.Errorf("--image: %w", err)
		}
		v["image"] = img
	}
	for _, kv := range s.Set {
		if err := strvals.ParseInto(kv, v); err != nil {
			return nil, fmt.Errorf("--set %q: %w (use key=value, e.g. --set logLevel=debug)", kv, err)
		}
	}
	return v, nil
}
