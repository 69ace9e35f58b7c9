package cmdutil

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// The hint matches the cause: a write into a namespace being deleted is a
// 403 too, but no RBAC hint fixes it.
func TestHintsMatchTheCause(t *testing.T) {
	sa := &unstructured.Unstructured{}
	sa.SetAPIVersion("v1")
	sa.SetKind("ServiceAccount")
	sa.SetNamespace("meshcni-system")
	sa.SetName("meshcni-controller")
	gr := schema.GroupResource{Resource: "serviceaccounts"}
	terminating := apierrors.NewForbidden(gr, "meshcni-controller", errors.New("unable to create new content in namespace meshcni-system because it is being terminated"))
	terminating.ErrStatus.Details.Causes = []metav1.StatusCause{{Type: corev1.NamespaceTerminatingCause, Field: "meshcni-system"}}
	rbac := apierrors.NewForbidden(gr, "meshcni-controller", errors.New(`User "dev" cannot create resource "serviceaccounts"`))
	for _, tc := range []struct {
		name      string
		err       error
		want, not string
	}{
		{"terminating", Hint(terminating, "apply", sa), "namespace meshcni-system is being deleted; wait until it is gone", "can-i"},
		{"terminating, no object", APIHint(terminating, "create serviceaccounts"), "its namespace is being deleted", "can-i"},
		{"rbac", Hint(rbac, "apply", sa), "kubectl auth can-i apply ServiceAccount", "being deleted"},
		{"rbac, no object", APIHint(rbac, "create serviceaccounts"), "kubectl auth can-i create serviceaccounts", "being deleted"},
		{"refused", APIHint(fmt.Errorf("get: %w", syscall.ECONNREFUSED), "get pods"), "the API server is unreachable", "can-i"},
		{"deadline", APIHint(fmt.Errorf("get: %w", context.DeadlineExceeded), "get pods"), "timed out", "can-i"},
		{"unauthorized", APIHint(apierrors.NewUnauthorized("bad token"), "get pods"), "credentials were refused", "can-i"},
	} {
		if msg := tc.err.Error(); !strings.Contains(msg, tc.want) || strings.Contains(msg, tc.not) {
			t.Errorf("%s: %q: want %q, not %q", tc.name, msg, tc.want, tc.not)
		}
	}
}

// Poll ends with ErrTimeout at its timeout, and every call of fn gets a
// live context of its own, even the last one before the timeout (the
// rate-limiter error at even timeouts).
func TestPollTimeout(t *testing.T) {
	calls := 0
	err := Poll(context.Background(), 50*time.Millisecond, 10*time.Millisecond, func(ctx context.Context) (bool, error) {
		calls++
		if dl, ok := ctx.Deadline(); !ok || time.Until(dl) < RequestTimeout/2 {
			return false, fmt.Errorf("call %d: deadline %v: not its own", calls, dl)
		}
		return false, nil
	})
	if !errors.Is(err, ErrTimeout) || calls < 2 {
		t.Fatalf("Poll = %v after %d calls, want ErrTimeout after several", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Poll(ctx, time.Minute, time.Millisecond, func(context.Context) (bool, error) { return false, nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled Poll = %v", err)
	}
}
