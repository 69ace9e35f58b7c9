//go:build integration

package netfilter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/rules"
)

// nftIn runs nft inside the netns, as a tamperer would.
func nftIn(t *testing.T, n ns.NetNS, args ...string) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		_, err := ExecRunner(context.Background(), nil, "", "nft", args...)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A new pod costs no exec (one netlink transaction); a repeated apply compares
// what is there with the spec as the kernel prints it.
func TestNftablesExecs(t *testing.T) {
	ctx := context.Background()
	n := newNS(t)
	var execs atomic.Int64
	a := countingApplier(Options{Backend: Nftables, LockDir: t.TempDir()}, &execs)
	spec := capture.Default()
	spec.Mode, spec.RedirectDNS, spec.CaptureAllDNS, spec.IPv6 = capture.TProxy, true, true, true
	for _, step := range []struct {
		name  string
		fn    func() error
		execs int64
	}{
		{"apply to a new netns", func() error { return a.Apply(ctx, n.Path(), spec) }, 0},
		{"apply again", func() error { return a.Apply(ctx, n.Path(), spec) }, 3},
		{"check", func() error { return a.Check(ctx, n.Path(), spec) }, 3},
		{"remove", func() error { return a.Remove(ctx, n.Path()) }, 1},
		{"remove again", func() error { return a.Remove(ctx, n.Path()) }, 0},
	} {
		execs.Store(0)
		if err := step.fn(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got := execs.Load(); got != step.execs {
			t.Errorf("%s: %d execs, want %d", step.name, got, step.execs)
		}
	}
}

// Auto follows meshcni's nftables table when a netns has one, so that the
// agent and verify read a pod the way it was programmed.
func TestNftablesAutoDetected(t *testing.T) {
	ctx := context.Background()
	n := newNS(t)
	spec := capture.Default()
	if err := New(Options{Backend: Nftables, LockDir: t.TempDir()}).Apply(ctx, n.Path(), spec); err != nil {
		t.Fatal(err)
	}
	auto := New(Options{LockDir: t.TempDir()})
	out, backend, err := auto.Save(ctx, n.Path(), rules.IPv4)
	if err != nil || backend != Nftables || !strings.HasPrefix(out, "table ip meshcni {") {
		t.Fatalf("auto: backend %q, err %v, save:\n%s", backend, err, out)
	}
	if out, _, _ := auto.Save(ctx, n.Path(), rules.IPv6); out != "" {
		t.Fatalf("an IPv4-only spec programmed IPv6:\n%s", out)
	}
	if err := auto.Check(ctx, n.Path(), spec); err != nil {
		t.Fatal(err)
	}
	if err := auto.Remove(ctx, n.Path()); err != nil {
		t.Fatal(err)
	}
	if _, backend, _ := auto.Save(ctx, n.Path(), rules.IPv4); backend == Nftables {
		t.Fatal("auto still picks nftables after remove")
	}
}

// Check names what differs; Apply refuses to replace it.
func TestNftablesTamperedIsNamed(t *testing.T) {
	ctx := context.Background()
	n := newNS(t)
	a := New(Options{Backend: Nftables, LockDir: t.TempDir()})
	spec := capture.Default()
	if err := a.Apply(ctx, n.Path(), spec); err != nil {
		t.Fatal(err)
	}
	nftIn(t, n, "add", "rule", "ip", "meshcni", "istio_output", "tcp", "dport", "9999", "return")
	nftIn(t, n, "flush", "chain", "ip", "meshcni", "istio_redirect")
	err := a.Check(ctx, n.Path(), spec)
	t.Logf("check: %v", err)
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("want ErrMismatch, got %v", err)
	}
	for _, want := range []string{"missing ip istio_redirect: meta l4proto tcp redirect to :15001", "unexpected ip istio_output: tcp dport 9999 return"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("check error does not say %q", want)
		}
	}
	before, _, _ := a.Save(ctx, n.Path(), rules.IPv4)
	if err := a.Apply(ctx, n.Path(), spec); !errors.Is(err, ErrConflict) {
		t.Fatalf("apply over tampered rules: want ErrConflict, got %v", err)
	}
	if after, _, _ := a.Save(ctx, n.Path(), rules.IPv4); after != before {
		t.Fatal("a refused apply changed the table")
	}
}

// iptables capture rules in the netns are not the nftables backend's to
// replace, nor to add to.
func TestNftablesRefusesOverIPTables(t *testing.T) {
	ctx := context.Background()
	n := newNS(t)
	if err := New(Options{Backend: NFT, LockDir: t.TempDir()}).Apply(ctx, n.Path(), capture.Default()); err != nil {
		t.Fatal(err)
	}
	a := New(Options{Backend: Nftables, LockDir: t.TempDir()})
	err := a.Apply(ctx, n.Path(), capture.Default())
	t.Logf("apply: %v", err)
	if !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "nat/ISTIO_OUTPUT") {
		t.Fatalf("want ErrConflict naming the iptables chains, got %v", err)
	}
	if out, _, _ := a.Save(ctx, n.Path(), rules.IPv4); out != "" {
		t.Fatalf("refused apply left a table:\n%s", out)
	}
}

// Every nftrules golden loads into a real kernel, and loads again over
// itself (the add-flush-add shape), leaving the same listing.
func TestNftablesGoldensLoad(t *testing.T) {
	paths, err := filepath.Glob("../nftrules/testdata/*.golden")
	if err != nil || len(paths) == 0 {
		t.Fatalf("no goldens: %v", err)
	}
	for _, p := range paths {
		script, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		n := newNS(t)
		var lists []string
		err = n.Do(func(ns.NetNS) error {
			for i := 0; i < 2; i++ {
				if _, err := ExecRunner(context.Background(), nil, string(script), "nft", "-f", "-"); err != nil {
					return err
				}
				out, err := ExecRunner(context.Background(), nil, "", "nft", "list", "ruleset")
				if err != nil {
					return err
				}
				lists = append(lists, out)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", filepath.Base(p), err)
		}
		if lists[0] != lists[1] || !strings.Contains(lists[0], "table ip meshcni") {
			t.Fatalf("%s: reloading changed the ruleset:\n%s\n---\n%s", filepath.Base(p), lists[0], lists[1])
		}
	}
}
