//go:build integration

package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
)

// TestRuleBudgetMeasure measures one Apply of specs of growing rule
// counts on each backend: the figures behind capture.RuleBudget
// (docs/reliability.md). It takes minutes, so it runs only when asked:
//
//	MESHCNI_MEASURE_BUDGET=1 go test -tags integration -run TestRuleBudgetMeasure -v ./test/integration/
func TestRuleBudgetMeasure(t *testing.T) {
	requireRoot(t)
	if os.Getenv("MESHCNI_MEASURE_BUDGET") == "" {
		t.Skip("set MESHCNI_MEASURE_BUDGET=1 to measure")
	}
	for _, backend := range backends {
		for _, cidrs := range []int{0, 60, 118, 250, 1000, 3900} {
			s := capture.Default()
			// The review's shape: include CIDRs times rerouted interfaces.
			s.RerouteInterfaces = []string{"v0", "v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8", "v9", "v10", "v11", "v12", "v13", "v14", "v15"}
			if cidrs > 0 {
				s.OutboundCIDRs = capture.CIDRs{}
				for i := range cidrs {
					s.OutboundCIDRs.List = append(s.OutboundCIDRs.List, netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)))
				}
			}
			pod := newNS(t)
			a := netfilter.New(netfilter.Options{Backend: backend, LockDir: t.TempDir()})
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			if err := a.Apply(context.Background(), pod.Path(), s); err != nil {
				t.Fatalf("%s, %d rules: %v", backend, s.RuleCount(), err)
			}
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			checkStart := time.Now()
			if err := a.Check(context.Background(), pod.Path(), s); err != nil {
				t.Fatalf("check: %v", err)
			}
			t.Logf("%-9s %6d rules: apply %8v, %6.1f MB allocated in process; check %8v",
				backend, s.RuleCount(), took.Round(time.Millisecond), float64(after.TotalAlloc-before.TotalAlloc)/1e6, time.Since(checkStart).Round(time.Millisecond))
		}
	}
}
