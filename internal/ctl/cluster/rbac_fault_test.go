package cluster

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
)

// wantRoles is the whole of meshcni's RBAC, rule for rule: the
// ClusterRoles (which every install has) and the namespaced Roles (which
// an install may have; none other). Widening any of them must be a
// deliberate edit here, next to the reason.
var wantRoles = map[string]struct {
	cluster  bool
	required bool
	rules    []string // "group/resource: verbs", sorted
}{
	// The plug-in gets one pod by name per ADD and CHECK; nothing else.
	"ClusterRole/meshcni-plugin": {true, true, []string{"/pods: get"}},
	// The agent (repairMode repair, the default): the pod cache and repair
	// watch its node's pods, it reads its own pod, records core events,
	// reads its node's label and lifts the startup taint. delete (mode
	// delete) and pods/status patch (mode label) come only with their
	// mode; templates/node-bound-policy.yaml keeps every write to its node.
	"ClusterRole/meshcni-agent": {true, true, []string{
		"/events: create patch",
		"/nodes: get patch",
		"/pods: get list watch",
	}},
	// A stopping agent reads its own DaemonSet (upgrade or uninstall); the
	// agent mints the plug-in's tokens, for that one account only.
	"Role/meshcni-agent": {false, false, []string{"/serviceaccounts/token: create names=meshcni-plugin", "apps/daemonsets: get"}},
	// The controller (its own release): the MeshCNI and its status, the
	// nodes' startup taint, events; the agent's roles and bindings by name
	// (escalate and bind on those two names only: it grants the agent's
	// rules without holding them); the webhook configuration's caBundle.
	"ClusterRole/meshcni-controller": {true, true, []string{
		"/events: create patch",
		"admissionregistration.k8s.io/mutatingwebhookconfigurations: get list watch patch names=meshcni-webhook",
		"/nodes: get list watch update",
		"meshcni.io/meshcnis/status: update",
		"meshcni.io/meshcnis: get list watch patch",
		"rbac.authorization.k8s.io/clusterrolebindings: create",
		"rbac.authorization.k8s.io/clusterrolebindings: get patch delete names=meshcni-agent,meshcni-plugin",
		"rbac.authorization.k8s.io/clusterroles: create",
		"rbac.authorization.k8s.io/clusterroles: get patch delete escalate bind names=meshcni-agent,meshcni-plugin",
	}},
	// ... and, in its namespace, the node side's objects, its lease, the
	// agent's right to mint the plug-in's token (which it must hold to
	// grant it), and the serving certificate's Secret.
	"Role/meshcni-controller": {false, true, []string{
		"/configmaps: get list watch create patch delete",
		"/pods: list watch",
		"/resourcequotas: get create patch delete",
		"/secrets: create",
		"/secrets: get list watch update names=meshcni-controller-tls",
		"/serviceaccounts/token: create names=meshcni-plugin",
		"/serviceaccounts: get create patch delete",
		"apps/daemonsets: get list watch create patch delete",
		"coordination.k8s.io/leases: create",
		"coordination.k8s.io/leases: get update names=meshcni-controller",
		"rbac.authorization.k8s.io/rolebindings: get create patch delete",
		"rbac.authorization.k8s.io/roles: get create patch delete",
	}},
}

// flatten renders rules as "group/resource: verbs" lines, sorted, one per
// group and resource; resourceNames and nonResourceURLs are called out.
func flatten(rules []rbacv1.PolicyRule) []string {
	var out []string
	for _, r := range rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				line := fmt.Sprintf("%s/%s: %s", g, res, strings.Join(r.Verbs, " "))
				if len(r.ResourceNames) > 0 {
					line += " names=" + strings.Join(r.ResourceNames, ",")
				}
				out = append(out, line)
			}
		}
		for _, u := range r.NonResourceURLs {
			out = append(out, "nonResourceURL "+u+": "+strings.Join(r.Verbs, " "))
		}
		if len(r.APIGroups) == 0 && len(r.NonResourceURLs) == 0 {
			out = append(out, fmt.Sprintf("rule without groups: %+v", r))
		}
	}
	sort.Strings(out)
	return out
}

// The RBAC of every platform's render is exactly wantRoles; every binding
// binds a meshcni role to the meshcni service account of the same name in
// the release namespace, and nothing else.
func TestRBACIsExactlyMinimal(t *testing.T) {
	for _, platform := range append([]string{""}, Platforms...) {
		t.Run("platform="+platform, func(t *testing.T) {
			seen := map[string]bool{}
			check := func(kind, name string, rules []rbacv1.PolicyRule, cluster bool) {
				key := kind + "/" + name
				seen[key] = true
				want, ok := wantRoles[key]
				if !ok {
					t.Errorf("%s: not a role meshcni should have (rules %v)", key, flatten(rules))
					return
				}
				want.rules = slices.Sorted(slices.Values(want.rules))
				if got := flatten(rules); !slices.Equal(got, want.rules) {
					t.Errorf("%s rules:\n got  %q\n want %q", key, got, want.rules)
				}
				for _, r := range rules {
					// escalate and bind only on meshcni's own roles, by name:
					// the controller grants the agent's rules without holding them.
					ownRoles := len(r.ResourceNames) > 0 && !slices.ContainsFunc(r.ResourceNames, func(n string) bool { return !strings.HasPrefix(n, "meshcni-") })
					if slices.Contains(r.Verbs, "*") || slices.Contains(r.Resources, "*") || slices.Contains(r.APIGroups, "*") ||
						slices.Contains(r.Verbs, "impersonate") ||
						(!ownRoles && slices.ContainsFunc(r.Verbs, func(v string) bool { return v == "escalate" || v == "bind" })) {
						t.Errorf("%s: rule %+v is a wildcard or an escalation", key, r)
					}
				}
			}
			// The node side (what the controller and enable apply) and the
			// controller's own release (the controller, which serves the
			// webhook, and the node-bound policy).
			objects := decodeAll(t, render(t, ChartValues{Platform: platform}))
			objects = append(objects, decodeAll(t, render(t, ChartValues{Platform: platform, Set: []string{"nodeSide=false"}}))...)
			for _, o := range objects {
				switch r := o.(type) {
				case *rbacv1.ClusterRole:
					if r.AggregationRule != nil {
						t.Errorf("ClusterRole %s aggregates other roles", r.Name)
					}
					check("ClusterRole", r.Name, r.Rules, true)
				case *rbacv1.Role:
					if r.Namespace != DefaultNamespace {
						t.Errorf("Role %s in namespace %q, want %s", r.Name, r.Namespace, DefaultNamespace)
					}
					check("Role", r.Name, r.Rules, false)
				case *rbacv1.ClusterRoleBinding:
					checkBinding(t, "ClusterRoleBinding/"+r.Name, r.Name, r.RoleRef, r.Subjects, "ClusterRole")
				case *rbacv1.RoleBinding:
					checkBinding(t, "RoleBinding/"+r.Name, r.Name, r.RoleRef, r.Subjects, "Role")
				}
			}
			for key, want := range wantRoles {
				if want.required && !seen[key] {
					t.Errorf("%s is missing from the render", key)
				}
			}
		})
	}
}

func checkBinding(t *testing.T, key, name string, ref rbacv1.RoleRef, subjects []rbacv1.Subject, kind string) {
	t.Helper()
	if ref.Kind != kind || ref.Name != name || ref.APIGroup != rbacv1.GroupName {
		t.Errorf("%s binds %s %s: want its own %s %s", key, ref.Kind, ref.Name, kind, name)
	}
	if len(subjects) != 1 || subjects[0].Kind != rbacv1.ServiceAccountKind || subjects[0].Name != name || subjects[0].Namespace != DefaultNamespace {
		t.Errorf("%s subjects %+v: want only ServiceAccount %s/%s", key, subjects, DefaultNamespace, name)
	}
}
