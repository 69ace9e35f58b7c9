package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
)

// The controller's release: the CRD and the chart rendered without the
// node side (the controller Deployment, its RBAC, the webhook), which the
// controller then completes from the MeshCNI.
const (
	ControllerName     = "meshcni-controller"
	ControllerSelector = "app.kubernetes.io/name=meshcni,app.kubernetes.io/component=controller"
)

var (
	crdGVR        = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	deploymentGVR = schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}
)

// CRDName is the MeshCNI CRD's name.
const CRDName = v1alpha1.Resource + "." + v1alpha1.Group

// Release is the controller's release as meshcnictl installs it: the CRD,
// then the chart's objects in apply order. values are --set overrides.
func Release(values map[string]any, namespace string) (crd *unstructured.Unstructured, m *chart.Manifest, err error) {
	if crd, err = chart.CRD(); err != nil {
		return nil, nil, err
	}
	v := map[string]any{}
	for k, val := range values {
		v[k] = val
	}
	// nodeSide false: the controller renders the node side itself. The
	// namespace, with its privileged Pod Security level, since meshcnictl
	// has no --create-namespace.
	v["nodeSide"], v["createNamespace"] = false, true
	m, err = chart.Render(v, namespace, FieldManager)
	return crd, m, err
}

// releaseState is what enable finds of the controller's release.
type releaseState struct {
	crd bool
	// namespaces holding a meshcni-controller Deployment.
	namespaces []string
}

func findRelease(ctx context.Context, c *cmdutil.Clients) (releaseState, error) {
	var st releaseState
	_, err := c.Dyn.Resource(crdGVR).Get(ctx, CRDName, metav1.GetOptions{})
	switch {
	case err == nil:
		st.crd = true
	case !apierrors.IsNotFound(err):
		return st, cmdutil.APIHint(fmt.Errorf("get CustomResourceDefinition %s: %w", CRDName, err), "get customresourcedefinitions")
	}
	list, err := c.Dyn.Resource(deploymentGVR).List(ctx, metav1.ListOptions{LabelSelector: ControllerSelector})
	if err != nil {
		return st, cmdutil.APIHint(fmt.Errorf("look for the %s Deployment: %w", ControllerName, err), "list deployments -A")
	}
	for _, d := range list.Items {
		if d.GetName() == ControllerName {
			st.namespaces = append(st.namespaces, d.GetNamespace())
		}
	}
	slices.Sort(st.namespaces)
	return st, nil
}

// applyRelease server-side applies the CRD and the release's objects
// (field manager meshcnictl, forced, as helm upgrade takes fields back),
// waiting for the CRD to be served before anything uses it.
func applyRelease(ctx context.Context, c *cmdutil.Clients, crd *unstructured.Unstructured, m *chart.Manifest, out io.Writer) error {
	opts := metav1.ApplyOptions{FieldManager: FieldManager, Force: true}
	if _, err := c.Dyn.Resource(crdGVR).Apply(ctx, crd.GetName(), crd, opts); err != nil {
		return cmdutil.Hint(err, "apply", crd)
	}
	fmt.Fprintf(out, "%s serverside-applied\n", cmdutil.Describe(crd))
	if err := waitCRD(ctx, c, time.Minute); err != nil {
		return err
	}
	for _, obj := range m.Objects {
		rc, err := c.Resource(obj)
		if err != nil {
			return err
		}
		if _, err := rc.Apply(ctx, obj.GetName(), obj, opts); err != nil {
			return cmdutil.Hint(err, "apply", obj)
		}
		fmt.Fprintf(out, "%s serverside-applied\n", cmdutil.Describe(obj))
	}
	return nil
}

// waitCRD waits until the CRD is Established and the API server serves
// MeshCNIs (its storage may lag the condition by a moment).
func waitCRD(ctx context.Context, c *cmdutil.Clients, timeout time.Duration) error {
	err := cmdutil.Poll(ctx, timeout, 100*time.Millisecond, func(ctx context.Context) (bool, error) {
		got, err := c.Dyn.Resource(crdGVR).Get(ctx, CRDName, metav1.GetOptions{})
		if err != nil {
			return false, cmdutil.APIHint(fmt.Errorf("get CustomResourceDefinition %s: %w", CRDName, err), "")
		}
		if !established(got) {
			return false, nil
		}
		_, err = meshcnis(c).List(ctx, metav1.ListOptions{Limit: 1})
		return err == nil, nil
	})
	if errors.Is(err, cmdutil.ErrTimeout) {
		return fmt.Errorf("the CustomResourceDefinition %s was not Established after %v: kubectl describe crd %s", CRDName, timeout, CRDName)
	}
	return err
}

func established(crd *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
	for _, c := range conds {
		if m, _ := c.(map[string]any); m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

// purgeRelease deletes the release's objects in reverse apply order, the
// namespace only if meshcnictl created it, then the CRD. The MeshCNI must
// be gone first: deleting the CRD with it present would leave it stuck on
// the controller's finalizer once the controller is gone.
func purgeRelease(ctx context.Context, c *cmdutil.Clients, namespace string, out io.Writer) error {
	crd, m, err := Release(nil, namespace)
	if err != nil {
		return err
	}
	objs := slices.Clone(m.Objects)
	slices.Reverse(objs)
	policy := metav1.DeletePropagationBackground
	for _, obj := range objs {
		rc, err := c.Resource(obj)
		if err != nil {
			return err
		}
		if obj.GetKind() == "Namespace" {
			live, err := rc.Get(ctx, obj.GetName(), metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return cmdutil.Hint(err, "get", obj)
			}
			if live.GetLabels()["app.kubernetes.io/managed-by"] != FieldManager {
				fmt.Fprintf(out, "%s kept: meshcnictl did not create it\n", cmdutil.Describe(obj))
				continue
			}
		}
		err = rc.Delete(ctx, obj.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return cmdutil.Hint(err, "delete", obj)
		}
		fmt.Fprintf(out, "%s deleted\n", cmdutil.Describe(obj))
	}
	err = c.Dyn.Resource(crdGVR).Delete(ctx, crd.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return cmdutil.Hint(err, "delete", crd)
	default:
		fmt.Fprintf(out, "%s deleted\n", cmdutil.Describe(crd))
	}
	return nil
}
