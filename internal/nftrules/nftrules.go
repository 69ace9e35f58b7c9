// Package nftrules renders package rules' typed rules as a native
// nftables ruleset. It does not restate Istio's logic: it takes the rules
// of rules.Build, in their order, and maps each typed match and verdict to
// its nft expression, so that both backends capture the same traffic by
// construction. It is pure: no exec, no netns, no socket, and no rule
// text is parsed.
//
// Each address family gets its own table, "ip meshcni" and "ip6 meshcni",
// just as iptables and ip6tables each get their ruleset: an IPv4-only spec
// leaves IPv6 alone without any family guard, and a versioned rule (one
// address per family) stays one rule. Within a table, each iptables
// built-in chain becomes a base chain at the same hook and priority
// (nat_output: type nat hook output priority -100), and each ISTIO_* chain
// a regular chain of Istio's name in lower case (istio_output), prefixed
// with its iptables table where Istio uses the name in two tables
// (mangle_istio_inbound, raw_istio_output_dns).
//
// A rule is a list of typed expressions (Rule, Expr). Its nft text
// (Rule.String, what Script writes) is rendered from them, and Batch
// (netlink.go) encodes the same expressions as netlink messages, so the
// text and the messages have one source; package netfilter only sends
// them.
//
// The script is nft's own command language, run by one `nft -f -`. It is
// the text sigs.k8s.io/knftables renders for the same objects (a test
// holds it to that, and runs it through knftables' Fake), but knftables is
// not linked into the plug-in: its package init compiles regexps that
// cost every plug-in exec a measurable start-up time, whatever the backend
// (docs/performance.md).
package nftrules

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/rules"
)

// TableName is the name of meshcni's table in both families. The tables
// are meshcni's alone: everything in them is ours, nothing outside is.
const TableName = "meshcni"

// NFTFamily is the nft family of an IP family: ip or ip6.
func NFTFamily(f rules.Family) string {
	if f == rules.IPv6 {
		return "ip6"
	}
	return "ip"
}

// Base chain priorities, as nft names them in the ip and ip6 families.
const (
	PriorityRaw    = -300
	PriorityMangle = -150
	PriorityDstNAT = -100
)

// Chain is one chain of a table. Base chains have a hook; regular ones
// are only jumped to.
type Chain struct {
	Name string
	// Type ("filter", "route", "nat"), Hook ("prerouting", "output") and
	// Priority are set for base chains.
	Type     string
	Hook     string
	Priority int
	// Rules are the chain's rules; Rule.String is each one's nft text.
	Rules []Rule
}

// IsBase reports whether the chain is attached to a hook.
func (c Chain) IsBase() bool { return c.Hook != "" }

// Table is one family's table: chains in creation order.
type Table struct {
	Family rules.Family
	Chains []Chain
}

// base is where an iptables built-in chain hooks in, as an nft base chain.
type base struct {
	name, typ, hook string
	priority        int
}

// baseChains maps (iptables table, built-in chain) to its nft base chain.
// mangle OUTPUT is a route chain: a mark set there re-routes the packet,
// which TPROXY's policy routing relies on, as iptables' mangle does.
var baseChains = map[[2]string]base{
	{"raw", "PREROUTING"}:    {"raw_prerouting", "filter", "prerouting", PriorityRaw},
	{"raw", "OUTPUT"}:        {"raw_output", "filter", "output", PriorityRaw},
	{"mangle", "PREROUTING"}: {"mangle_prerouting", "filter", "prerouting", PriorityMangle},
	{"mangle", "OUTPUT"}:     {"mangle_output", "route", "output", PriorityMangle},
	{"nat", "PREROUTING"}:    {"nat_prerouting", "nat", "prerouting", PriorityDstNAT},
	{"nat", "OUTPUT"}:        {"nat_output", "nat", "output", PriorityDstNAT},
}

// ChainName is the nft name of iptables chain chain of table table.
func ChainName(table, chain string) string {
	if b, ok := baseChains[[2]string{table, chain}]; ok {
		return b.name
	}
	name := strings.ToLower(chain)
	// Istio reuses these two names outside nat; one nft table holds all.
	if table != "nat" && (chain == rules.ChainInbound || chain == rules.ChainOutputDNS) {
		return table + "_" + name
	}
	return name
}

// Build returns one table per family of spec (IPv6 only when spec.IPv6),
// holding rules.Build(spec).Sets as nft rules, rule for rule.
func Build(spec capture.Spec) ([]Table, error) { return Tables(rules.Build(spec).Sets) }

// Tables renders rulesets (rules.Build's) as one table per family, for a
// caller that has built them already.
func Tables(sets []rules.Ruleset) ([]Table, error) {
	var out []Table
	for _, rs := range sets {
		t, err := translateSet(rs)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rs.Family, err)
		}
		out = append(out, t)
	}
	return out, nil
}

func translateSet(rs rules.Ruleset) (Table, error) {
	// Replay the iptables order: -A appends, -I N inserts before the Nth
	// rule. One iptables rule may take two nft rules, so order whole units.
	units := map[string][][]Rule{}
	var order []string // chains as iptables sees them: "table/CHAIN"
	for _, r := range rs.Rules {
		if _, ok := baseChains[[2]string{r.Table, r.Chain}]; !ok && !strings.HasPrefix(r.Chain, "ISTIO_") {
			return Table{}, fmt.Errorf("no nft chain for %s %s", r.Table, r.Chain)
		}
		nft, err := translate(r)
		if err != nil {
			return Table{}, fmt.Errorf("%s: %w", r, err)
		}
		key := r.Table + "/" + r.Chain
		if !slices.Contains(order, key) {
			order = append(order, key)
		}
		u := units[key]
		if r.Pos > 0 && r.Pos-1 < len(u) {
			u = slices.Insert(u, r.Pos-1, nft)
		} else {
			u = append(u, nft)
		}
		units[key] = u
	}

	t := Table{Family: rs.Family}
	add := func(table, chain string) {
		c := Chain{Name: ChainName(table, chain)}
		if b, ok := baseChains[[2]string{table, chain}]; ok {
			c.Type, c.Hook, c.Priority = b.typ, b.hook, b.priority
		}
		for _, u := range units[table+"/"+chain] {
			c.Rules = append(c.Rules, u...)
		}
		t.Chains = append(t.Chains, c)
	}
	// Per iptables table: its base chains at their hooks, then Istio's
	// chains in the order rules.Ruleset.Chains gives (jump targets too).
	istio := rs.Chains()
	for _, table := range rs.UsedTables() {
		for _, chain := range []string{"PREROUTING", "OUTPUT"} {
			if slices.Contains(order, table+"/"+chain) {
				add(table, chain)
			}
		}
		for _, chain := range istio[table] {
			add(table, chain)
		}
	}
	return t, nil
}

// translate maps one typed rule to nft rules (usually one). The kinds of
// package rules are a closed set; one this does not know is a bug there,
// reported rather than guessed.
func translate(r rules.Rule) ([]Rule, error) {
	var (
		exprs     []Expr
		proto     string
		protoAt   = -1
		portMatch bool
	)
	for _, m := range r.Matches {
		e := Expr{Neg: m.Neg}
		switch m.Kind {
		case rules.MatchProto:
			if m.Neg {
				return nil, fmt.Errorf("negated protocol")
			}
			proto, protoAt = m.Proto, len(exprs)
			e.Kind, e.Proto = KindL4Proto, m.Proto
		case rules.MatchSrc, rules.MatchDst:
			e.Kind, e.Field, e.Prefix = KindAddr, "saddr", m.Prefix.Masked()
			if m.Kind == rules.MatchDst {
				e.Field = "daddr"
			}
			if m.Prefix.IsSingleIP() {
				e.Prefix = m.Prefix
			}
		case rules.MatchIn, rules.MatchOut:
			e.Kind, e.Field = KindIfname, "iifname"
			if m.Kind == rules.MatchOut {
				e.Field = "oifname"
			}
			// iptables' wildcard "eth+" is nft's "eth*".
			e.Name, e.Wildcard = strings.CutSuffix(m.Iface, "+")
		case rules.MatchDPort, rules.MatchSPort, rules.MatchDPorts:
			if proto == "" {
				return nil, fmt.Errorf("port match without a protocol")
			}
			e.Kind, e.Proto, e.Field, e.Ports, e.Set = KindPort, proto, "dport", m.Ports, m.Kind == rules.MatchDPorts
			if m.Kind == rules.MatchSPort {
				e.Field = "sport"
			}
			portMatch = true
		case rules.MatchUID:
			e.Kind, e.Field, e.Value = KindMeta, "skuid", m.Value
		case rules.MatchGID:
			e.Kind, e.Field, e.Value = KindMeta, "skgid", m.Value
		case rules.MatchMark:
			e.Kind, e.Field, e.Value = KindMeta, "mark", m.Value
		case rules.MatchConnmark:
			e.Kind, e.Value = KindCtMark, m.Value
		case rules.MatchCtState:
			e.Kind, e.States = KindCtState, uint32(m.States)
		default:
			return nil, fmt.Errorf("unknown match kind %d", m.Kind)
		}
		exprs = append(exprs, e)
	}
	// A port match implies its protocol: nft lists the rule without the
	// protocol match, so neither do we.
	if portMatch && protoAt >= 0 {
		exprs = slices.Delete(exprs, protoAt, protoAt+1)
	}
	rule := func(stmts ...Expr) Rule { return append(slices.Clone(exprs), stmts...) }
	verdict := func(v, chain string) Expr { return Expr{Kind: KindVerdict, Verdict: v, Chain: chain} }

	v := r.Verdict
	switch v.Kind {
	case rules.Return:
		return []Rule{rule(verdict("return", ""))}, nil
	case rules.Accept:
		return []Rule{rule(verdict("accept", ""))}, nil
	case rules.Drop:
		return []Rule{rule(verdict("drop", ""))}, nil
	case rules.Jump:
		return []Rule{rule(verdict("jump", ChainName(r.Table, v.Chain)))}, nil
	case rules.Redirect:
		return []Rule{rule(Expr{Kind: KindRedirect, Port: v.Port})}, nil
	case rules.TProxy:
		// iptables' TPROXY marks and accepts the packet, and drops it when
		// no transparent socket listens; nft's tproxy only skips the rest
		// of its rule then, so the drop is a rule of its own.
		return []Rule{
			rule(Expr{Kind: KindTProxy, Port: v.Port}, Expr{Kind: KindMetaMarkSet, Value: v.Value}, verdict("accept", "")),
			rule(verdict("drop", "")),
		}, nil
	case rules.SetMark:
		return []Rule{rule(Expr{Kind: KindMetaMarkSet, Value: v.Value})}, nil
	case rules.SaveMark:
		return []Rule{rule(Expr{Kind: KindCtMarkSetMetaMark})}, nil
	case rules.RestoreMark:
		return []Rule{rule(Expr{Kind: KindMetaMarkSetCtMark})}, nil
	case rules.CTZone:
		return []Rule{rule(Expr{Kind: KindCtZoneSet, Value: v.Value})}, nil
	}
	return nil, fmt.Errorf("unknown verdict kind %d", v.Kind)
}

// Script returns the nft commands that program ts, as one atomic
// transaction: per table, add it (a no-op when present), flush it, then
// add its chains and rules. Running it twice leaves the same rules.
func Script(ts []Table) string {
	var b strings.Builder
	for _, t := range ts {
		table := NFTFamily(t.Family) + " " + TableName
		b.WriteString("add table " + table + "\n")
		b.WriteString("flush table " + table + "\n")
		for _, c := range t.Chains {
			b.WriteString("add chain " + table + " " + c.Name)
			if c.IsBase() {
				fmt.Fprintf(&b, " { type %s hook %s priority %d ; }", c.Type, c.Hook, c.Priority)
			}
			b.WriteString("\n")
		}
		for _, c := range t.Chains {
			for _, r := range c.Rules {
				b.WriteString("add rule " + table + " " + c.Name + " " + r.String() + "\n")
			}
		}
	}
	return b.String()
}

// DeleteScript returns the nft commands that delete meshcni's table of
// each of the given families; each must exist (nft 1.0.6 has no
// "destroy").
func DeleteScript(fams ...rules.Family) string {
	var b strings.Builder
	for _, f := range fams {
		b.WriteString("delete table " + NFTFamily(f) + " " + TableName + "\n")
	}
	return b.String()
}
