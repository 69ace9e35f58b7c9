//go:build integration

package kubeharness_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshcni/meshcni/test/kubeharness"
)

var cluster *kubeharness.Cluster

func TestMain(m *testing.M) {
	os.Exit(kubeharness.RunTests(m, kubeharness.Options{}, &cluster))
}

// clientFor builds a clientset from a kubeconfig file, as the plugin does.
func clientFor(t *testing.T, path string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", path, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

func TestServiceAccountSeesOnlyWhatItsRulesAllow(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	pod, err := cluster.CreatePod(ctx, kubeharness.NewPod("app", "web-0", "node-a"))
	if err != nil {
		t.Fatal(err)
	}
	if pod.Spec.NodeName != "node-a" || pod.UID == "" {
		t.Fatalf("created pod = %s on %q, want a UID and node-a", pod.UID, pod.Spec.NodeName)
	}

	rules := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}
	path, _, err := cluster.ServiceAccountKubeconfig(ctx, "meshcni-system", "meshcni", rules, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mode := fi.Mode().Perm(); mode != 0o600 {
		t.Errorf("kubeconfig mode = %v, want 0600", mode)
	}
	sa := clientFor(t, path)

	got, err := sa.CoreV1().Pods("app").Get(ctx, "web-0", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod as the service account: %v", err)
	}
	if got.UID != pod.UID {
		t.Errorf("got pod UID %s, want %s", got.UID, pod.UID)
	}
	if _, err := sa.CoreV1().Pods("app").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list pods: err = %v, want Forbidden", err)
	}
	if _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list pods in all namespaces: err = %v, want Forbidden", err)
	}
	if _, err := sa.CoreV1().Pods("app").Create(ctx, kubeharness.NewPod("app", "web-1", "node-a"), metav1.CreateOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("create pod: err = %v, want Forbidden", err)
	}
	if _, err := sa.CoreV1().Pods("app").Get(ctx, "missing", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("get a missing pod: err = %v, want NotFound (the rule allows get on any pod)", err)
	}
}

func TestTokenRotation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cluster.CreatePod(ctx, kubeharness.NewPod("rotate", "p", "node-a")); err != nil {
		t.Fatal(err)
	}
	rules := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}
	path, first, err := cluster.ServiceAccountKubeconfig(ctx, "rotate", "agent", rules, 0)
	if err != nil {
		t.Fatal(err)
	}
	getPod := func(path string) error {
		_, err := clientFor(t, path).CoreV1().Pods("rotate").Get(ctx, "p", metav1.GetOptions{})
		return err
	}
	if err := getPod(path); err != nil {
		t.Fatalf("first token: %v", err)
	}

	// A fresh token for the same account works, and so does the old one.
	second, err := cluster.IssueToken(ctx, "rotate", "agent", 20*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Fatal("IssueToken returned the same token again")
	}
	if err := cluster.WriteTokenKubeconfig(path, second); err != nil {
		t.Fatal(err)
	}
	if err := getPod(path); err != nil {
		t.Fatalf("rotated token: %v", err)
	}
	oldPath := t.TempDir() + "/old.kubeconfig"
	if err := kubeharness.WriteKubeconfig(oldPath, cluster.URL, cluster.CAData, first); err != nil {
		t.Fatal(err)
	}
	if err := getPod(oldPath); err != nil {
		t.Fatalf("first token after rotation: %v", err)
	}

	// Revocation: both tokens stop working (after the API server's 10 s
	// authentication cache), and a token for the new account works.
	if err := cluster.RevokeTokens(ctx, "rotate", "agent"); err != nil {
		t.Fatal(err)
	}
	third, err := cluster.IssueToken(ctx, "rotate", "agent", 0)
	if err != nil {
		t.Fatal(err)
	}
	newPath := t.TempDir() + "/new.kubeconfig"
	if err := cluster.WriteTokenKubeconfig(newPath, third); err != nil {
		t.Fatal(err)
	}
	if err := getPod(newPath); err != nil {
		t.Fatalf("token for the re-created account: %v", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := getPod(path)
		if apierrors.IsUnauthorized(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revoked token: err = %v, want Unauthorized", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func TestAdminKubeconfig(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := clientFor(t, cluster.AdminKubeconfig)
	if _, err := admin.CoreV1().Namespaces().Get(ctx, metav1.NamespaceDefault, metav1.GetOptions{}); err != nil {
		t.Fatalf("admin kubeconfig: %v", err)
	}
	v, err := admin.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server version %s", v.GitVersion)
}

func TestStartFailsClearlyWithoutBinaries(t *testing.T) {
	_, err := kubeharness.Start(context.Background(), kubeharness.Options{BinDir: t.TempDir()})
	if err == nil {
		t.Fatal("Start with an empty BinDir succeeded")
	}
	if want := "run hack/build-kube.sh"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}

func TestStartFailureCarriesLogTail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	parent := t.TempDir()
	_, err := kubeharness.Start(ctx, kubeharness.Options{
		TempDir:            parent,
		ExtraAPIServerArgs: []string{"--no-such-flag=1"},
	})
	if err == nil {
		t.Fatal("Start with an unknown kube-apiserver flag succeeded")
	}
	for _, want := range []string{"kube-apiserver exited during startup", "kube-apiserver.log", "no-such-flag"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	if left, _ := os.ReadDir(parent); len(left) != 0 {
		t.Errorf("failed Start left %d entries in %s", len(left), parent)
	}
}
