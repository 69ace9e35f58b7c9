//go:build integration

package webhook_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/charts"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/controller"
	"github.com/meshcni/meshcni/test/kubeharness"
)

var cluster *kubeharness.Cluster

func TestMain(m *testing.M) {
	os.Exit(kubeharness.RunTests(crdInstalled{m}, kubeharness.Options{}, &cluster))
}

// crdInstalled installs the chart's MeshCNI CRD before the tests run: the
// webhook follows that resource.
type crdInstalled struct{ m *testing.M }

func (r crdInstalled) Run() int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := installCRD(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "install CRD:", err)
		return 1
	}
	return r.m.Run()
}

func installCRD(ctx context.Context) error {
	data, err := charts.FS.ReadFile("meshcni/" + chart.CRDFile)
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &obj.Object); err != nil {
		return err
	}
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	crds := dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if _, err := crds.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "test", Force: true}); err != nil {
		return err
	}
	// Served: the list answers (Established, then discovery and storage).
	for {
		_, err := dyn.Resource(v1alpha1.GroupVersionResource).List(ctx, metav1.ListOptions{})
		if err == nil {
			return nil
		}
		if !apierrors.IsNotFound(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the MeshCNI CRD is not served: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// controllerKubeconfig applies the chart's own RBAC for meshcni-controller
// and returns a kubeconfig with its service account's token: the
// controller runs with exactly the rights the chart gives it.
func controllerKubeconfig(t *testing.T, ctx context.Context) string {
	t.Helper()
	must(t, cluster.EnsureNamespace(ctx, system))
	m, err := chart.Render(nil, system, "test")
	must(t, err)
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	gvr := map[string]schema.GroupVersionResource{
		"ServiceAccount":     {Version: "v1", Resource: "serviceaccounts"},
		"ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		"ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		"Role":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
		"RoleBinding":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
	}
	for i, obj := range m.Objects {
		if !strings.HasSuffix(m.Sources[i], "/controller-rbac.yaml") && !strings.HasSuffix(m.Sources[i], "/controller-serviceaccount.yaml") {
			continue
		}
		var rc dynamic.ResourceInterface = dyn.Resource(gvr[obj.GetKind()])
		if obj.GetNamespace() != "" {
			rc = dyn.Resource(gvr[obj.GetKind()]).Namespace(obj.GetNamespace())
		}
		if _, err := rc.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "test", Force: true}); err != nil {
			t.Fatalf("apply %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
	}
	token, err := cluster.IssueToken(ctx, system, "meshcni-controller", 0)
	must(t, err)
	path := t.TempDir() + "/controller.kubeconfig"
	must(t, cluster.WriteTokenKubeconfig(path, token))
	// The authorizer caches bindings: wait until the token may watch the
	// certificate's Secret by name, the last rule a replica needs.
	eventually(t, 30*time.Second, "controller RBAC in force", func() (string, bool) {
		sar, err := cluster.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sarFor("system:serviceaccount:"+system+":meshcni-controller"), metav1.CreateOptions{})
		if err != nil {
			return err.Error(), false
		}
		return sar.Status.Reason, sar.Status.Allowed
	})
	return path
}

// replica is one meshcni-controller process, run in-process with the
// real command's Run: leader election, reconcile, the webhook on its own
// loopback port, called by URL as https://localhost (the harness has no
// Service routing).
type replica struct {
	t      *testing.T
	url    string
	addr   string
	cancel func()
	done   chan error
	once   sync.Once
}

func startReplica(t *testing.T, kubeconfig string, rotate time.Duration) *replica {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{t: t, addr: ln.Addr().String(), url: fmt.Sprintf("https://localhost:%d/mutate", ln.Addr().(*net.TCPAddr).Port), cancel: cancel, done: make(chan error, 1)}
	o := &controller.CommandOptions{
		Kubeconfig: kubeconfig, Namespace: system, AgentImage: "registry.test/meshcni-agent:v1",
		Service: "meshcni-controller", Secret: secretName, WebhookConfiguration: "meshcni-webhook",
		RotateInterval: rotate, LogLevel: "warn", LeaderElect: true,
		DNSNames: []string{"localhost"}, WebhookListener: ln,
	}
	go func() { r.done <- o.Run(ctx, os.Stderr) }()
	t.Cleanup(r.stop)
	return r
}

// stop ends the replica and waits for it (idempotent).
func (r *replica) stop() {
	r.cancel()
	r.once.Do(func() {
		if err := <-r.done; err != nil {
			r.t.Errorf("meshcni-controller: %v", err)
		}
	})
}

// webhookConfiguration (re)creates the chart's MutatingWebhookConfiguration,
// calling url instead of the Service.
func webhookConfiguration(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	m, err := chart.Render(nil, system, "test")
	must(t, err)
	var mwc admissionregistrationv1.MutatingWebhookConfiguration
	for _, obj := range m.Objects {
		if obj.GetKind() == "MutatingWebhookConfiguration" {
			data, err := obj.MarshalJSON()
			must(t, err)
			must(t, yaml.Unmarshal(data, &mwc))
		}
	}
	if len(mwc.Webhooks) != 1 || mwc.Webhooks[0].ClientConfig.Service == nil || mwc.Webhooks[0].ClientConfig.Service.Name != "meshcni-controller" {
		t.Fatalf("the chart's webhook configuration does not call the controller's Service: %+v", mwc.Webhooks)
	}
	mwc.Webhooks[0].ClientConfig = admissionregistrationv1.WebhookClientConfig{URL: &url}
	api := cluster.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	_ = api.Delete(ctx, mwc.Name, metav1.DeleteOptions{})
	_, err = api.Create(ctx, &mwc, metav1.CreateOptions{})
	must(t, err)
}

// eventually polls cond until it holds, failing with its last complaint
// after limit.
func eventually(t *testing.T, limit time.Duration, what string, cond func() (string, bool)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		why, ok := cond()
		if ok {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%s, not within %v: %s", what, limit, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
