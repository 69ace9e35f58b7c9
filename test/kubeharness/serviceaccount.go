package kubeharness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// DefaultTokenTTL is the lifetime of tokens issued with ttl 0. TokenRequest
// refuses lifetimes under 10 minutes.
const DefaultTokenTTL = time.Hour

// ServiceAccountKubeconfig gives the service account namespace/name exactly
// the permissions in rules, cluster-wide, and returns a kubeconfig file that
// authenticates as it with a fresh token, along with the token.
//
// It creates the namespace and service account if missing, and creates or
// overwrites the ClusterRole and ClusterRoleBinding named
// ClusterRoleName(namespace, name). It returns once the API server
// authorizes the first verb of the first rule, so the caller sees the new
// permissions at once. ttl 0 means DefaultTokenTTL; the minimum is 10
// minutes. The file, mode 0600, is in Dir/kubeconfigs and is rewritten by
// later calls for the same account.
func (c *Cluster) ServiceAccountKubeconfig(ctx context.Context, namespace, name string, rules []rbacv1.PolicyRule, ttl time.Duration) (kubeconfigPath, token string, err error) {
	if err := c.EnsureNamespace(ctx, namespace); err != nil {
		return "", "", err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if _, err := c.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", "", fmt.Errorf("create service account %s/%s: %w", namespace, name, err)
	}
	roleName := ClusterRoleName(namespace, name)
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: roleName}, Rules: rules}
	if err := createOrUpdate(ctx, c.Client.RbacV1().ClusterRoles(), role); err != nil {
		return "", "", fmt.Errorf("cluster role %s: %w", roleName, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: roleName},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: roleName},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: name}},
	}
	if err := createOrUpdate(ctx, c.Client.RbacV1().ClusterRoleBindings(), binding); err != nil {
		return "", "", fmt.Errorf("cluster role binding %s: %w", roleName, err)
	}
	if err := c.waitAuthorized(ctx, namespace, name, rules); err != nil {
		return "", "", err
	}
	token, err = c.IssueToken(ctx, namespace, name, ttl)
	if err != nil {
		return "", "", err
	}
	kubeconfigPath = filepath.Join(c.Dir, "kubeconfigs", namespace+"-"+name+".kubeconfig")
	if err := c.WriteTokenKubeconfig(kubeconfigPath, token); err != nil {
		return "", "", err
	}
	return kubeconfigPath, token, nil
}

// ClusterRoleName is the name of the ClusterRole and ClusterRoleBinding
// that ServiceAccountKubeconfig makes for namespace/name.
func ClusterRoleName(namespace, name string) string {
	return "kubeharness:" + namespace + ":" + name
}

// IssueToken returns a new bound token for an existing service account via
// TokenRequest, for token-rotation tests. Earlier tokens stay valid until
// they expire or RevokeTokens. ttl 0 means DefaultTokenTTL.
func (c *Cluster) IssueToken(ctx context.Context, namespace, name string, ttl time.Duration) (string, error) {
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	seconds := int64(ttl / time.Second)
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}}
	tr, err := c.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, tr, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for service account %s/%s: %w", namespace, name, err)
	}
	return tr.Status.Token, nil
}

// RevokeTokens invalidates every token issued so far for namespace/name by
// deleting and re-creating the service account (tokens are bound to its
// UID). Its RBAC bindings are by name and still apply to the new account.
// The API server caches successful token authentications for 10 seconds, so
// an old token may still work that long.
func (c *Cluster) RevokeTokens(ctx context.Context, namespace, name string) error {
	sas := c.Client.CoreV1().ServiceAccounts(namespace)
	old, err := sas.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("revoke tokens of %s/%s: %w", namespace, name, err)
	}
	pre := metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &old.UID}}
	if err := sas.Delete(ctx, name, pre); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("revoke tokens of %s/%s: %w", namespace, name, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if _, err := sas.Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("re-create service account %s/%s: %w", namespace, name, err)
	}
	return nil
}

// WriteTokenKubeconfig writes a kubeconfig for this cluster that
// authenticates with token.
func (c *Cluster) WriteTokenKubeconfig(path, token string) error {
	return WriteKubeconfig(path, c.URL, c.CAData, token)
}

// WriteKubeconfig writes a kubeconfig (mode 0600) for server, trusting the
// PEM caData, that authenticates with token. It replaces path atomically,
// so a reader sees the old file or the new one, never a torn one.
func WriteKubeconfig(path, server string, caData []byte, token string) error {
	return writeKubeconfig(path, newKubeconfig(server, caData, &clientcmdapi.AuthInfo{Token: token}))
}

func newKubeconfig(server string, caData []byte, user *clientcmdapi.AuthInfo) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubeharness"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caData}
	cfg.AuthInfos["user"] = user
	cfg.Contexts["kubeharness"] = &clientcmdapi.Context{Cluster: "kubeharness", AuthInfo: "user"}
	cfg.CurrentContext = "kubeharness"
	return cfg
}

func writeKubeconfig(path string, cfg *clientcmdapi.Config) error {
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// firstRuleAttributes fills spec with the first verb of the first rule that
// has one, and reports whether there was such a rule.
func firstRuleAttributes(rules []rbacv1.PolicyRule, spec *authorizationv1.SubjectAccessReviewSpec) bool {
	for _, r := range rules {
		switch {
		case len(r.Verbs) == 0:
		case len(r.Resources) > 0:
			resource, sub, _ := strings.Cut(r.Resources[0], "/")
			ra := &authorizationv1.ResourceAttributes{Verb: r.Verbs[0], Resource: resource, Subresource: sub}
			if len(r.APIGroups) > 0 {
				ra.Group = r.APIGroups[0]
			}
			if len(r.ResourceNames) > 0 {
				ra.Name = r.ResourceNames[0]
			}
			spec.ResourceAttributes = ra
			return true
		case len(r.NonResourceURLs) > 0:
			spec.NonResourceAttributes = &authorizationv1.NonResourceAttributes{Verb: r.Verbs[0], Path: r.NonResourceURLs[0]}
			return true
		}
	}
	return false
}

// waitAuthorized waits until the RBAC authorizer, which reads bindings from
// an informer, allows the first verb of the first resource rule.
func (c *Cluster) waitAuthorized(ctx context.Context, namespace, name string, rules []rbacv1.PolicyRule) error {
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   "system:serviceaccount:" + namespace + ":" + name,
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}}
	if !firstRuleAttributes(rules, &sar.Spec) {
		return nil
	}
	var last error
	err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		res, err := c.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
		if err != nil {
			last = err
			return false, nil
		}
		last = fmt.Errorf("not allowed yet: %s", res.Status.Reason)
		return res.Status.Allowed, nil
	})
	if err != nil {
		return fmt.Errorf("RBAC for %s/%s did not take effect: %w (last: %v)", namespace, name, err, last)
	}
	return nil
}

type createUpdater[T any] interface {
	Create(context.Context, T, metav1.CreateOptions) (T, error)
	Get(context.Context, string, metav1.GetOptions) (T, error)
	Update(context.Context, T, metav1.UpdateOptions) (T, error)
}

// createOrUpdate creates obj or, if it exists, replaces it (keeping the
// resourceVersion so the update is not blind).
func createOrUpdate[T metav1.Object](ctx context.Context, client createUpdater[T], obj T) error {
	_, err := client.Create(ctx, obj, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	cur, err := client.Get(ctx, obj.GetName(), metav1.GetOptions{})
	if err != nil {
		return err
	}
	obj.SetResourceVersion(cur.GetResourceVersion())
	_, err = client.Update(ctx, obj, metav1.UpdateOptions{})
	return err
}
