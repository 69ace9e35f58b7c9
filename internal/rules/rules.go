// Package rules turns a capture spec into iptables rules, rule for rule what
// Istio's istio-iptables programs for the same settings, and renders them as
// iptables-restore input. It is pure: no exec, no netns.
package rules

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Family is an IP family: 4 for iptables, 6 for ip6tables.
type Family int

const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string { return "IPv" + strconv.Itoa(int(f)) }

// Istio's chain names.
const (
	ChainInbound    = "ISTIO_INBOUND"
	ChainRedirect   = "ISTIO_REDIRECT"
	ChainInRedirect = "ISTIO_IN_REDIRECT"
	ChainOutput     = "ISTIO_OUTPUT"
	ChainOutputDNS  = "ISTIO_OUTPUT_DNS"
	ChainDivert     = "ISTIO_DIVERT"
	ChainTProxy     = "ISTIO_TPROXY"
	ChainDrop       = "ISTIO_DROP"
)

// Tables are the tables meshcni may write, in restore order.
var Tables = []string{"filter", "mangle", "nat", "raw"}

var builtinChains = []string{"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}

// IsBuiltin reports whether chain is one of the kernel's own chains.
func IsBuiltin(chain string) bool { return slices.Contains(builtinChains, chain) }

// Rule is one iptables rule. Pos > 0 inserts at that position (-I), as
// Istio does for a few rules; otherwise the rule is appended (-A).
type Rule struct {
	Table string
	Chain string
	Pos   int
	Args  []string
}

// String renders the rule as iptables-restore reads it.
func (r Rule) String() string {
	head := "-A " + r.Chain
	if r.Pos > 0 {
		head = "-I " + r.Chain + " " + strconv.Itoa(r.Pos)
	}
	return strings.Join(append([]string{head}, r.Args...), " ")
}

// Target is the rule's -j target.
func (r Rule) Target() string {
	if n := len(r.Args); n >= 2 && r.Args[n-2] == "-j" {
		return r.Args[n-1]
	}
	for i, a := range r.Args {
		if a == "-j" && i+1 < len(r.Args) {
			return r.Args[i+1]
		}
	}
	return ""
}

// Ruleset is every rule of one family, in the order Istio issues them.
type Ruleset struct {
	Family Family
	Rules  []Rule
}

// Empty reports whether the ruleset has no rule.
func (rs Ruleset) Empty() bool { return len(rs.Rules) == 0 }

// Chains returns the non-builtin chains per table that the ruleset creates:
// those holding rules, in order of first rule, then those only jumped to.
func (rs Ruleset) Chains() map[string][]string {
	out := map[string][]string{}
	add := func(table, chain string) {
		if chain == "" || IsBuiltin(chain) || !strings.HasPrefix(chain, "ISTIO_") || slices.Contains(out[table], chain) {
			return
		}
		out[table] = append(out[table], chain)
	}
	for _, r := range rs.Rules {
		add(r.Table, r.Chain)
	}
	for _, r := range rs.Rules {
		add(r.Table, r.Target())
	}
	return out
}

// UsedTables lists the tables the ruleset writes, in restore order.
func (rs Ruleset) UsedTables() []string {
	var out []string
	for _, t := range Tables {
		if slices.ContainsFunc(rs.Rules, func(r Rule) bool { return r.Table == t }) {
			out = append(out, t)
		}
	}
	return out
}

// Restore renders the ruleset as input for `iptables-restore --noflush`:
// per table, new chains first, then the rules; tables sorted, as Istio's.
func (rs Ruleset) Restore() string {
	var b strings.Builder
	chains := rs.Chains()
	for _, t := range rs.UsedTables() {
		b.WriteString("* " + t + "\n")
		for _, c := range chains[t] {
			b.WriteString("-N " + c + "\n")
		}
		for _, r := range rs.Rules {
			if r.Table == t {
				b.WriteString(r.String() + "\n")
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// Cleanup renders restore input that removes exactly this ruleset from a
// netns that holds it: our rules in built-in chains, then our chains.
func (rs Ruleset) Cleanup() string {
	var b strings.Builder
	chains := rs.Chains()
	for _, t := range rs.UsedTables() {
		b.WriteString("* " + t + "\n")
		for i := len(rs.Rules) - 1; i >= 0; i-- {
			r := rs.Rules[i]
			if r.Table == t && IsBuiltin(r.Chain) {
				b.WriteString(strings.Join(append([]string{"-D", r.Chain}, r.Args...), " ") + "\n")
			}
		}
		for _, c := range chains[t] {
			b.WriteString("-F " + c + "\n")
		}
		for _, c := range chains[t] {
			b.WriteString("-X " + c + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// placeholder in a versioned rule stands for the family's own address.
const placeholder = "$IP"

// builder collects rules for both families the way Istio's rule builder
// does: shared rules go to both, versioned ones get a family-specific value.
type builder struct {
	v4, v6 []Rule
	ipv6   bool
}

func (b *builder) add4(table, chain string, pos int, args ...string) {
	b.v4 = append(b.v4, Rule{Table: table, Chain: chain, Pos: pos, Args: args})
}

func (b *builder) add6(table, chain string, pos int, args ...string) {
	if b.ipv6 {
		b.v6 = append(b.v6, Rule{Table: table, Chain: chain, Pos: pos, Args: args})
	}
}

func (b *builder) add(table, chain string, args ...string) {
	b.add4(table, chain, 0, args...)
	b.add6(table, chain, 0, args...)
}

func (b *builder) insert(table, chain string, pos int, args ...string) {
	b.add4(table, chain, pos, args...)
	b.add6(table, chain, pos, args...)
}

func (b *builder) versioned(v4, v6, table, chain string, args ...string) {
	b.add4(table, chain, 0, replace(args, v4)...)
	b.add6(table, chain, 0, replace(args, v6)...)
}

func replace(args []string, v string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if a == placeholder {
			a = v
		}
		out[i] = a
	}
	return out
}

func itoa[T uint16 | uint32 | int](v T) string { return strconv.FormatUint(uint64(v), 10) }

func splitFamilies(ps []netip.Prefix) (v4, v6 []netip.Prefix) {
	for _, p := range ps {
		if p.Addr().Is4() {
			v4 = append(v4, p)
		} else {
			v6 = append(v6, p)
		}
	}
	return v4, v6
}

func hasLoopback(ps []netip.Prefix) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr().IsLoopback() })
}
