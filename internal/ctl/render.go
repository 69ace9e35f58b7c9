package ctl

import (
	"fmt"
	"regexp"
	"strings"

	"helm.sh/helm/v3/pkg/strvals"

	"github.com/meshcni/meshcni/internal/chart"
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

// Render renders the chart as meshcnictl applies it.
func Render(overrides map[string]any) (*chart.Manifest, error) {
	return chart.Render(overrides, FieldManager)
}

// Platforms are the names values.yaml knows, for flag help and errors.
var Platforms = []string{"default", "gke", "k3s", "openshift"}

// Settings are the chart values meshcnictl exposes as flags. Zero values
// keep the chart's defaults.
type Settings struct {
	Platform          string
	ExcludeNamespaces []string // nil: the chart's list
	Image             string   // repository[:tag]
	Set               []string // Helm --set syntax, applied last
}

// Values turns the settings into chart value overrides.
func (s Settings) Values() (map[string]any, error) {
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
		repo, tag, err := splitImage(s.Image)
		if err != nil {
			return nil, err
		}
		v["image"] = map[string]any{"repository": repo, "tag": tag}
	}
	for _, kv := range s.Set {
		if err := strvals.ParseInto(kv, v); err != nil {
			return nil, fmt.Errorf("--set %q: %w (use key=value, e.g. --set logLevel=debug)", kv, err)
		}
	}
	return v, nil
}

// splitImage splits "registry:5000/repo:tag" into repository and tag; a
// digest is refused, since the chart composes repository:tag.
func splitImage(ref string) (repo, tag string, err error) {
	if strings.Contains(ref, "@") {
		return "", "", fmt.Errorf("--image %q: give repository:tag, not a digest", ref)
	}
	repo = ref
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}
	if repo == "" {
		return "", "", fmt.Errorf("--image %q: empty repository", ref)
	}
	return repo, tag, nil
}

// Header starts deploy/meshcni.yaml.
const Header = `# meshcni: rendered from charts/meshcni with default values.
# Regenerate with "make manifests"; apply with
#   kubectl apply --server-side --field-manager=meshcnictl -f deploy/meshcni.yaml
# or use "meshcnictl enable", which also takes --platform and
# --exclude-namespaces.
`
