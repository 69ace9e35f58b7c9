//go:build integration

package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshcni/meshcni/internal/ctl"
)

// The chart's agent RBAC and node-bound admission policy, applied to the
// real API server: a token bound to the agent's pod on node-a may patch
// node-a and the pods on it, and is refused on node-b and node-b's pods,
// even where RBAC allows the verb; a token without the node claim may
// write no node at all. Before, the agent's cluster-wide role let one
// node's token relabel another node's pods and cordon other nodes.
func TestAgentIsBoundToItsNode(t *testing.T) {
	ctx := context.Background()
	const ns, work = "meshcni-nodebound", "nodebound-work"
	for _, n := range []string{ns, work} {
		if err := cluster.EnsureNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	// repairMode label: the role then holds pods/status patch.
	m, err := ctl.RenderIn(map[string]any{"repairMode": "label"}, ns)
	if err != nil {
		t.Fatal(err)
	}
	applyRendered(t, m.Objects, map[string]bool{"ServiceAccount": true, "ClusterRole": true, "ClusterRoleBinding": true})
	// The policy ships with the controller's release, not the node side.
	release, err := ctl.RenderIn(map[string]any{"nodeSide": false}, ns)
	if err != nil {
		t.Fatal(err)
	}
	applyRendered(t, release.Objects, map[string]bool{"ValidatingAdmissionPolicy": true, "ValidatingAdmissionPolicyBinding": true})
	// As repairMode delete would grant: delete on pods, so that only the
	// policy stands between the token and node-b's pods.
	grantDelete(t, ns)

	createNode(t, "node-a", nil)
	createNode(t, "node-b", nil)
	newPod := func(namespace, name, node, sa string) *corev1.Pod {
		p, err := cluster.Client.CoreV1().Pods(namespace).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa,
				Containers: []corev1.Container{{Name: "c", Image: "example.invalid/c"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cluster.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
		})
		return p
	}
	agentPod := newPod(ns, "meshcni-agent-a", "node-a", "meshcni-agent")
	newPod(work, "pod-a", "node-a", "")
	newPod(work, "pod-b", "node-b", "")
	newPod(work, "pod-a2", "node-a", "")
	newPod(work, "pod-b2", "node-b", "")

	bound := agentClient(t, ns, &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: agentPod.Name, UID: agentPod.UID})
	unbound := agentClient(t, ns, nil)

	// The node claim the policy reads.
	ssr, err := bound.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ssr.Status.UserInfo.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != "node-a" {
		t.Fatalf("the pod-bound token's node claim: %v (user %+v); want node-a", got, ssr.Status.UserInfo)
	}

	labelNode := func(cs kubernetes.Interface, node string) error {
		_, err := cs.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(`{"metadata":{"labels":{"meshcni-test":"x"}}}`), metav1.PatchOptions{})
		return err
	}
	labelPod := func(cs kubernetes.Interface, pod string) error {
		_, err := cs.CoreV1().Pods(work).Patch(ctx, pod, types.MergePatchType, []byte(`{"metadata":{"labels":{"cni.meshcni.io/uninitialized":"true"}}}`), metav1.PatchOptions{}, "status")
		return err
	}
	deletePod := func(cs kubernetes.Interface, pod string) error {
		return cs.CoreV1().Pods(work).Delete(ctx, pod, metav1.DeleteOptions{})
	}
	// Policies and bindings take effect a moment after they are created.
	waitFor(t, 30*time.Second, "the node-bound policy to refuse node-b", func() bool {
		return policyRefused(labelNode(bound, "node-b"))
	})

	for _, tc := range []struct {
		what    string
		err     error
		allowed bool
	}{
		{"patch node-a", labelNode(bound, "node-a"), true},
		{"patch pod-a's status", labelPod(bound, "pod-a"), true},
		{"delete pod-a2", deletePod(bound, "pod-a2"), true},
		{"patch node-b", labelNode(bound, "node-b"), false},
		{"patch pod-b's status", labelPod(bound, "pod-b"), false},
		{"delete pod-b2", deletePod(bound, "pod-b2"), false},
		{"patch node-a without a node claim", labelNode(unbound, "node-a"), false},
		{"patch pod-a's status without a node claim", labelPod(unbound, "pod-a"), false},
	} {
		switch {
		case tc.allowed && tc.err != nil:
			t.Errorf("%s: %v; want allowed", tc.what, tc.err)
		case !tc.allowed && !policyRefused(tc.err):
			t.Errorf("%s: %v; want refused by the node-bound policy", tc.what, tc.err)
		}
	}
	if _, err := cluster.Client.CoreV1().Pods(work).Get(ctx, "pod-b2", metav1.GetOptions{}); err != nil {
		t.Errorf("pod-b2 after the refused delete: %v", err)
	}
}

// policyRefused reports whether err is the node-bound policy's refusal
// (not RBAC's, which would say nothing about the node).
func policyRefused(err error) bool {
	return apierrors.IsForbidden(err) && strings.Contains(err.Error(), "may only write its own node")
}

// applyRendered creates the rendered objects of the kinds given, deleted
// when the test ends.
func applyRendered(t *testing.T, objs []*unstructured.Unstructured, kinds map[string]bool) {
	t.Helper()
	ctx := context.Background()
	for _, u := range objs {
		if !kinds[u.GetKind()] {
			continue
		}
		var err error
		var del func() error
		switch u.GetKind() {
		case "ServiceAccount":
			var o corev1.ServiceAccount
			convert(t, u, &o)
			_, err = cluster.Client.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, &o, metav1.CreateOptions{})
			del = func() error {
				return cluster.Client.CoreV1().ServiceAccounts(o.Namespace).Delete(ctx, o.Name, metav1.DeleteOptions{})
			}
		case "ClusterRole":
			var o rbacv1.ClusterRole
			convert(t, u, &o)
			_, err = cluster.Client.RbacV1().ClusterRoles().Create(ctx, &o, metav1.CreateOptions{})
			del = func() error {
				return cluster.Client.RbacV1().ClusterRoles().Delete(ctx, o.Name, metav1.DeleteOptions{})
			}
		case "ClusterRoleBinding":
			var o rbacv1.ClusterRoleBinding
			convert(t, u, &o)
			_, err = cluster.Client.RbacV1().ClusterRoleBindings().Create(ctx, &o, metav1.CreateOptions{})
			del = func() error {
				return cluster.Client.RbacV1().ClusterRoleBindings().Delete(ctx, o.Name, metav1.DeleteOptions{})
			}
		case "ValidatingAdmissionPolicy":
			var o admissionv1.ValidatingAdmissionPolicy
			convert(t, u, &o)
			_, err = cluster.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, &o, metav1.CreateOptions{})
			del = func() error {
				return cluster.Client.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, o.Name, metav1.DeleteOptions{})
			}
		case "ValidatingAdmissionPolicyBinding":
			var o admissionv1.ValidatingAdmissionPolicyBinding
			convert(t, u, &o)
			_, err = cluster.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, &o, metav1.CreateOptions{})
			del = func() error {
				return cluster.Client.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, o.Name, metav1.DeleteOptions{})
			}
		default:
			t.Fatalf("applyRendered: no case for %s", u.GetKind())
		}
		if err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
		t.Cleanup(func() { _ = del() })
	}
}

func convert(t *testing.T, u *unstructured.Unstructured, into any) {
	t.Helper()
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, into); err != nil {
		t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

// grantDelete gives the agent's service account delete on pods, as the
// chart does with repairMode delete.
func grantDelete(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	name := "meshcni-nodebound-test-delete"
	_, err := cluster.Client.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"delete"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Client.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{}) })
	_, err = cluster.Client.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: "meshcni-agent", Namespace: ns}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Client.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{}) })
}

// agentClient is a client with a TokenRequest token of the agent's
// service account in ns, bound to ref (nil: unbound).
func agentClient(t *testing.T, ns string, ref *authnv1.BoundObjectReference) kubernetes.Interface {
	t.Helper()
	secs := int64(600)
	tr, err := cluster.Client.CoreV1().ServiceAccounts(ns).CreateToken(context.Background(), "meshcni-agent",
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: &secs, BoundObjectRef: ref}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(&rest.Config{Host: cluster.URL, BearerToken: tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cluster.CAData}})
	if err != nil {
		t.Fatal(err)
	}
	return cs
}
