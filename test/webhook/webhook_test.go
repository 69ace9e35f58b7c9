//go:build integration

// Package webhook_test runs meshcni-webhook against a real kube-apiserver
// (test/kubeharness): a real MutatingWebhookConfiguration, pods created
// through the API, PodSecurity admission after the webhook, and the
// webhook down.
package webhook_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/meshcni/meshcni/internal/inject"
	"github.com/meshcni/meshcni/internal/webhook"
	"github.com/meshcni/meshcni/test/kubeharness"
)

var cluster *kubeharness.Cluster

func TestMain(m *testing.M) { os.Exit(kubeharness.RunTests(m, kubeharness.Options{}, &cluster)) }

const (
	system   = "meshcni-system"
	captured = "shop"
	baseline = "shop-baseline"   // PodSecurity baseline, enforced
	excluded = "legacy"          // excluded by meshcni
	exclBase = "legacy-baseline" // excluded and baseline
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

// server runs the webhook on loopback, called by URL as https://localhost
// (the harness has no Service routing), with its own certificates.
type server struct {
	stop func()
	done chan struct{}
}

func startWebhook(t *testing.T, ctx context.Context) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("https://localhost:%d/mutate", ln.Addr().(*net.TCPAddr).Port)
	ignore, none, reinvoke := admissionregistrationv1.Ignore, admissionregistrationv1.SideEffectClassNone, admissionregistrationv1.IfNeededReinvocationPolicy
	timeout, scope := int32(5), admissionregistrationv1.NamespacedScope
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "meshcni-webhook"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{{
			Name: "pods.webhook.meshcni.io", AdmissionReviewVersions: []string{"v1"},
			SideEffects: &none, FailurePolicy: &ignore, ReinvocationPolicy: &reinvoke, TimeoutSeconds: &timeout,
			ClientConfig: admissionregistrationv1.WebhookClientConfig{URL: &url},
			Rules: []admissionregistrationv1.RuleWithOperations{{
				Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
				Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}, Scope: &scope},
			}},
			NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{
				Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: []string{system, "kube-system"}}}},
			MatchConditions: []admissionregistrationv1.MatchCondition{{Name: "istio-injected",
				Expression: "has(object.spec.initContainers) && object.spec.initContainers.exists(c, c.name == 'istio-init' || c.name == 'istio-validation')"}},
		}},
	}
	api := cluster.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	_ = api.Delete(ctx, mwc.Name, metav1.DeleteOptions{})
	if _, err := api.Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	certs := &webhook.Certs{Client: cluster.Client, Namespace: system, Service: "meshcni-webhook", Secret: "meshcni-webhook-tls",
		WebhookConfiguration: mwc.Name, DNSNames: []string{"localhost"}}
	sctx, cancel := context.WithCancel(ctx)
	s := &server{stop: cancel, done: make(chan struct{})}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	go func() {
		defer close(s.done)
		if err := webhook.Serve(sctx, ln, &webhook.Handler{Excluded: []string{system, "kube-system", excluded, exclBase}, Log: log}, certs, time.Hour, log); err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	t.Cleanup(func() { s.stop(); <-s.done })
	return s
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

func TestWebhookAgainstTheAPIServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for ns, labels := range map[string]map[string]string{
		system: nil, captured: nil, excluded: nil,
		baseline: {"pod-security.kubernetes.io/enforce": "baseline"},
		exclBase: {"pod-security.kubernetes.io/enforce": "baseline"},
	} {
		_, err := cluster.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: labels}}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	stock := pods(t, "bookinfo-injected-default.yaml")
	cni := pods(t, "bookinfo-injected-cni.yaml")
	srv := startWebhook(t, ctx)

	// The API server picks up the configuration and its CA bundle within
	// seconds; until then failurePolicy Ignore lets the pod through
	// unchanged. Dry-run creates (sideEffects None) show when it calls.
	deadline := time.Now().Add(60 * time.Second)
	for {
		p, err := create(ctx, captured, stock[0], true)
		if err != nil {
			t.Fatal(err)
		}
		if initName(p) == inject.ValidationName {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API server never called the webhook: %s\n%s", initName(p), cluster.LogTail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
	sec, err := cluster.Client.CoreV1().Secrets(system).Get(ctx, "meshcni-webhook-tls", metav1.GetOptions{})
	if err != nil || len(sec.Data[webhook.KeyCert]) == 0 {
		t.Fatalf("certificate Secret: %v", err)
	}

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
	t.Run("webhook down: pods are created unchanged and keep istio-init", func(t *testing.T) {
		srv.stop()
		<-srv.done
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
