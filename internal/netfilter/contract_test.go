package netfilter

import (
	"context"
	"errors"
	"testing"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/rules"
)

// contract is what every Interface does, the Fake and the Applier alike
// (TestFakeContract here; TestApplierContract runs it on the kernel): the
// same spec twice changes nothing, a different one is a conflict that
// leaves the rules, Check tells the spec from another, Remove leaves none,
// and each family is decided alone (rules.Apply): the IPv4 half of a
// dual-stack capture is already there.
func contract(t *testing.T, a Interface, path string) {
	ctx := context.Background()
	spec := capture.Default()
	spec.IPv6 = true
	other := spec
	other.OutboundPorts = []uint16{8080}
	half := spec
	half.IPv6 = false
	steps := []struct {
		name string
		do   func() error
		want error // nil, ErrConflict or ErrMismatch
	}{
		{"check before any apply", func() error { return a.Check(ctx, path, spec) }, ErrMismatch},
		{"apply", func() error { return a.Apply(ctx, path, spec) }, nil},
		{"apply again", func() error { return a.Apply(ctx, path, spec) }, nil},
		{"check", func() error { return a.Check(ctx, path, spec) }, nil},
		{"apply its IPv4 half", func() error { return a.Apply(ctx, path, half) }, nil},
		{"check its IPv4 half", func() error { return a.Check(ctx, path, half) }, nil},
		{"apply another spec", func() error { return a.Apply(ctx, path, other) }, ErrConflict},
		{"check the other spec", func() error { return a.Check(ctx, path, other) }, ErrMismatch},
		{"remove", func() error { return a.Remove(ctx, path) }, nil},
		{"check after remove", func() error { return a.Check(ctx, path, spec) }, ErrMismatch},
		{"apply the other spec after remove", func() error { return a.Apply(ctx, path, other) }, nil},
		{"check it", func() error { return a.Check(ctx, path, other) }, nil},
	}
	for _, st := range steps {
		err := st.do()
		if (st.want == nil) != (err == nil) || (st.want != nil && !errors.Is(err, st.want)) {
			t.Fatalf("%s: got %v, want %v", st.name, err, st.want)
		}
	}
}

func TestFakeContract(t *testing.T) { contract(t, NewFake(), "/run/netns/pod") }

// The Fake holds tables, not specs: someone else's ISTIO_* chain in the
// netns is a conflict, as on the kernel, and a Remove leaves their
// non-capture rules alone.
func TestFakeKernelState(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	f.SetTables("p", rules.IPv4, Tables{"nat": {":ISTIO_OUTPUT", "-A OUTPUT -j KUBE-SERVICES"}})
	if err := f.Apply(ctx, "p", capture.Default()); !errors.Is(err, ErrConflict) {
		t.Fatalf("apply over a foreign ISTIO chain: %v", err)
	}
	if _, ok := f.Spec("p"); ok {
		t.Fatal("a refused apply recorded its spec")
	}
	if err := f.Remove(ctx, "p"); err != nil {
		t.Fatal(err)
	}
	if got := f.Tables("p", rules.IPv4); len(got["nat"]) != 1 || got["nat"][0] != "-A OUTPUT -j KUBE-SERVICES" {
		t.Fatalf("remove took more than the capture: %v", got)
	}
	if err := f.Apply(ctx, "p", capture.Default()); err != nil {
		t.Fatal(err)
	}
	if got := f.Tables("p", rules.IPv4)["nat"]; got[0] != "-A OUTPUT -j KUBE-SERVICES" || len(got) < 10 {
		t.Fatalf("apply beside another rule: %v", got)
	}
}
