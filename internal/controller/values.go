package controller

import (
	"fmt"
	"strings"

	"github.com/meshcni/meshcni/api/v1alpha1"
)

// Values turns a spec into the chart's values for the node side in
// namespace. defaultImage ("repository:tag" or "repository@sha256:...")
// is used when the spec leaves the image empty. Pure.
func Values(spec v1alpha1.MeshCNISpec, namespace, defaultImage string) (map[string]any, error) {
	v := map[string]any{
		"namespace":       namespace,
		"nodeSide":        true,
		"keepOnExit":      spec.KeepOnExit,
		"iptablesBackend": backend(spec.IptablesBackend),
	}
	for key, s := range map[string]string{"platform": spec.Platform, "repairMode": spec.RepairMode, "logLevel": spec.LogLevel, "pluginLogLevel": spec.PluginLogLevel} {
		if s != "" { // the schema defaults them; an old object may lack them
			v[key] = s
		}
	}
	if spec.ExcludeNamespaces != nil {
		list := make([]any, 0, len(spec.ExcludeNamespaces))
		for _, ns := range spec.ExcludeNamespaces {
			list = append(list, ns)
		}
		v["excludeNamespaces"] = list
	}
	ref := spec.Image
	if ref == "" {
		ref = defaultImage
	}
	if ref != "" {
		img, err := ImageValues(ref)
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

// ImageValues splits "registry:5000/repo:tag" or "repo@sha256:..." into
// the chart's image.repository, image.tag and image.digest.
func ImageValues(ref string) (map[string]any, error) {
	repo, tag, digest := ref, "", ""
	if i := strings.Index(ref, "@"); i >= 0 {
		repo, digest = ref[:i], ref[i+1:]
		if !strings.HasPrefix(digest, "sha256:") || len(digest) != len("sha256:")+64 {
			return nil, fmt.Errorf("%q: a digest is @sha256: and 64 hex digits", ref)
		}
	}
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo, tag = repo[:i], repo[i+1:]
	}
	if repo == "" {
		return nil, fmt.Errorf("%q: empty repository", ref)
	}
	return map[string]any{"repository": repo, "tag": tag, "digest": digest}, nil
}
