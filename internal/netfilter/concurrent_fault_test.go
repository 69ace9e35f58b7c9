//go:build integration

package netfilter

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netns"
)

// TestConcurrentApplies races two applies of one spec into one new netns,
// as two ADDs of one sandbox would (a runtime retrying, the repair
// controller and the plug-in at once), 10 times per backend and case.
// Whatever each reports, one that reports success must leave the rules in
// place. Before the per-netns lock the loser's rollback removed the
// winner's rules: with iptables-nft both succeeded with no rules left, or
// the loser's "Chain already exists" rollback emptied the netns under the
// winner's success; the nftables backend's transaction (add, flush,
// re-add) survived two clean writers but not a loser whose write failed
// after its commit. Each applier has its own options, as two plug-in
// processes would; they share only the lock dir.
func TestConcurrentApplies(t *testing.T) {
	for _, b := range []Backend{Legacy, NFT, Nftables} {
		for _, tc := range []struct {
			name string
			// dies: the second applier's write to the pod's netns
			// commits, then reports failure (killed on its way out).
			dies bool
		}{{"two clean writers", false}, {"one dies after its commit", true}} {
			t.Run(string(b)+"/"+tc.name, func(t *testing.T) {
				lockDir := t.TempDir()
				spec := capture.Default()
				spec.IPv6 = true
				for trial := 0; trial < 10; trial++ {
					n := newNS(t)
					target, err := netns.ID(n.Path())
					if err != nil {
						t.Fatal(err)
					}
					appliers := []*Applier{New(Options{Backend: b, LockDir: lockDir}), New(Options{Backend: b, LockDir: lockDir})}
					if tc.dies {
						appliers[0] = New(Options{Backend: b, LockDir: lockDir, Run: ExecRunner})
						appliers[1] = New(Options{Backend: b, LockDir: lockDir, Run: diesAfterCommit(target)})
					}
					var wg sync.WaitGroup
					errs := make([]error, 2)
					for i, a := range appliers {
						wg.Add(1)
						go func() {
							defer wg.Done()
							errs[i] = a.Apply(context.Background(), n.Path(), spec)
						}()
					}
					wg.Wait()
					if !tc.dies && errors.Join(errs...) != nil {
						t.Errorf("trial %d: %v", trial, errors.Join(errs...))
					}
					if errs[0] != nil && errs[1] != nil {
						continue // neither claims the pod is captured
					}
					if err := New(Options{Backend: b, LockDir: lockDir}).Check(context.Background(), n.Path(), spec); err != nil {
						t.Errorf("trial %d: applies returned %v, %v; then CHECK: %v", trial, errs[0], errs[1], err)
					}
				}
			})
		}
	}
}

// diesAfterCommit runs commands for real but reports every write to the
// netns target as failed after it ran.
func diesAfterCommit(target string) Runner {
	return func(ctx context.Context, env []string, stdin, name string, args ...string) (string, error) {
		out, err := ExecRunner(ctx, env, stdin, name, args...)
		id, _ := netns.ID("")
		write := strings.HasSuffix(name, "-restore") || (name == "nft" && strings.Contains(stdin, "add table"))
		if err == nil && write && id == target {
			err = errors.New("killed after its commit")
		}
		return out, err
	}
}
