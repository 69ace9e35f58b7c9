package ctl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/strvals"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/charts"
)

// FieldManager owns every field meshcnictl applies.
const FieldManager = "meshcnictl"

// Names the chart gives its objects; status and disable look them up.
const (
	DefaultNamespace = "meshcni-system"
	DaemonSetName    = "meshcni-agent"
	ConfigMapName    = "meshcni-config"
	// ConfigHashAnnotation is on the DaemonSet's pod template and so on
	// every agent pod; equal values mean the pod runs the current settings.
	ConfigHashAnnotation = "meshcni.io/config-hash"
	// PartOfSelector selects every object of an install.
	PartOfSelector = "app.kubernetes.io/part-of=meshcni"
)

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

// Manifest is one render of the chart.
type Manifest struct {
	// Namespace is where the namespaced objects live.
	Namespace string
	// Objects in apply order (namespace first, DaemonSet last).
	Objects []*unstructured.Unstructured
	// YAML is the multi-document manifest, comments kept, in apply order.
	YAML []byte
}

// LoadChart reads the embedded chart.
func LoadChart() (*chart.Chart, error) {
	var files []*loader.BufferedFile
	err := fs.WalkDir(charts.FS, charts.Root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := fs.ReadFile(charts.FS, p)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: strings.TrimPrefix(p, charts.Root+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded chart: %w", err)
	}
	return loader.LoadFiles(files)
}

// kindOrder is the apply order; delete goes the other way.
var kindOrder = []string{"Namespace", "ResourceQuota", "ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap", "Service", "Deployment", "MutatingWebhookConfiguration", "DaemonSet"}

func kindRank(kind string) int {
	for i, k := range kindOrder {
		if k == kind {
			return i
		}
	}
	return len(kindOrder)
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// Render renders the chart with overrides, as `helm template` would, and
// decodes every object.
func Render(overrides map[string]any) (*Manifest, error) {
	chrt, err := LoadChart()
	if err != nil {
		return nil, err
	}
	vals, err := chartutil.CoalesceValues(chrt, overrides)
	if err != nil {
		return nil, fmt.Errorf("chart values: %w", err)
	}
	ns, _ := vals["namespace"].(string)
	top, err := chartutil.ToRenderValues(chrt, overrides, chartutil.ReleaseOptions{
		Name: "meshcni", Namespace: ns, Revision: 1, IsInstall: true,
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("chart values: %w", err)
	}
	top["Release"].(map[string]any)["Service"] = FieldManager
	out, err := engine.Render(chrt, top)
	if err != nil {
		return nil, fmt.Errorf("render chart: %w", err)
	}

	type doc struct {
		source string
		text   string
		obj    *unstructured.Unstructured
	}
	var docs []doc
	names := make([]string, 0, len(out))
	for name := range out {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		base := path.Base(name)
		if strings.HasPrefix(base, "_") || !strings.HasSuffix(base, ".yaml") {
			continue
		}
		for _, text := range docSep.Split(out[name], -1) {
			text = strings.TrimSpace(text)
			js, err := yaml.YAMLToJSON([]byte(text))
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if bytes.Equal(js, []byte("null")) {
				continue // only comments, or a disabled template
			}
			obj := &unstructured.Unstructured{}
			if err := json.Unmarshal(js, &obj.Object); err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if obj.GetKind() == "" || obj.GetName() == "" {
				return nil, fmt.Errorf("%s: an object without kind or name", name)
			}
			docs = append(docs, doc{source: name, text: text, obj: obj})
		}
	}
	sort.SliceStable(docs, func(i, j int) bool {
		a, b := docs[i].obj, docs[j].obj
		if ra, rb := kindRank(a.GetKind()), kindRank(b.GetKind()); ra != rb {
			return ra < rb
		}
		return a.GetName() < b.GetName()
	})
	m := &Manifest{Namespace: ns}
	var buf bytes.Buffer
	for _, d := range docs {
		fmt.Fprintf(&buf, "---\n# Source: %s\n%s\n", d.source, d.text)
		m.Objects = append(m.Objects, d.obj)
	}
	m.YAML = buf.Bytes()
	return m, nil
}

// Header starts deploy/meshcni.yaml.
const Header = `# meshcni: rendered from charts/meshcni with default values.
# Regenerate with "make manifests"; apply with
#   kubectl apply --server-side --field-manager=meshcnictl -f deploy/meshcni.yaml
# or use "meshcnictl enable", which also takes --platform and
# --exclude-namespaces.
`
