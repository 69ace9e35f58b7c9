package testbed

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/meshcni/meshcni/test/kubeharness"
)

// PluginRules is all the plug-in's identity may do, as in production.
var PluginRules = []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}

// PluginKubeconfig creates the plug-in's service account (get pods only)
// and returns a kubeconfig and token for it.
func PluginKubeconfig(ctx context.Context, c *kubeharness.Cluster) (path, token string, err error) {
	return c.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-plugin", PluginRules, time.Hour)
}

// Main is TestMain for the packages that need the plug-in binary and a
// real API server: it builds the one into a temp dir, starts the other,
// runs setup (if any) and the tests, and removes everything.
func Main(m *testing.M, plugin *string, cluster **kubeharness.Cluster, setup func(*kubeharness.Cluster) error) int {
	dir, err := os.MkdirTemp("", "meshcni-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if *plugin, err = BuildPlugin(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return kubeharness.RunTests(&setupM{m: m, cluster: cluster, setup: setup}, kubeharness.Options{}, cluster)
}

// setupM runs setup once the cluster is up, then the tests.
type setupM struct {
	m       *testing.M
	cluster **kubeharness.Cluster
	setup   func(*kubeharness.Cluster) error
}

func (s *setupM) Run() int {
	if s.setup != nil {
		if err := s.setup(*s.cluster); err != nil {
			fmt.Fprintln(os.Stderr, "setup:", err)
			return 1
		}
	}
	return s.m.Run()
}
