package chart

import (
	"fmt"
	"path"
	"strings"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
)

// Release names what `helm template` is given for deploy/meshcni.yaml:
//
//	helm template meshcni charts/meshcni --namespace meshcni-system --include-crds
const Release = "meshcni"

// Template renders the chart as `helm template RELEASE CHART --namespace
// NAMESPACE --include-crds` prints it, byte for byte: Helm's engine with
// the default capabilities and the values schema, NOTES.txt left out,
// Helm's install order (releaseutil.SortManifests), the CRDs first, each
// document under its "# Source:" line, hooks last. These are the steps of
// Helm's install action (pkg/action renderResources) and of the template
// command; the action itself is not used because it pulls in Helm's
// registry, storage and kubectl clients. overrides are --set values.
func Template(overrides map[string]any, release, namespace string) (string, error) {
	chrt, err := LoadChart()
	if err != nil {
		return "", err
	}
	caps := chartutil.DefaultCapabilities.Copy()
	// A helm 3.19 binary reports Kubernetes 1.34 (set by its build flags;
	// a library build says 1.20, below the chart's kubeVersion).
	caps.KubeVersion = chartutil.KubeVersion{Version: "v1.34.0", Major: "1", Minor: "34"}
	if v := chrt.Metadata.KubeVersion; v != "" && !chartutil.IsCompatibleRange(v, caps.KubeVersion.String()) {
		return "", fmt.Errorf("chart requires kubeVersion %s, incompatible with Kubernetes %s", v, caps.KubeVersion.String())
	}
	if overrides == nil {
		overrides = map[string]any{}
	}
	top, err := chartutil.ToRenderValuesWithSchemaValidation(chrt, overrides, chartutil.ReleaseOptions{
		Name: release, Namespace: namespace, Revision: 1, IsInstall: true,
	}, caps, false)
	if err != nil {
		return "", fmt.Errorf("chart values: %w", err)
	}
	files, err := engine.Render(chrt, top)
	if err != nil {
		return "", fmt.Errorf("render chart: %w", err)
	}
	delete(files, path.Join(chrt.Name(), "templates", "NOTES.txt"))
	hooks, manifests, err := releaseutil.SortManifests(files, nil, releaseutil.InstallOrder)
	if err != nil {
		return "", fmt.Errorf("render chart: %w", err)
	}
	var b strings.Builder
	for _, crd := range chrt.CRDObjects() {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", crd.Filename, crd.File.Data)
	}
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	out := strings.TrimSpace(b.String()) + "\n"
	for _, h := range hooks {
		out += fmt.Sprintf("---\n# Source: %s\n%s\n", h.Path, h.Manifest)
	}
	return out, nil
}
