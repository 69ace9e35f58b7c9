package controller

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

func TestReconcileResult(t *testing.T) {
	conflict := apierrors.NewConflict(schema.GroupResource{Group: "meshcni.io", Resource: "meshcnis"}, "default", errors.New("changed"))
	cases := []struct {
		again bool
		err   error
		want  string
	}{
		{false, nil, resultSuccess},
		{true, nil, resultRequeue},
		{false, conflict, resultConflict},
		{false, errors.New("apply DaemonSet: forbidden"), resultError},
		{true, errors.New("list: timeout"), resultError},
	}
	for _, tc := range cases {
		if got := reconcileResult(tc.again, tc.err); got != tc.want {
			t.Errorf("(%v, %v): %s, want %s", tc.again, tc.err, got, tc.want)
		}
	}
	// Every result is exported from the start, at 0 or more.
	if n := testutil.CollectAndCount(reconciles); n != 4 {
		t.Errorf("%d reconcile series, want 4", n)
	}
}
