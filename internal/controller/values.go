package controller

import (
	"fmt"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/chart"
)

// Values turns a spec into the chart's values for the node side, in the
// release namespace namespace. defaultImage ("repository:tag" or
// "repository@sha256:...") is used when the spec leaves the image empty.
// Pure.
func Values(spec v1alpha1.MeshCNISpec, namespace, defaultImage string) (map[string]any, error) {
	v := map[string]any{
		"nodeSide":        true,
		"keepOnExit":      spec.KeepOnExit,
		"iptablesBackend": backend(spec.IptablesBackend),
	}
	// The whole list, decided here: the chart's template keeps it as it is
	// (it drops and re-appends the release namespace, already last).
	excluded := ExcludedNamespaces(spec, namespace)
	list := make([]any, 0, len(excluded))
	for _, ns := range excluded {
		list = append(list, ns)
	}
	v["excludeNamespaces"] = list
	for key, s := range map[string]string{"platform": spec.Platform, "repairMode": spec.RepairMode, "logLevel": spec.LogLevel, "pluginLogLevel": spec.PluginLogLevel} {
		if s != "" { // the schema defaults them; an old object may lack them
			v[key] = s
		}
	}
	ref := spec.Image
	if ref == "" {
		ref = defaultImage
	}
	if ref != "" {
		img, err := chart.ImageValues(ref)
		if err != nil {
			return nil, fmt.Errorf("spec.image: %w", err)
		}
		v["image"] = img
	}
	return v, nil
}

// backend maps the resource's spellings to the agent's.
func backend(s string) string {
	switch s {
	case "iptables-legacy":
		return "legacy"
	case "iptables-nft":
		return "nft"
	}
	return s
}
