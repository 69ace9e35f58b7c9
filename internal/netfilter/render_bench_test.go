package netfilter

import (
	"testing"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/nftrules"
	"github.com/meshcni/meshcni/internal/rules"
)

// BenchmarkRender is the pure part of an ADD, without the kernel: the
// rules built from a spec and rendered as iptables-restore input and as
// the nftables backend's netlink batch. Being CPU only, it compares
// versions of the rule code on a loaded machine where
// BenchmarkApplyNewPod cannot.
func BenchmarkRender(b *testing.B) {
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
		spec := tc.spec()
		b.Run(tc.name+"/restore", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				for _, rs := range rules.Build(spec).Sets {
					_ = rs.Restore()
				}
			}
		})
		b.Run(tc.name+"/netlink", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				tables, err := nftrules.Build(spec)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := nftrules.Batch(tables); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
