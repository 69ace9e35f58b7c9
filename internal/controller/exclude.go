package controller

import (
	"slices"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/netconf"
	"github.com/meshcni/meshcni/internal/webhook"
)

// ExcludedNamespaces is the one decision of which namespaces meshcni never
// captures: the spec's list (its default when absent), each once, in its
// order, then the release namespace, always and last (the plug-in must
// never wait on the API for the agent's own pods). The default is the
// plug-in's (netconf.DefaultExcludeNamespaces), as the CRD schema's is,
// for an object stored before the schema had one. The node side's
// rendering (the plug-in's exclude_namespaces) and the webhook both use
// it. Pure.
func ExcludedNamespaces(spec v1alpha1.MeshCNISpec, releaseNamespace string) []string {
	list := spec.ExcludeNamespaces
	if list == nil {
		list = netconf.DefaultExcludeNamespaces()
	}
	out := make([]string, 0, len(list)+1)
	for _, ns := range list {
		if ns != releaseNamespace && !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	return append(out, releaseNamespace)
}

// WebhookPolicy is what the injection webhook applies for the MeshCNI mc
// (nil: there is none): nothing unless meshcni is enabled and not being
// deleted, else the excluded namespaces the plug-in gets. Pure.
func WebhookPolicy(mc *v1alpha1.MeshCNI, releaseNamespace string) webhook.Policy {
	if mc == nil || mc.DeletionTimestamp != nil || !mc.Spec.IsEnabled() {
		return webhook.Policy{}
	}
	return webhook.Policy{Enabled: true, Excluded: ExcludedNamespaces(mc.Spec, releaseNamespace)}
}
