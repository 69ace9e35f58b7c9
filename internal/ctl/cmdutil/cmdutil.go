// Package cmdutil holds what every meshcnictl command shares: the
// Options{Complete,Validate,Run} runner, the API clients built from
// kubectl's connection flags, the release namespace (-n), and errors whose
// hints match their cause.
package cmdutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/meshcni/meshcni/internal/chart"
)

// Options is a command's Options{Complete,Validate,Run} (sample-cli-plugin).
type Options interface {
	Complete() error
	Validate() error
	Run(context.Context) error
}

// RunE runs a command that takes no arguments: Complete, Validate, Run.
func RunE(o Options) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if err := o.Complete(); err != nil {
			return err
		}
		if err := o.Validate(); err != nil {
			return err
		}
		return o.Run(cmd.Context())
	}
}

// Platforms are the node layouts values.yaml knows, for flag help and errors.
var Platforms = []string{"default", "gke", "k3s", "openshift"}

// Namespace is the release namespace: -n/--namespace when given, else the
// chart's default, meshcni-system.
func Namespace(flags *genericclioptions.ConfigFlags) string {
	if flags == nil || flags.Namespace == nil || *flags.Namespace == "" {
		return chart.DefaultNamespace
	}
	return *flags.Namespace
}

// Clients are what the cluster-side commands use.
type Clients struct {
	Kube   kubernetes.Interface
	Dyn    dynamic.Interface
	Mapper meta.RESTMapper
}

// NewClients builds clients from kubectl's flags; with needMapper, a
// discovery-backed REST mapper for objects of any kind.
func NewClients(getter genericclioptions.RESTClientGetter, needMapper bool) (*Clients, error) {
	cfg, err := getter.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w (pass --kubeconfig or set KUBECONFIG)", err)
	}
	c := &Clients{}
	if c.Kube, err = kubernetes.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if c.Dyn, err = dynamic.NewForConfig(cfg); err != nil {
		return nil, err
	}
	if needMapper {
		if c.Mapper, err = getter.ToRESTMapper(); err != nil {
			return nil, fmt.Errorf("discover the API server's resources: %w", err)
		}
	}
	return c, nil
}

// Resource returns the client for obj's kind, namespaced when it is.
func (c *Clients) Resource(obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := c.Mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("%s %s: the API server does not serve %s: %w", gvk.Kind, obj.GetName(), gvk.GroupVersion(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.Dyn.Resource(m.Resource).Namespace(obj.GetNamespace()), nil
	}
	return c.Dyn.Resource(m.Resource), nil
}

// Describe names an object as kubectl does: "daemonset.apps/meshcni-agent".
func Describe(obj *unstructured.Unstructured) string {
	gk := schema.FromAPIVersionAndKind(obj.GetAPIVersion(), obj.GetKind()).GroupKind()
	return fmt.Sprintf("%s/%s", strings.ToLower(gk.String()), obj.GetName())
}

// Ref names an object for error messages: "DaemonSet meshcni-system/meshcni-agent".
func Ref(obj *unstructured.Unstructured) string {
	if obj.GetNamespace() != "" {
		return obj.GetKind() + " " + obj.GetNamespace() + "/" + obj.GetName()
	}
	return obj.GetKind() + " " + obj.GetName()
}

// Hint turns an API error about obj into what to do about it.
func Hint(err error, verb string, obj *unstructured.Unstructured) error {
	switch {
	case terminating(err):
		return fmt.Errorf("%s %s: %w: namespace %s is being deleted; wait until it is gone (kubectl get namespace %s), then run again",
			verb, Ref(obj), err, obj.GetNamespace(), obj.GetNamespace())
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s %s: %w: your user may not %s it; meshcnictl enable/disable need cluster-admin rights (check: kubectl auth can-i %s %s)",
			verb, Ref(obj), err, verb, verb, obj.GetKind())
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%s %s: %w: the kubeconfig's credentials were refused; log in again or pass --kubeconfig/--context", verb, Ref(obj), err)
	}
	return APIHint(fmt.Errorf("%s %s: %w", verb, Ref(obj), err), "")
}

// RequestTimeout bounds one look at the API during a wait.
const RequestTimeout = 30 * time.Second

// APIHint adds what to do to an API error, by its cause: only a 403 gets
// an RBAC hint (with canI, "verb resource", when given), a refused or
// unresolvable connection says the API server is unreachable, a deadline
// says timed out.
func APIHint(err error, canI string) error {
	switch {
	case terminating(err):
		return fmt.Errorf("%w: its namespace is being deleted; wait until it is gone, then run again", err)
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

// terminating tells a write refused because its namespace is being
// deleted: a 403 like RBAC's, with another cause and another fix.
func terminating(err error) bool {
	return apierrors.IsForbidden(err) && apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause)
}

func isDNSError(err error) bool {
	var dns *net.DNSError
	return errors.As(err, &dns)
}

// ErrTimeout is what Poll returns when its timeout passes.
var ErrTimeout = errors.New("timed out")

// Poll calls fn every interval until it returns true or an error, ctx
// ends, or timeout passes (ErrTimeout). Each call of fn gets its own
// deadline (RequestTimeout) under ctx, never the wait's: client-go's rate
// limiter refuses a request whose wait would carry it past its context's
// deadline, which turned a wait's timeout into a rate-limiter error.
func Poll(ctx context.Context, timeout, interval time.Duration, fn func(context.Context) (bool, error)) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, RequestTimeout)
		done, err := fn(rctx)
		cancel()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return ErrTimeout
		case <-tick.C:
		}
	}
}
