// Package ctl implements meshcnictl: one Options{Complete,Validate,Run} per
// command, with the kubeconfig flags of kubectl (ConfigFlags) and the
// output streams injected, so tests drive each command as a user would.
package ctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
)

// clients are what the cluster-side commands use.
type clients struct {
	kube   kubernetes.Interface
	dyn    dynamic.Interface
	mapper meta.RESTMapper
}

func newClients(getter genericclioptions.RESTClientGetter, needMapper bool) (*clients, error) {
	cfg, err := getter.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w (pass --kubeconfig or set KUBECONFIG)", err)
	}
	c := &clients{}
	if c.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if c.dyn, err = dynamic.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if needMapper {
		if c.mapper, err = getter.ToRESTMapper(); err != nil {
			return nil, fmt.Errorf("discover the API server's resources: %w", err)
		}
	}
	return c, nil
}

// resource returns the client for obj's kind, namespaced when it is.
func (c *clients) resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s %s: the API server does not serve %s: %w", gvk.Kind, obj.GetName(), gvk.GroupVersion(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dyn.Resource(m.Resource).Namespace(obj.GetNamespace()), nil
	}
	return c.dyn.Resource(m.Resource), nil
}

// describe names an object as kubectl does: "daemonset.apps/meshcni-agent".
func describe(obj *unstructured.Unstructured) string {
	gk := schema.FromAPIVersionAndKind(obj.GetAPIVersion(), obj.GetKind()).GroupKind()
	return fmt.Sprintf("%s/%s", strings.ToLower(gk.String()), obj.GetName())
}

// ref names an object for error messages: "DaemonSet meshcni-system/meshcni-agent".
func ref(obj *unstructured.Unstructured) string {
	if obj.GetNamespace() != "" {
		return obj.GetKind() + " " + obj.GetNamespace() + "/" + obj.GetName()
	}
	return obj.GetKind() + " " + obj.GetName()
}

// hint turns API errors into what to do about them.
func hint(err error, verb string, obj *unstructured.Unstructured) error {
	switch {
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s %s: %w: your user may not %s it; meshcnictl enable/disable need cluster-admin rights (check: kubectl auth can-i %s %s)",
			verb, ref(obj), err, verb, verb, obj.GetKind())
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%s %s: %w: the kubeconfig's credentials were refused; log in again or pass --kubeconfig/--context", verb, ref(obj), err)
	}
	return apiHint(fmt.Errorf("%s %s: %w", verb, ref(obj), err), "")
}

// requestTimeout bounds one look at the API during a wait.
const requestTimeout = 30 * time.Second

// apiHint adds what to do to an API error, by its cause: only a 403 gets
// an RBAC hint (with canI, "verb resource", when given), a refused or
// unresolvable connection says the API server is unreachable, a deadline
// says timed out.
func apiHint(err error, canI string) error {
	switch {
	case apierrors.IsForbidden(err):
		if canI == "" {
			return fmt.Errorf("%w: your user lacks the RBAC rights for this", err)
		}
		return fmt.Errorf("%w (check: kubectl auth can-i %s)", err, canI)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%w: the kubeconfig's credentials were refused; log in again or pass --kubeconfig/--context", err)
	case errors.Is(err, syscall.ECONNREFUSED), isDNSError(err):
		return fmt.Errorf("%w: the API server is unreachable; check the kubeconfig's server (--server, --context) and that the API server runs", err)
	case errors.Is(err, context.DeadlineExceeded), apierrors.IsTimeout(err), apierrors.IsServerTimeout(err):
		return fmt.Errorf("%w: timed out waiting for the API server; check the network, or raise --request-timeout", err)
	}
	return err
}

func isDNSError(err error) bool {
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// poll calls fn every interval until it returns true, an error, or ctx ends.
func poll(ctx context.Context, interval time.Duration, fn func(context.Context) (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		done, err := fn(ctx)
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// namespaceFlag is -n/--namespace when given, else "": the install's
// namespace then is the default (enable) or wherever the DaemonSet is found
// (status, disable).
func namespaceFlag(flags *genericclioptions.ConfigFlags) string {
	if flags == nil || flags.Namespace == nil {
		return ""
	}
	return *flags.Namespace
}
