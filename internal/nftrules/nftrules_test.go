package nftrules

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/knftables"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/capture/capturetest"
	"github.com/meshcni/meshcni/internal/golden"
	"github.com/meshcni/meshcni/internal/rules"
)

func TestBuildGolden(t *testing.T) {
	for _, tc := range capturetest.Cases {
		t.Run(tc.Name, func(t *testing.T) {
			ts, err := Build(tc.Spec(t))
			if err != nil {
				t.Fatal(err)
			}
			golden.Compare(t, tc.Name, Script(ts))
		})
	}
}

// TestRuleForRule: every iptables rule becomes exactly one nft rule in the
// chain of the same name, except TPROXY, which needs its drop rule too.
func TestRuleForRule(t *testing.T) {
	for _, tc := range capturetest.Cases {
		spec := tc.Spec(t)
		ts, err := Build(spec)
		if err != nil {
			t.Fatal(err)
		}
		for i, rs := range rules.Build(spec).Sets {
			want := map[string]int{}
			for _, r := range rs.Rules {
				want[ChainName(r.Table, r.Chain)]++
				if r.Verdict.Kind == rules.TProxy {
					want[ChainName(r.Table, r.Chain)]++
				}
			}
			for _, c := range ts[i].Chains {
				if len(c.Rules) != want[c.Name] {
					t.Errorf("%s %s chain %s: %d nft rules for %d iptables rules", tc.Name, rs.Family, c.Name, len(c.Rules), want[c.Name])
				}
				delete(want, c.Name)
			}
			for c := range want {
				t.Errorf("%s %s: no nft chain %s", tc.Name, rs.Family, c)
			}
		}
	}
}

// knftablesTx is Script's transaction built with knftables' objects: the
// reference for the text, and the input of its Fake.
func knftablesTx(ts []Table) *knftables.Transaction {
	tx := knftables.NewFake("", "").NewTransaction()
	for _, t := range ts {
		fam := knftables.Family(NFTFamily(t.Family))
		tx.Add(&knftables.Table{Family: fam, Name: TableName})
		tx.Flush(&knftables.Table{Family: fam, Name: TableName})
		for _, c := range t.Chains {
			ch := &knftables.Chain{Family: fam, Table: TableName, Name: c.Name}
			if c.IsBase() {
				typ, hook := knftables.BaseChainType(c.Type), knftables.BaseChainHook(c.Hook)
				prio := knftables.BaseChainPriority(strconv.Itoa(c.Priority))
				ch.Type, ch.Hook, ch.Priority = &typ, &hook, &prio
			}
			tx.Add(ch)
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				tx.Add(&knftables.Rule{Family: fam, Table: TableName, Chain: c.Name, Rule: r.String()})
			}
		}
	}
	return tx
}

// TestScriptIsKnftables: Script renders what knftables renders for the
// same objects, and knftables' Fake, which rejects jumps to missing
// chains and malformed objects, takes it; a second run (the same spec over
// the table) leaves the same contents, and the delete leaves nothing.
func TestScriptIsKnftables(t *testing.T) {
	for _, tc := range capturetest.Cases {
		ts, err := Build(tc.Spec(t))
		if err != nil {
			t.Fatal(err)
		}
		tx := knftablesTx(ts)
		if want := tx.String(); Script(ts) != want {
			t.Fatalf("%s: Script differs from knftables:\n%s", tc.Name, golden.LineDiff(want, Script(ts)))
		}
		fake := knftables.NewFake("", "")
		if err := fake.Run(context.Background(), tx); err != nil {
			t.Fatalf("%s: %v", tc.Name, err)
		}
		first := fake.Dump()
		if err := fake.Run(context.Background(), knftablesTx(ts)); err != nil {
			t.Fatalf("%s: rerun: %v", tc.Name, err)
		}
		if second := fake.Dump(); second != first {
			t.Fatalf("%s: rerun changed the tables:\n%s", tc.Name, golden.LineDiff(first, second))
		}
		del := fake.NewTransaction()
		for _, f := range families(ts) {
			del.Delete(&knftables.Table{Family: knftables.Family(NFTFamily(f)), Name: TableName})
		}
		if del.String() != DeleteScript(families(ts)...) {
			t.Fatalf("DeleteScript %q, knftables %q", DeleteScript(families(ts)...), del.String())
		}
		if err := fake.Run(context.Background(), del); err != nil {
			t.Fatalf("%s: delete: %v", tc.Name, err)
		}
		if d := fake.Dump(); d != "" {
			t.Fatalf("%s: left after delete:\n%s", tc.Name, d)
		}
	}
}

func families(ts []Table) []rules.Family {
	var out []rules.Family
	for _, t := range ts {
		out = append(out, t.Family)
	}
	return out
}

func TestIPv4OnlyHasNoIPv6Table(t *testing.T) {
	ts, err := Build(capture.Default())
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].Family != rules.IPv4 {
		t.Fatalf("an IPv4-only spec must program only ip meshcni, got %d tables", len(ts))
	}
	if tx := Script(ts); strings.Contains(tx, "ip6") {
		t.Fatalf("IPv6 in an IPv4-only transaction:\n%s", tx)
	}
}

func TestTranslateRejectsUnknown(t *testing.T) {
	tcp := rules.Match{Kind: rules.MatchProto, Proto: "tcp"}
	ret := rules.Verdict{Kind: rules.Return}
	for _, tc := range []struct {
		name string
		r    rules.Rule
	}{
		{"no verdict", rules.Rule{Matches: []rules.Match{tcp}}},
		{"unknown verdict", rules.Rule{Verdict: rules.Verdict{Kind: 99}}},
		{"no match kind", rules.Rule{Matches: []rules.Match{{}}, Verdict: ret}},
		{"port without protocol", rules.Rule{Matches: []rules.Match{{Kind: rules.MatchDPort, Ports: []uint16{80}}}, Verdict: ret}},
		{"negated protocol", rules.Rule{Matches: []rules.Match{{Kind: rules.MatchProto, Proto: "tcp", Neg: true}}, Verdict: ret}},
	} {
		if got, err := translate(tc.r); err == nil {
			t.Errorf("%s: want an error, got %q", tc.name, got)
		}
	}
}

func TestNames(t *testing.T) {
	for _, tc := range []struct{ in, want string }{{"eth0", `oifname "eth0"`}, {"eth+", `oifname "eth*"`}, {"odd*", `oifname "odd\*"`}} {
		rs, err := translate(rules.Rule{Matches: []rules.Match{{Kind: rules.MatchOut, Iface: tc.in}}, Verdict: rules.Verdict{Kind: rules.Return}})
		if err != nil || len(rs) != 1 || rs[0][0].String() != tc.want {
			t.Errorf("-o %s = %v (%v), want %s", tc.in, rs, err, tc.want)
		}
	}
	for _, tc := range []struct{ table, chain, want string }{
		{"nat", "OUTPUT", "nat_output"}, {"nat", "ISTIO_INBOUND", "istio_inbound"},
		{"mangle", "ISTIO_INBOUND", "mangle_istio_inbound"}, {"mangle", "ISTIO_DIVERT", "istio_divert"},
		{"raw", "ISTIO_OUTPUT_DNS", "raw_istio_output_dns"}, {"nat", "ISTIO_OUTPUT_DNS", "istio_output_dns"},
	} {
		if got := ChainName(tc.table, tc.chain); got != tc.want {
			t.Errorf("ChainName(%s, %s) = %s, want %s", tc.table, tc.chain, got, tc.want)
		}
	}
}
