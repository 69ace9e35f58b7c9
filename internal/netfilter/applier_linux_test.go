//go:build integration

package netfilter

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/meshcni/meshcni/test/testbed"
)

func newNS(t *testing.T) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() { testbed.CloseNS(n) })
	return n
}

func backends(t *testing.T, fn func(t *testing.T, a *Applier)) {
	for _, b := range []Backend{Legacy, NFT, Nftables} {
		t.Run(string(b), func(t *testing.T) {
			fn(t, New(Options{Backend: b, LockDir: t.TempDir()}))
		})
	}
}

func TestApplyIsIdempotentAndChecks(t *testing.T) {
	backends(t, func(t *testing.T, a *Applier) {
		ctx := context.Background()
		n := newNS(t)
		spec := capture.Default()
		spec.IPv6 = true
		if err := a.Apply(ctx, n.Path(), spec); err != nil {
			t.Fatalf("apply: %v", err)
		}
		first, _, err := a.Save(ctx, n.Path(), rules.IPv4)
		if err != nil {
			t.Fatal(err)
		}
		redirect := "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001"
		if a.opts.Backend == Nftables {
			redirect = "chain istio_redirect {\n\t\tmeta l4proto tcp redirect to :15001\n"
		}
		if !strings.Contains(first, redirect) {
			t.Fatalf("redirect rule missing from save:\n%s", first)
		}
		if err := a.Apply(ctx, n.Path(), spec); err != nil {
			t.Fatalf("second apply of the same spec: %v", err)
		}
		second, _, _ := a.Save(ctx, n.Path(), rules.IPv4)
		if first != second {
			t.Fatalf("second apply changed the rules:\n%s\n---\n%s", first, second)
		}
		if err := a.Check(ctx, n.Path(), spec); err != nil {
			t.Fatalf("check: %v", err)
		}

		other := spec
		other.OutboundPorts = []uint16{8080}
		if err := a.Apply(ctx, n.Path(), other); !errors.Is(err, ErrConflict) {
			t.Fatalf("apply of a different spec: want ErrConflict, got %v", err)
		}
		if err := a.Check(ctx, n.Path(), other); !errors.Is(err, ErrMismatch) {
			t.Fatalf("check against another spec: want ErrMismatch, got %v", err)
		}
		if after, _, _ := a.Save(ctx, n.Path(), rules.IPv4); after != first {
			t.Fatalf("refused apply changed the rules")
		}

		if err := a.Remove(ctx, n.Path()); err != nil {
			t.Fatalf("remove: %v", err)
		}
		for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
			out, _, _ := a.Save(ctx, n.Path(), f)
			if strings.Contains(out, "ISTIO") || strings.Contains(out, "meshcni") {
				t.Fatalf("%s residue after remove:\n%s", f, out)
			}
		}
	})
}

// A dual-stack pod's two restores overlap with iptables-nft, each from a
// thread in the pod's netns, and run in order with legacy, which shares
// the netns's xtables lock.
func TestDualStackRestoresOverlap(t *testing.T) {
	for _, tc := range []struct {
		backend Backend
		overlap bool
	}{{NFT, true}, {Legacy, false}} {
		t.Run(string(tc.backend), func(t *testing.T) {
			n := newNS(t)
			target, err := netns.ID(n.Path())
			if err != nil {
				t.Fatal(err)
			}
			host, err := netns.ID("")
			if err != nil {
				t.Fatal(err)
			}
			var running, most atomic.Int32
			run := func(ctx context.Context, env []string, stdin, name string, args ...string) (string, error) {
				id, _ := netns.ID("")
				if id == host {
					t.Errorf("%s %v in the test's own netns: refused", name, args)
					return "", errors.New("refused: the test's own netns")
				}
				// The pod's applies; not CHECK's renders in a scratch netns.
				if id != target || !strings.HasSuffix(name, "-restore") || !strings.Contains(stdin, "-N ISTIO") {
					return ExecRunner(ctx, env, stdin, name, args...)
				}
				now := running.Add(1)
				defer running.Add(-1)
				for old := most.Load(); old < now && !most.CompareAndSwap(old, now); old = most.Load() {
				}
				// Give the other family time to start, if it is going to.
				for deadline := time.Now().Add(time.Second); running.Load() < 2 && time.Now().Before(deadline); time.Sleep(time.Millisecond) {
				}
				return ExecRunner(ctx, env, stdin, name, args...)
			}
			a := New(Options{Backend: tc.backend, LockDir: t.TempDir(), Run: run})
			spec := capture.Default()
			spec.IPv6 = true
			if err := a.Apply(context.Background(), n.Path(), spec); err != nil {
				t.Fatal(err)
			}
			if got := most.Load() == 2; got != tc.overlap {
				t.Errorf("restores at once: %d, want overlap %v", most.Load(), tc.overlap)
			}
			if err := a.Check(context.Background(), n.Path(), spec); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The agent's image has no iptables: it runs the node's through a chroot
// into the host's root. "/" stands in for /proc/1/root here.
func TestHostRootRunner(t *testing.T) {
	ctx := context.Background()
	n := newNS(t)
	a := New(Options{Backend: NFT, LockDir: t.TempDir(), HostRoot: "/"})
	if err := a.Apply(ctx, n.Path(), capture.Default()); err != nil {
		t.Fatalf("apply through the host root: %v", err)
	}
	if err := a.Check(ctx, n.Path(), capture.Default()); err != nil {
		t.Fatal(err)
	}
	if _, err := HostRootRunner(t.TempDir())(ctx, nil, "", "iptables-restore"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("a root without iptables must say so, got %v", err)
	}
	if got := SystemDefault("/"); got != SystemDefault("") {
		t.Fatalf("SystemDefault(/) = %s, SystemDefault() = %s", got, SystemDefault(""))
	}
}

// The Applier keeps the contract the Fake keeps, on every backend.
func TestApplierContract(t *testing.T) {
	backends(t, func(t *testing.T, a *Applier) { contract(t, a, newNS(t).Path()) })
}
