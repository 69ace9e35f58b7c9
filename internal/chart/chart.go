// Package chart renders the embedded meshcni Helm chart with Helm's own
// engine, for meshcnictl (which applies all of it) and meshcni-controller
// (which applies the node side: the agent and what it needs).
package chart

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"sort"
	"strings"

	helmchart "helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/charts"
)

// Names the chart gives its objects.
const (
	DefaultNamespace = "meshcni-system"
	DaemonSetName    = "meshcni-agent"
	ConfigMapName    = "meshcni-config"
	// ConfigHashAnnotation is on the DaemonSet's pod template and so on
	// every agent pod; equal values mean the pod runs the current settings.
	ConfigHashAnnotation = "meshcni.io/config-hash"
	// PartOfSelector selects every object of an install.
	PartOfSelector = "app.kubernetes.io/part-of=meshcni"
	// AgentSelector selects the agent pods (the DaemonSet's selector).
	AgentSelector = "app.kubernetes.io/name=meshcni,app.kubernetes.io/component=agent"
	// CRDFile is the MeshCNI CustomResourceDefinition in the chart.
	CRDFile = "crds/meshcni.io_meshcnis.yaml"
)

// NodeSideTemplates are the templates meshcni-controller renders from a
// MeshCNI's spec: the agent DaemonSet, its settings, identities and RBAC
// (and the GKE quota its priority class needs). The namespace is the
// controller's own and is not among them.
var NodeSideTemplates = []string{
	"meshcni/templates/agent-configmap.yaml",
	"meshcni/templates/agent-daemonset.yaml",
	"meshcni/templates/agent-rbac.yaml",
	"meshcni/templates/agent-resourcequota.yaml",
	"meshcni/templates/agent-serviceaccount.yaml",
}

// IsNodeSide tells whether a rendered object's source template is one of
// NodeSideTemplates.
func IsNodeSide(source string) bool { return slices.Contains(NodeSideTemplates, source) }

// Manifest is one render of the chart.
type Manifest struct {
	// Namespace is where the namespaced objects live.
	Namespace string
	// Objects in apply order (namespace first, DaemonSet last).
	Objects []*unstructured.Unstructured
	// Sources are the templates the Objects came from, index for index
	// ("meshcni/templates/daemonset.yaml").
	Sources []string
	// YAML is the multi-document manifest, comments kept, in apply order.
	YAML []byte
}

// LoadChart reads the embedded chart.
func LoadChart() (*helmchart.Chart, error) {
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
var kindOrder = []string{"Namespace", "ResourceQuota", "ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ConfigMap", "Service", "Deployment", "MutatingWebhookConfiguration", "DaemonSet"}

func kindRank(kind string) int {
	for i, k := range kindOrder {
		if k == kind {
			return i
		}
	}
	return len(kindOrder)
}

var docSep = regexp.MustCompile(`(?m)^---\s*$`)

// Render renders the chart with overrides, as `helm template` would, and
// decodes every object. namespace is the release namespace; service is
// the Release.Service the labels carry (app.kubernetes.io/managed-by):
// who applies the objects.
func Render(overrides map[string]any, namespace, service string) (*Manifest, error) {
	chrt, err := LoadChart()
	if err != nil {
		return nil, err
	}
	return render(chrt, overrides, namespace, service)
}

func render(chrt *helmchart.Chart, overrides map[string]any, namespace, service string) (*Manifest, error) {
	ns := namespace
	top, err := chartutil.ToRenderValues(chrt, overrides, chartutil.ReleaseOptions{
		Name: "meshcni", Namespace: ns, Revision: 1, IsInstall: true,
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("chart values: %w", err)
	}
	top["Release"].(map[string]any)["Service"] = service
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
		m.Sources = append(m.Sources, d.source)
	}
	m.YAML = buf.Bytes()
	return m, nil
}
