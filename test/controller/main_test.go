//go:build integration

// Package controller tests the MeshCNI resource and meshcni-controller
// against a real kube-apiserver: the CRD's schema, and the controller
// reconciling the node side and the status (the test plays the DaemonSet
// controller and the kubelet, as test/ctl does).
package controller

import (
	"context"
	"os"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/charts"
	"github.com/meshcni/meshcni/test/kubeharness"
)

var cluster *kubeharness.Cluster

func TestMain(m *testing.M) {
	os.Exit(kubeharness.RunTests(crdInstalled{m}, kubeharness.Options{}, &cluster))
}

// crdInstalled installs the chart's CRD before the tests run.
type crdInstalled struct{ m *testing.M }

func (r crdInstalled) Run() int {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := installCRD(ctx); err != nil {
		os.Stderr.WriteString("install CRD: " + err.Error() + "\n")
		return 1
	}
	return r.m.Run()
}

var crdGVR = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

func installCRD(ctx context.Context) error {
	data, err := charts.FS.ReadFile("meshcni/crds/meshcni.io_meshcnis.yaml")
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{}
	if err := yaml.Unmarshal(data, &obj.Object); err != nil {
		return err
	}
	dyn := dynamic.NewForConfigOrDie(cluster.Config)
	if _, err := dyn.Resource(crdGVR).Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "test", Force: true}); err != nil {
		return err
	}
	// Established: the API server serves the resource.
	for {
		got, err := dyn.Resource(crdGVR).Get(ctx, obj.GetName(), metav1.GetOptions{})
		if err != nil {
			return err
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, c := range conds {
			if m, _ := c.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
				// Discovery and the storage may still lag the condition.
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
						return ctx.Err()
					case <-time.After(50 * time.Millisecond):
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
