//go:build integration

// Package webhook_test runs meshcni-controller, which serves the injection
// webhook on every replica, against a real kube-apiserver
// (test/kubeharness): the chart's MutatingWebhookConfiguration and RBAC,
// pods created through the API, PodSecurity admission after the webhook,
// the exclusions and the switch of the live MeshCNI resource, a standby
// replica answering with the certificate the leader rotates, and the
// webhook down.
package webhook_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/controller"
	"github.com/meshcni/meshcni/internal/inject"
	"github.com/meshcni/meshcni/internal/webhook"
)

const (
	system     = "meshcni-system"
	secretName = "meshcni-controller-tls"
	captured   = "shop"
	orders     = "orders"          // captured, then excluded live
	baseline   = "shop-baseline"   // PodSecurity baseline, enforced
	excluded   = "legacy"          // excluded by meshcni
	exclBase   = "legacy-baseline" // excluded and baseline
)

// pods reads a fixture's pods: Pods as they are, Deployments' templates
// as the pods their ReplicaSets would create.
func pods(t *testing.T, file string) []*corev1.Pod {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("..", "..", "internal", "inject", "testdata", "istio", file))
	if err != nil {
		t.Fatal(err)
	}
	var out []*corev1.Pod
	r := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(string(raw)), 4096)
	for {
		var obj struct {
			Kind     string            `json:"kind"`
			Metadata metav1.ObjectMeta `json:"metadata"`
			Spec     json.RawMessage   `json:"spec"`
		}
		if err := r.Decode(&obj); err != nil {
			break
		}
		switch obj.Kind {
		case "Pod":
			var p corev1.Pod
			p.ObjectMeta = obj.Metadata
			if err := json.Unmarshal(obj.Spec, &p.Spec); err != nil {
				t.Fatal(err)
			}
			out = append(out, &p)
		case "Deployment":
			var d struct {
				Template corev1.PodTemplateSpec `json:"template"`
			}
			if err := json.Unmarshal(obj.Spec, &d); err != nil {
				t.Fatal(err)
			}
			p := &corev1.Pod{ObjectMeta: d.Template.ObjectMeta, Spec: d.Template.Spec}
			p.Name = obj.Metadata.Name
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no pods", file)
	}
	return out
}

func create(ctx context.Context, ns string, p *corev1.Pod, dryRun bool) (*corev1.Pod, error) {
	p = p.DeepCopy()
	p.Namespace = ns
	// A generated name: -count=N reruns in the same cluster.
	p.GenerateName, p.Name = p.Name+"-", ""
	opts := metav1.CreateOptions{}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return cluster.Client.CoreV1().Pods(ns).Create(ctx, p, opts)
}

func initName(p *corev1.Pod) string {
	if len(p.Spec.InitContainers) == 0 {
		return ""
	}
	return p.Spec.InitContainers[0].Name
}

func netCaps(p *corev1.Pod) bool {
	for _, c := range p.Spec.InitContainers {
		if sc := c.SecurityContext; sc != nil && sc.Capabilities != nil &&
			(slices.Contains(sc.Capabilities.Add, "NET_ADMIN") || slices.Contains(sc.Capabilities.Add, "NET_RAW")) {
			return true
		}
	}
	return false
}

// setNamespaces creates the test's namespaces.
func setNamespaces(t *testing.T, ctx context.Context) {
	t.Helper()
	for ns, labels := range map[string]map[string]string{
		system: nil, captured: nil, orders: nil, excluded: nil,
		baseline: {"pod-security.kubernetes.io/enforce": "baseline"},
		exclBase: {"pod-security.kubernetes.io/enforce": "baseline"},
	} {
		_, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
}

// setMesh writes the MeshCNI's spec (server-side apply: creates or
// updates it).
func setMesh(t *testing.T, ctx context.Context, enabled bool, exclude ...string) {
	t.Helper()
	list := make([]any, 0, len(exclude))
	for _, ns := range exclude {
		list = append(list, ns)
	}
	obj := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"enabled": enabled, "excludeNamespaces": list}}}
	obj.SetGroupVersionKind(v1alpha1.SchemeGroupVersion.WithKind(v1alpha1.Kind))
	obj.SetName(v1alpha1.Name)
	_, err := dynamic.NewForConfigOrDie(cluster.Config).Resource(v1alpha1.GroupVersionResource).
		Apply(ctx, v1alpha1.Name, obj, metav1.ApplyOptions{FieldManager: "test", Force: true})
	must(t, err)
}

// dryRun creates p in ns as a dry run and reports its first init container
// and the webhook's annotation.
func dryRun(t *testing.T, ctx context.Context, ns string, p *corev1.Pod) (string, string) {
	t.Helper()
	got, err := create(ctx, ns, p, true)
	must(t, err)
	return initName(got), got.Annotations[inject.AnnotationMutated]
}

// waitLeaderAndSecret waits until a replica holds the lease (a new
// identity: the previous run's replica released it) and has synced the
// certificate's Secret; it returns the holder.
func waitLeaderAndSecret(t *testing.T, ctx context.Context) string {
	t.Helper()
	var holder string
	eventually(t, time.Minute, "a replica leads and stores the certificate", func() (string, bool) {
		lease, err := cluster.Client.CoordinationV1().Leases(system).Get(ctx, controller.LeaseName, metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity == "" {
			return fmt.Sprint("lease: ", err), false
		}
		holder = *lease.Spec.HolderIdentity
		sec, err := cluster.Client.CoreV1().Secrets(system).Get(ctx, secretName, metav1.GetOptions{})
		return fmt.Sprint("secret: ", err), err == nil && sec.ResourceVersion != ""
	})
	return holder
}

func sarFor(user string) *authorizationv1.SubjectAccessReview {
	return &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{User: user,
		ResourceAttributes: &authorizationv1.ResourceAttributes{Namespace: system, Verb: "watch", Resource: "secrets", Name: secretName}}}
}

func TestWebhookServedByTheController(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	setNamespaces(t, ctx)
	stock := pods(t, "bookinfo-injected-default.yaml")
	cni := pods(t, "bookinfo-injected-cni.yaml")
	setMesh(t, ctx, true, "kube-system", excluded, exclBase)
	kubeconfig := controllerKubeconfig(t, ctx)
	ctrl := startReplica(t, kubeconfig, time.Hour)
	webhookConfiguration(t, ctx, ctrl.url)

	// The API server picks up the configuration and its CA bundle within
	// seconds; until then failurePolicy Ignore lets the pod through
	// unchanged. Dry-run creates (sideEffects None) show when it calls.
	eventually(t, time.Minute, "the API server calls the controller's webhook", func() (string, bool) {
		init, _ := dryRun(t, ctx, captured, stock[0])
		return "first init container " + init, init == inject.ValidationName
	})
	sec, err := cluster.Client.CoreV1().Secrets(system).Get(ctx, secretName, metav1.GetOptions{})
	if err != nil || len(sec.Data[webhook.KeyCert]) == 0 {
		t.Fatalf("certificate Secret: %v", err)
	}

	t.Run("a re-created webhook configuration gets its CA back at once", func(t *testing.T) {
		// As a re-install or a re-apply without the caBundle would: the
		// leader watches the configuration, it does not wait for its
		// hourly check.
		webhookConfiguration(t, ctx, ctrl.url)
		took := eventually(t, 20*time.Second, "the API server calls the webhook again", func() (string, bool) {
			init, _ := dryRun(t, ctx, captured, stock[0])
			return "first init container " + init, init == inject.ValidationName
		})
		t.Logf("caBundle back in %v", took)
	})
	t.Run("baseline admits the converted Bookinfo pods", func(t *testing.T) {
		for _, p := range stock {
			got, err := create(ctx, baseline, p, false)
			if err != nil {
				t.Fatalf("%s: %v", p.Name, err)
			}
			if initName(got) != inject.ValidationName || netCaps(got) || got.Annotations[inject.AnnotationMutated] != inject.ToValidation {
				t.Errorf("%s: init %s, NET caps %v, annotations %v", p.Name, initName(got), netCaps(got), got.Annotations)
			}
			if got.Annotations["traffic.sidecar.istio.io/includeInboundPorts"] == "" {
				t.Errorf("%s: no CNI-mode annotations: %v", p.Name, got.Annotations)
			}
		}
	})
	t.Run("baseline still rejects stock-injected pods", func(t *testing.T) {
		for _, p := range stock {
			_, err := create(ctx, exclBase, p, false)
			if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "NET_ADMIN") {
				t.Errorf("%s: %v, want PodSecurity's rejection naming NET_ADMIN", p.Name, err)
			}
		}
	})
	t.Run("a pod without Istio's label is not sent", func(t *testing.T) {
		// The configuration's objectSelector: Istio's injector labels
		// every pod it injects security.istio.io/tlsMode. A pod without
		// the label is not sent, even with an istio-init, and keeps it.
		p := stock[0].DeepCopy()
		if _, ok := p.Labels["security.istio.io/tlsMode"]; !ok {
			t.Fatalf("the fixture has no tlsMode label: %v", p.Labels)
		}
		delete(p.Labels, "security.istio.io/tlsMode")
		if init, note := dryRun(t, ctx, captured, p); init != inject.InitName || note != "" {
			t.Errorf("first init container %s, mutated %q; want the pod not sent", init, note)
		}
	})
	t.Run("excluded namespace gets istio-init back", func(t *testing.T) {
		for _, p := range cni {
			got, err := create(ctx, excluded, p, false)
			if err != nil {
				t.Fatalf("%s: %v", p.Name, err)
			}
			if initName(got) != inject.InitName || !netCaps(got) || got.Annotations[inject.AnnotationMutated] != inject.ToInit {
				t.Errorf("%s: init %s, NET caps %v", p.Name, initName(got), netCaps(got))
			}
		}
	})
	t.Run("a namespace excluded in the live resource gets istio-init back without a restart", func(t *testing.T) {
		if init, _ := dryRun(t, ctx, orders, cni[0]); init != inject.ValidationName {
			t.Fatalf("captured %s: first init container %s, want %s left alone", orders, init, inject.ValidationName)
		}
		setMesh(t, ctx, true, "kube-system", excluded, exclBase, orders)
		took := eventually(t, 10*time.Second, "the webhook follows spec.excludeNamespaces", func() (string, bool) {
			init, note := dryRun(t, ctx, orders, cni[0])
			return "first init container " + init, init == inject.InitName && note == inject.ToInit
		})
		t.Logf("the webhook followed the MeshCNI in %v", took)
		if init, _ := dryRun(t, ctx, orders, stock[0]); init != inject.InitName {
			t.Errorf("a stock pod in a newly excluded namespace: first init container %s, want istio-init kept", init)
		}
	})
	t.Run("enabled false leaves every pod unchanged", func(t *testing.T) {
		setMesh(t, ctx, false, "kube-system", excluded, exclBase)
		eventually(t, 10*time.Second, "the webhook follows spec.enabled", func() (string, bool) {
			init, note := dryRun(t, ctx, captured, stock[0])
			return fmt.Sprintf("first init container %s, mutated %q", init, note), init == inject.InitName && note == ""
		})
		for _, p := range cni {
			if init, note := dryRun(t, ctx, excluded, p); init != inject.ValidationName || note != "" {
				t.Errorf("%s in an excluded namespace with meshcni off: init %s, mutated %q; want it unchanged", p.Name, init, note)
			}
		}
		setMesh(t, ctx, true, "kube-system", excluded, exclBase)
		eventually(t, 10*time.Second, "the webhook follows spec.enabled back on", func() (string, bool) {
			init, _ := dryRun(t, ctx, captured, stock[0])
			return "first init container " + init, init == inject.ValidationName
		})
	})
	t.Run("webhook down: pods are created unchanged and keep istio-init", func(t *testing.T) {
		ctrl.stop()
		p := stock[0].DeepCopy()
		p.Name = "while-down"
		got, err := create(ctx, captured, p, false)
		if err != nil {
			t.Fatalf("failurePolicy Ignore should admit: %v", err)
		}
		if initName(got) != inject.InitName || !netCaps(got) || got.Annotations[inject.AnnotationMutated] != "" {
			t.Errorf("init %s, annotations %v: want the stock pod", initName(got), got.Annotations)
		}
	})
}

// TestStandbyServesAndReloads: a second replica, which never leads while
// the first holds the lease, answers the API server's calls with the
// certificate the leader wrote, and serves the leader's renewal without a
// restart.
func TestStandbyServesAndReloads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	setNamespaces(t, ctx)
	stock := pods(t, "bookinfo-injected-default.yaml")
	setMesh(t, ctx, true, "kube-system", excluded, exclBase)
	kubeconfig := controllerKubeconfig(t, ctx)
	leader := startReplica(t, kubeconfig, time.Second)
	holder := waitLeaderAndSecret(t, ctx)
	standby := startReplica(t, kubeconfig, time.Second)
	webhookConfiguration(t, ctx, standby.url)
	eventually(t, time.Minute, "the API server calls the standby", func() (string, bool) {
		init, _ := dryRun(t, ctx, captured, stock[0])
		return "first init container " + init, init == inject.ValidationName
	})
	lease, err := cluster.Client.CoordinationV1().Leases(system).Get(ctx, controller.LeaseName, metav1.GetOptions{})
	must(t, err)
	if lease.Spec.HolderIdentity == nil || *lease.Spec.HolderIdentity != holder {
		t.Fatalf("the lease moved to %v: the standby was not standing by", lease.Spec.HolderIdentity)
	}

	served := func() []byte {
		conn, err := tls.Dial("tcp", standby.addr, &tls.Config{InsecureSkipVerify: true, ServerName: "localhost"}) //nolint:gosec // the certificate is compared byte for byte
		if err != nil {
			return nil
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw
	}
	stored := func() []byte {
		sec, err := cluster.Client.CoreV1().Secrets(system).Get(ctx, secretName, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		blk, _ := pem.Decode(sec.Data[webhook.KeyCert])
		if blk == nil {
			return nil
		}
		return blk.Bytes
	}
	before := stored()
	if !bytes.Equal(served(), before) {
		t.Fatal("the standby does not serve the Secret's certificate")
	}
	// Someone stores a serving certificate of another CA: the leader (and
	// only it) writes a new one of its own CA, the standby serves it.
	foreign, _, err := webhook.Plan(nil, []string{"localhost"}, time.Now())
	must(t, err)
	sec, err := cluster.Client.CoreV1().Secrets(system).Get(ctx, secretName, metav1.GetOptions{})
	must(t, err)
	sec.Data[webhook.KeyCert], sec.Data[webhook.KeyKey] = foreign[webhook.KeyCert], foreign[webhook.KeyKey]
	_, err = cluster.Client.CoreV1().Secrets(system).Update(ctx, sec, metav1.UpdateOptions{FieldManager: "someone"})
	must(t, err)
	took := eventually(t, 30*time.Second, "the standby serves the leader's new certificate", func() (string, bool) {
		now := stored()
		foreignDER, _ := pem.Decode(foreign[webhook.KeyCert])
		return "not yet", now != nil && !bytes.Equal(now, before) && !bytes.Equal(now, foreignDER.Bytes) && bytes.Equal(served(), now)
	})
	t.Logf("renewed and served by the standby in %v", took)
	sec, err = cluster.Client.CoreV1().Secrets(system).Get(ctx, secretName, metav1.GetOptions{})
	must(t, err)
	if !slices.ContainsFunc(sec.ManagedFields, func(f metav1.ManagedFieldsEntry) bool { return f.Manager == webhook.FieldManager }) {
		t.Errorf("the renewal was not written by %s: %+v", webhook.FieldManager, sec.ManagedFields)
	}
	if init, _ := dryRun(t, ctx, captured, stock[0]); init != inject.ValidationName {
		t.Errorf("after the renewal: first init container %s", init)
	}
	leader.stop()
}
