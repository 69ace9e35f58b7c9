//go:build integration

package netfilter

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/test/testbed"
)

// countingRunner counts the commands an Apply forks.
func countingRunner(n *atomic.Int64) Runner {
	return func(ctx context.Context, env []string, stdin, name string, args ...string) (string, error) {
		n.Add(1)
		return ExecRunner(ctx, env, stdin, name, args...)
	}
}

// countingApplier is New(opts) with a counting Runner that, unlike a
// Runner given through Options, leaves the nftables backend's netlink
// path on: it counts the execs of the Applier the plug-in uses.
func countingApplier(opts Options, n *atomic.Int64) *Applier {
	opts.Run = countingRunner(n)
	a := New(opts)
	a.netlink = true
	return a
}

// BenchmarkApplyNewPod is the plug-in's hot path: program a pod's rules
// into a netns that has none. Reports execs per apply.
func BenchmarkApplyNewPod(b *testing.B) {
	for _, tc := range []struct {
		name string
		spec func() capture.Spec
	}{
		{"default", capture.Default},
		{"tproxy-dns-dualstack", func() capture.Spec {
			s := capture.Default()
			s.Mode, s.RedirectDNS, s.CaptureAllDNS, s.IPv6 = capture.TProxy, true, true, true
			return s
		}},
	} {
		for _, backend := range []Backend{Legacy, NFT, Nftables} {
			b.Run(tc.name+"/"+string(backend), func(b *testing.B) {
				var execs atomic.Int64
				a := countingApplier(Options{Backend: backend, LockDir: b.TempDir()}, &execs)
				spec := tc.spec()
				for i := 0; i < b.N; i++ {
					b.StopTimer()
					n, err := testutils.NewNS()
					if err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
					if err := a.Apply(context.Background(), n.Path(), spec); err != nil {
						closeNS(n)
						b.Fatal(err)
					}
					b.StopTimer()
					closeNS(n)
					b.StartTimer()
				}
				b.ReportMetric(float64(execs.Load())/float64(b.N), "execs/op")
			})
		}
	}
}

func closeNS(n ns.NetNS) { testbed.CloseNS(n) }
