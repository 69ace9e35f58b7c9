//go:build integration

package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshcni/meshcni/test/kubeharness"
)

// The agent mints the plug-in's token with TokenRequest, writes it into
// the plug-in's kubeconfig, and mints a new one before the old expires:
// each token may get pods and nothing else, names the plug-in's service
// account, and is bound to the agent's node (the API refuses to bind it
// to the agent's pod, which runs as another service account). Before, the plug-in's
// credential was a legacy Secret token that never expired.
func TestPluginTokenIsMintedAndRotated(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the harness runs as root")
	}
	c := kubeharness.StartT(t, kubeharness.Options{})
	ctx := context.Background()
	const ns = "meshcni-cred"
	if err := c.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	getPods := []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}
	if _, _, err := c.ServiceAccountKubeconfig(ctx, ns, "meshcni-plugin", getPods, time.Hour); err != nil {
		t.Fatal(err)
	}
	_, agentToken, err := c.ServiceAccountKubeconfig(ctx, ns, "meshcni-agent", []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"serviceaccounts/token"}, Verbs: []string{"create"}, ResourceNames: []string{"meshcni-plugin"}},
	}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	node, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cred-node"}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod, err := c.Client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "meshcni-agent-x"},
		Spec: corev1.PodSpec{NodeName: node.Name, ServiceAccountName: "meshcni-agent",
			Containers: []corev1.Container{{Name: "agent", Image: "example.invalid/agent"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	o := n.options()
	o.APIServer, o.CAPath = c.URL, filepath.Join(n.tokenDir, "ca.crt")
	writeFile(t, o.CAPath, string(c.CAData))
	o.TokenPath = filepath.Join(t.TempDir(), "token") // the agent writes it
	o.AgentTokenPath = filepath.Join(n.tokenDir, "agent-token")
	writeFile(t, o.AgentTokenPath, agentToken)
	o.NodeName, o.PodName, o.PodNamespace = node.Name, pod.Name, ns
	o.PluginServiceAccount, o.PluginTokenTTL = "meshcni-plugin", 10*time.Minute
	o.StartupTaint, o.RepairMode = false, RepairOff
	r := start(t, o, func(a *Agent) { a.tokenRefresh = 2 * time.Second })
	r.waitInstalled(t, 20*time.Second)
	logs := r.logs

	// The token in the kubeconfig, as the plug-in reads it.
	kubeconfigToken := func() string {
		cfg, err := clientcmd.LoadFromFile(o.KubeconfigPath())
		if err != nil {
			return ""
		}
		for _, ai := range cfg.AuthInfos {
			return ai.Token
		}
		return ""
	}
	first := kubeconfigToken()
	check := func(tok string) {
		t.Helper()
		rv, err := c.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: tok}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st := rv.Status
		if !st.Authenticated || st.User.Username != "system:serviceaccount:"+ns+":meshcni-plugin" {
			t.Fatalf("the kubeconfig's token: %+v; want the plug-in's service account", st)
		}
		if got := st.User.Extra["authentication.kubernetes.io/node-name"]; len(got) != 1 || got[0] != node.Name {
			t.Errorf("the token is bound to %v; want the node %s", st.User.Extra, node.Name)
		}
		cs, err := kubernetes.NewForConfig(&rest.Config{Host: c.URL, BearerToken: tok, TLSClientConfig: rest.TLSClientConfig{CAData: c.CAData}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cs.CoreV1().Pods(ns).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("the plug-in's token cannot get a pod: %v", err)
		}
		if _, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{}); err == nil {
			t.Error("the plug-in's token may list pods; want get only")
		}
	}
	if first == "" {
		t.Fatalf("no token in the kubeconfig\n%s", logs)
	}
	check(first)
	eventually(t, 20*time.Second, "a rotated token in the kubeconfig", func() bool {
		tok := kubeconfigToken()
		return tok != "" && tok != first
	})
	check(kubeconfigToken())
	if !strings.Contains(logs.String(), "minted the plug-in's token") {
		t.Errorf("no mint logged:\n%s", logs)
	}
}
