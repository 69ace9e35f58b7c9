//go:build integration

package controller

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"helm.sh/helm/v3/pkg/action"
	helmchart "helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/releaseutil"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/test/kubeharness"
)

// helmRelease and helmNamespace are what the README and NOTES tell a user
// to type: helm install meshcni charts/meshcni -n meshcni-system --create-namespace.
const (
	helmRelease   = "meshcni"
	helmNamespace = "meshcni-system"
)

// helmConfig is what the helm CLI builds from --kubeconfig and -n: an
// action.Configuration over a RESTClientGetter, storing releases in
// Secrets (Helm's default driver).
func helmConfig(t *testing.T, c *kubeharness.Cluster) *action.Configuration {
	t.Helper()
	flags := genericclioptions.NewConfigFlags(false)
	kubeconfig, namespace := c.AdminKubeconfig, helmNamespace
	flags.KubeConfig, flags.Namespace = &kubeconfig, &namespace
	cfg := new(action.Configuration)
	if err := cfg.Init(flags, helmNamespace, "secret", func(format string, v ...any) { t.Logf("helm: "+format, v...) }); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// loadChart reads charts/meshcni from the directory, as `helm install
// meshcni charts/meshcni` does.
func loadChart(t *testing.T) *helmchart.Chart {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	chrt, err := loader.Load(filepath.Join(filepath.Dir(file), "..", "..", "charts", "meshcni"))
	if err != nil {
		t.Fatal(err)
	}
	return chrt
}

// releaseObjects are the objects of a release's manifest (templates/ only:
// Helm keeps crds/ out of it).
func releaseObjects(t *testing.T, manifest string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	for _, doc := range releaseutil.SplitManifests(manifest) {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
			t.Fatal(err)
		}
		if len(obj.Object) > 0 {
			objs = append(objs, obj)
		}
	}
	return objs
}

// helmWait polls cond until it holds or ctx ends: a bounded wait, no sleep
// standing in for a condition.
func helmWait(ctx context.Context, t *testing.T, what string, cond func() (string, bool)) {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		state, ok := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: still %s after the deadline", what, state)
		case <-tick.C:
		}
	}
}

// TestHelmInstallUpgradeUninstall runs issue 17's "Done when" for Helm
// on a fresh API server with Helm's own SDK, as the helm CLI does:
// install -n meshcni-system --create-namespace, a second install, two
// upgrades and uninstall.
func TestHelmInstallUpgradeUninstall(t *testing.T) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	// A fresh API server: the package's shared one already has the CRD
	// and the namespace, which would hide what Helm creates.
	c := kubeharness.StartT(t, kubeharness.Options{})
	cs := kubernetes.NewForConfigOrDie(c.Config)
	dyn := dynamic.NewForConfigOrDie(c.Config)
	chrt := loadChart(t)
	cfg := helmConfig(t, c)

	// 1. install -n meshcni-system --create-namespace.
	install := action.NewInstall(cfg)
	install.ReleaseName, install.Namespace, install.CreateNamespace = helmRelease, helmNamespace, true
	rel, err := install.RunWithContext(ctx, chrt, nil)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	objs := releaseObjects(t, rel.Manifest)
	kinds := map[string]bool{}
	for _, obj := range objs {
		kinds[obj.GetKind()] = true
		if obj.GetKind() == "Namespace" {
			t.Errorf("the release renders Namespace %s: Helm's --create-namespace must own it, or uninstall deletes it", obj.GetName())
		}
		if obj.GetKind() == "CustomResourceDefinition" {
			t.Errorf("CRD %s is a template: it belongs in crds/", obj.GetName())
		}
	}
	for _, k := range []string{"Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "MutatingWebhookConfiguration"} {
		if !kinds[k] {
			t.Errorf("the release has no %s (kinds: %v)", k, kinds)
		}
	}
	// The namespace is Helm's (its "name" label, none of the chart's).
	nsObj, err := cs.CoreV1().Namespaces().Get(ctx, helmNamespace, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("namespace: %v", err)
	}
	if nsObj.Labels["name"] != helmNamespace || nsObj.Labels["app.kubernetes.io/managed-by"] != "" {
		t.Errorf("namespace labels %v: want Helm's {name: %s} only", nsObj.Labels, helmNamespace)
	}

	// Every object exists, with the standard labels, in the release namespace.
	disc := discovery.NewDiscoveryClientForConfigOrDie(c.Config)
	groups, err := restmapper.GetAPIGroupResources(disc)
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDiscoveryRESTMapper(groups)
	get := func(obj *unstructured.Unstructured) (*unstructured.Unstructured, error) {
		gvk := obj.GroupVersionKind()
		m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			t.Fatalf("%s: %v", gvk, err)
		}
		if m.Scope.Name() == meta.RESTScopeNameNamespace {
			return dyn.Resource(m.Resource).Namespace(helmNamespace).Get(ctx, obj.GetName(), metav1.GetOptions{})
		}
		return dyn.Resource(m.Resource).Get(ctx, obj.GetName(), metav1.GetOptions{})
	}
	for _, obj := range objs {
		got, err := get(obj)
		if err != nil {
			t.Errorf("%s %s: %v", obj.GetKind(), obj.GetName(), err)
			continue
		}
		l := got.GetLabels()
		if l["app.kubernetes.io/instance"] != helmRelease || l["app.kubernetes.io/managed-by"] != "Helm" {
			t.Errorf("%s %s labels %v: want instance=%s, managed-by=Helm", obj.GetKind(), obj.GetName(), l, helmRelease)
		}
		if ns := got.GetNamespace(); ns != "" && ns != helmNamespace {
			t.Errorf("%s %s is in namespace %s, not the release's", obj.GetKind(), obj.GetName(), ns)
		}
	}

	// The CRD from crds/ is created and Established.
	crdName := ""
	for _, f := range chrt.CRDObjects() {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(f.File.Data, &obj.Object); err != nil {
			t.Fatal(err)
		}
		crdName = obj.GetName()
	}
	if crdName == "" {
		t.Fatal("the chart has no crds/")
	}
	established := func() (string, bool) {
		got, err := dyn.Resource(crdGVR).Get(ctx, crdName, metav1.GetOptions{})
		if err != nil {
			return err.Error(), false
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, cond := range conds {
			if m, _ := cond.(map[string]any); m["type"] == "Established" {
				return fmt.Sprintf("Established=%v", m["status"]), m["status"] == "True"
			}
		}
		return "not Established", false
	}
	helmWait(ctx, t, "CRD "+crdName, established)

	// The NOTES render and name the release namespace.
	if !strings.Contains(rel.Info.Notes, "installed in "+helmNamespace) || !strings.Contains(rel.Info.Notes, "kubectl get meshcni") {
		t.Errorf("NOTES:\n%s", rel.Info.Notes)
	}

	// 2. A second install: Helm refuses the name, before touching the namespace.
	again := action.NewInstall(cfg)
	again.ReleaseName, again.Namespace, again.CreateNamespace = helmRelease, helmNamespace, true
	if _, err := again.RunWithContext(ctx, chrt, nil); err == nil || !strings.Contains(err.Error(), "cannot re-use a name") {
		t.Errorf("second install: got %v, want Helm's \"cannot re-use a name\"", err)
	}

	// 3. upgrade with the same chart and values: the controller's pod
	// template is untouched (nothing rolls); a changed value rolls it.
	deploy := func() (*metav1.ObjectMeta, any) {
		d, err := cs.AppsV1().Deployments(helmNamespace).Get(ctx, "meshcni-controller", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return &d.ObjectMeta, d.Spec.Template
	}
	before, tmplBefore := deploy()
	upgrade := action.NewUpgrade(cfg)
	upgrade.Namespace = helmNamespace
	if _, err := upgrade.RunWithContext(ctx, helmRelease, chrt, nil); err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	after, tmplAfter := deploy()
	if !apiequality.Semantic.DeepEqual(tmplBefore, tmplAfter) {
		t.Errorf("an upgrade with nothing changed changes the controller's pod template:\nbefore %+v\nafter  %+v", tmplBefore, tmplAfter)
	}
	if after.Generation != before.Generation {
		t.Errorf("an upgrade with nothing changed moves the Deployment's generation %d -> %d", before.Generation, after.Generation)
	}
	upgrade = action.NewUpgrade(cfg)
	upgrade.Namespace = helmNamespace
	if _, err := upgrade.RunWithContext(ctx, helmRelease, chrt, map[string]any{"controller": map[string]any{"logLevel": "debug"}}); err != nil {
		t.Fatalf("upgrade controller.logLevel=debug: %v", err)
	}
	_, tmplDebug := deploy()
	if apiequality.Semantic.DeepEqual(tmplAfter, tmplDebug) {
		t.Error("controller.logLevel=debug leaves the controller's pod template as it was: the controller would not restart with it")
	}

	// 4. uninstall: everything the release created goes, except the
	// namespace (Helm's --create-namespace never deletes it) and the CRD
	// (Helm never deletes crds/: removing it would delete every MeshCNI
	// resource; a user deletes it with kubectl, on purpose).
	if _, err := action.NewUninstall(cfg).Run(helmRelease); err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	for _, obj := range objs {
		helmWait(ctx, t, obj.GetKind()+" "+obj.GetName()+" deleted", func() (string, bool) {
			_, err := get(obj)
			return fmt.Sprint(err), apierrors.IsNotFound(err)
		})
	}
	// Helm's own record (the release Secrets) goes too, so a new install works.
	secrets, err := cs.CoreV1().Secrets(helmNamespace).List(ctx, metav1.ListOptions{LabelSelector: "owner=helm,name=" + helmRelease})
	if err != nil || len(secrets.Items) != 0 {
		t.Errorf("release secrets after uninstall: %d, %v", len(secrets.Items), err)
	}
	nsObj, err = cs.CoreV1().Namespaces().Get(ctx, helmNamespace, metav1.GetOptions{})
	if err != nil || nsObj.Status.Phase != "Active" || nsObj.DeletionTimestamp != nil {
		t.Errorf("namespace after uninstall: %v, %v", nsObj, err)
	}
	if state, ok := established(); !ok {
		t.Errorf("CRD %s after uninstall: %s (Helm keeps crds/)", crdName, state)
	}
	if d := time.Since(start); d > 60*time.Second {
		t.Errorf("took %v", d)
	}
	t.Logf("install, upgrade twice, uninstall in %v", time.Since(start).Round(time.Millisecond))
}
