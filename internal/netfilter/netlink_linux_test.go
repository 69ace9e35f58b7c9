//go:build integration

package netfilter

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/capture/capturetest"
	"github.com/meshcni/meshcni/internal/golden"
	"github.com/meshcni/meshcni/internal/nftrules"
	"github.com/meshcni/meshcni/internal/rules"
)

// netlinkCases: every golden case, plus interface names that nft reads
// specially (iptables' "+" wildcard, literal "*" escaped or not).
func netlinkCases(t *testing.T) map[string]capture.Spec {
	out := map[string]capture.Spec{}
	for _, tc := range capturetest.Cases {
		out[tc.Name] = tc.Spec(t)
	}
	for _, name := range []string{"eth+", "x*", "*", "g*h", "a#b", "%s", "abcdefghijklmno"} {
		s := capture.Default()
		s.ExcludeInterfaces = []string{name}
		s.RerouteInterfaces = []string{name}
		s.Mode = capture.TProxy
		out["ifname "+name] = s
	}
	return out
}

// The same tables, programmed over netlink into one fresh netns and with
// `nft -f` into another, list byte for byte the same (`nft list ruleset`
// in each), down to the bytecode (`nft --debug=netlink list ruleset`):
// the netlink builder writes what nft writes.
func TestNetlinkEqualsNft(t *testing.T) {
	for name, spec := range netlinkCases(t) {
		tables, err := nftrules.Build(spec)
		if err != nil {
			t.Fatal(err)
		}
		list := func(n ns.NetNS, program func() error) string {
			var out string
			err := n.Do(func(ns.NetNS) error {
				if err := program(); err != nil {
					return err
				}
				// As nft lists it, and the bytecode with it (expressions,
				// registers, data, set elements, handles).
				for _, args := range [][]string{{"list", "ruleset"}, {"--debug=netlink", "list", "ruleset"}} {
					l, err := ExecRunner(context.Background(), nil, "", "nft", args...)
					if err != nil {
						return err
					}
					out += l
				}
				return nil
			})
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return out
		}
		viaNetlink := list(newNS(t), func() error { return nftNetlinkApply(tables) })
		viaNft := list(newNS(t), func() error {
			_, err := ExecRunner(context.Background(), nil, nftrules.Script(tables), "nft", "-f", "-")
			return err
		})
		if viaNetlink != viaNft || !strings.Contains(viaNft, "table ip meshcni") {
			t.Errorf("%s: netlink and nft differ:\n%s", name, golden.LineDiff(viaNft, viaNetlink))
		}
	}
}

// A new pod costs no exec, for every case; the tables are then what Check
// expects. A Runner given through Options sees the write instead (one
// nft), with the same result.
func TestNetlinkApplyNoExec(t *testing.T) {
	ctx := context.Background()
	for name, spec := range netlinkCases(t) {
		var execs atomic.Int64
		for _, tc := range []struct {
			how   string
			a     *Applier
			execs int64
		}{
			{"netlink", countingApplier(Options{Backend: Nftables, LockDir: t.TempDir()}, &execs), 0},
			{"Options.Run", New(Options{Backend: Nftables, LockDir: t.TempDir(), Run: countingRunner(&execs)}), 1},
		} {
			execs.Store(0)
			n := newNS(t)
			if err := tc.a.Apply(ctx, n.Path(), spec); err != nil {
				t.Fatalf("%s, %s: %v", name, tc.how, err)
			}
			if got := execs.Load(); got != tc.execs {
				t.Errorf("%s, %s: %d execs, want %d", name, tc.how, got, tc.execs)
			}
			if err := tc.a.Check(ctx, n.Path(), spec); err != nil {
				t.Errorf("%s, %s: check: %v", name, tc.how, err)
			}
		}
	}
}

// A transaction the kernel rejects (here: a jump to a chain that is not
// there) leaves nothing, and Apply's error says so.
func TestNetlinkRejectedLeavesNothing(t *testing.T) {
	tables, err := nftrules.Build(capture.Default())
	if err != nil {
		t.Fatal(err)
	}
	c := &tables[0].Chains[len(tables[0].Chains)-1]
	c.Rules = append(c.Rules, nftrules.Rule{{Kind: nftrules.KindVerdict, Verdict: "jump", Chain: "nowhere"}})
	n := newNS(t)
	err = n.Do(func(ns.NetNS) error {
		err := nftNetlinkApply(tables)
		t.Logf("apply: %v", err)
		if err == nil {
			t.Error("the kernel took a jump to a missing chain")
		}
		ours, _, err := nftState()
		if len(ours) > 0 {
			t.Errorf("a rejected transaction left tables: %v", ours)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Anything the builder has no netlink form for is refused before a
// message is queued, and Apply's caller then runs nft.
func TestNetlinkRefusesUnknown(t *testing.T) {
	tables, err := nftrules.Build(capture.Default())
	if err != nil {
		t.Fatal(err)
	}
	c := &tables[0].Chains[len(tables[0].Chains)-1]
	c.Rules = append(c.Rules, nftrules.Rule{{Kind: nftrules.KindL4Proto, Proto: "sctp"}, {Kind: nftrules.KindVerdict, Verdict: "return"}})
	n := newNS(t)
	if _, err := nftrules.Batch(tables); !errors.Is(err, nftrules.ErrNotNative) || !strings.Contains(err.Error(), "sctp") {
		t.Errorf("want nftrules.ErrNotNative naming the rule, got %v", err)
	}
	var execs atomic.Int64
	v := &visit{a: countingApplier(Options{}, &execs), ctx: context.Background()}
	if err := n.Do(func(ns.NetNS) error { return v.nftProgram(tables) }); err != nil {
		t.Fatalf("fallback to nft: %v", err)
	}
	if execs.Load() != 1 {
		t.Errorf("fallback: %d execs, want 1", execs.Load())
	}
	var list string
	err = n.Do(func(ns.NetNS) error {
		list, err = ExecRunner(context.Background(), nil, "", "nft", "list", "ruleset")
		return err
	})
	if err != nil || !strings.Contains(list, "meta l4proto sctp return") {
		t.Fatalf("fallback did not program the rule (%v):\n%s", err, list)
	}
}

// The rollback's delete, over netlink, leaves nothing of either family.
func TestNetlinkDelete(t *testing.T) {
	spec := capture.Default()
	spec.IPv6 = true
	tables, err := nftrules.Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	n := newNS(t)
	err = n.Do(func(ns.NetNS) error {
		if err := nftNetlinkApply(tables); err != nil {
			return err
		}
		if ours, _, _ := nftState(); len(ours) != 2 {
			t.Errorf("tables after apply: %v", ours)
		}
		if err := nftNetlinkDelete([]rules.Family{rules.IPv4, rules.IPv6}); err != nil {
			return err
		}
		ours, _, err := nftState()
		if len(ours) > 0 {
			t.Errorf("tables after delete: %v", ours)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// An empty batch is not sent (no message would be acked).
func TestNetlinkEmptyBatch(t *testing.T) {
	n := newNS(t)
	if err := n.Do(func(ns.NetNS) error { return nftNetlinkDelete(nil) }); err != nil {
		t.Fatal(err)
	}
}

// listTables sees every table of every family, as `nft list tables` does,
// including many (more than one reply datagram) and none.
func TestListTablesLikeNft(t *testing.T) {
	n := newNS(t)
	err := n.Do(func(ns.NetNS) error {
		if got, err := listTables(); err != nil || len(got) != 0 {
			t.Errorf("fresh netns: %v, %v; want no tables", got, err)
		}
		script := "add table ip nat\nadd table ip6 mangle\nadd table inet meshcni\nadd table arp a\nadd table bridge b\nadd table netdev c\n"
		for i := range 300 {
			script += fmt.Sprintf("add table inet t%03d\n", i)
		}
		if _, err := ExecRunner(context.Background(), nil, script, "nft", "-f", "-"); err != nil {
			return err
		}
		out, err := ExecRunner(context.Background(), nil, "", "nft", "list", "tables")
		if err != nil {
			return err
		}
		want := strings.Fields(strings.ReplaceAll(out, "table", ""))
		got, err := listTables()
		if err != nil {
			return err
		}
		var have []string
		for _, tb := range got {
			have = append(have, familyName(tb.Family), tb.Name)
		}
		slices.Sort(want)
		slices.Sort(have)
		if !slices.Equal(have, want) || len(got) != 306 {
			t.Errorf("listTables: %d tables %v\nnft list tables: %v", len(got), have, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return fmt.Sprint(f)
}
