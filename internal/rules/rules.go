// Package rules is meshcni's one rule model: a capture spec becomes typed
// rules (tables, chains, matches and verdicts), rule for rule what Istio's
// istio-iptables programs for the same settings and in its order, built
// once. This package renders them as iptables-restore input and their
// cleanup; package nftrules renders the same rules as nft text and as
// netlink messages, from the typed fields, never from text. It also
// decides how the model meets a netns (apply.go), against the Kernel
// interface that package netfilter implements on every backend. It is
// pure: no exec, no netns.
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

// Rule is one rule: typed matches, in the order iptables writes them, and
// a verdict. Pos > 0 inserts at that position (-I), as Istio does for a
// few rules; otherwise the rule is appended (-A).
type Rule struct {
	Table   string
	Chain   string
	Pos     int
	Matches []Match
	Verdict Verdict
}

// Args renders the rule's matches and verdict as iptables arguments.
func (r Rule) Args() []string {
	var b strings.Builder
	r.writeBody(&b)
	return strings.Fields(b.String())
}

// String renders the rule as iptables-restore reads it.
func (r Rule) String() string {
	var b strings.Builder
	r.writeTo(&b, "-A")
	return b.String()
}

// writeTo writes the rule as op ("-A", "-D") would: -I N for a rule with
// a position and op -A. Rendering straight into the restore input keeps
// an ADD's allocations as low as when rules were argv strings.
func (r Rule) writeTo(b *strings.Builder, op string) {
	if r.Pos > 0 && op == "-A" {
		b.WriteString("-I ")
		b.WriteString(r.Chain)
		b.WriteByte(' ')
		writeUint(b, uint64(r.Pos))
	} else {
		b.WriteString(op)
		b.WriteByte(' ')
		b.WriteString(r.Chain)
	}
	r.writeBody(b)
}

// writeBody writes " <matches> -j <target ...>".
func (r Rule) writeBody(b *strings.Builder) {
	for _, m := range r.Matches {
		m.writeTo(b)
	}
	r.Verdict.writeTo(b)
}

func writeUint(b *strings.Builder, v uint64) {
	var buf [20]byte
	b.Write(strconv.AppendUint(buf[:0], v, 10))
}

// Match is one typed match of a rule, rendered in iptables' own order:
// module ("-m owner"), negation, option, value.
type Match struct {
	Kind MatchKind
	Neg  bool
	// Proto: tcp or udp (MatchProto).
	Proto string
	// Iface: an interface name; a trailing "+" is iptables' wildcard.
	Iface  string
	Prefix netip.Prefix
	Ports  []uint16
	// Value: the UID, GID or mark.
	Value  uint32
	States CtState
}

// MatchKind says what a Match compares, and which of its fields hold the
// value.
type MatchKind int

const (
	MatchProto    MatchKind = iota + 1 // -p Proto
	MatchIn                            // -i Iface
	MatchOut                           // -o Iface
	MatchSrc                           // -s Prefix
	MatchDst                           // -d Prefix
	MatchDPort                         // --dport Ports[0] (after a MatchProto)
	MatchSPort                         // --sport Ports[0] (after a MatchProto)
	MatchDPorts                        // -m multiport --dports Ports
	MatchUID                           // -m owner --uid-owner Value
	MatchGID                           // -m owner --gid-owner Value
	MatchCtState                       // -m conntrack --ctstate States
	MatchMark                          // -m mark --mark Value
	MatchConnmark                      // -m connmark --mark Value
)

// CtState is a set of conntrack states, as the kernel's ct state bits.
type CtState uint32

const (
	CtInvalid     CtState = 1
	CtEstablished CtState = 2
	CtRelated     CtState = 4
	CtNew         CtState = 8
	CtUntracked   CtState = 64
)

// ctStateNames is the order states are written in (Istio's
// "RELATED,ESTABLISHED").
var ctStateNames = []struct {
	bit  CtState
	name string
}{{CtInvalid, "INVALID"}, {CtRelated, "RELATED"}, {CtEstablished, "ESTABLISHED"}, {CtNew, "NEW"}, {CtUntracked, "UNTRACKED"}}

// Names lists the states in writing order, as iptables spells them.
func (s CtState) Names() []string {
	var out []string
	for _, n := range ctStateNames {
		if s&n.bit != 0 {
			out = append(out, n.name)
		}
	}
	return out
}

// writeTo writes the match as iptables arguments, each after a space.
func (m Match) writeTo(b *strings.Builder) {
	var module, opt string
	switch m.Kind {
	case MatchProto:
		opt = "-p"
	case MatchIn:
		opt = "-i"
	case MatchOut:
		opt = "-o"
	case MatchSrc:
		opt = "-s"
	case MatchDst:
		opt = "-d"
	case MatchDPort:
		opt = "--dport"
	case MatchSPort:
		opt = "--sport"
	case MatchDPorts:
		module, opt = "multiport", "--dports"
	case MatchUID:
		module, opt = "owner", "--uid-owner"
	case MatchGID:
		module, opt = "owner", "--gid-owner"
	case MatchCtState:
		module, opt = "conntrack", "--ctstate"
	case MatchMark:
		module, opt = "mark", "--mark"
	case MatchConnmark:
		module, opt = "connmark", "--mark"
	}
	if module != "" {
		b.WriteString(" -m ")
		b.WriteString(module)
	}
	if m.Neg {
		b.WriteString(" !")
	}
	b.WriteByte(' ')
	b.WriteString(opt)
	b.WriteByte(' ')
	switch m.Kind {
	case MatchProto:
		b.WriteString(m.Proto)
	case MatchIn, MatchOut:
		b.WriteString(m.Iface)
	case MatchSrc, MatchDst:
		var buf [64]byte
		b.Write(m.Prefix.AppendTo(buf[:0]))
	case MatchDPort, MatchSPort, MatchDPorts:
		for i, p := range m.Ports {
			if i > 0 {
				b.WriteByte(',')
			}
			writeUint(b, uint64(p))
		}
	case MatchCtState:
		for i, n := range m.States.Names() {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(n)
		}
	default:
		writeUint(b, uint64(m.Value))
	}
}

// Verdict is what a rule does with a packet that matches: a typed
// iptables target.
type Verdict struct {
	Kind VerdictKind
	// Chain: the ISTIO_* chain jumped to (Jump).
	Chain string
	// Port: where Redirect and TProxy send the packet.
	Port uint16
	// Value: the mark (SetMark, TProxy) or conntrack zone (CTZone).
	Value uint32
	// ToPort: Redirect spelt --to-port (Istio's DNS UDP rules), not
	// --to-ports; the same target.
	ToPort bool
}

// VerdictKind names an iptables target.
type VerdictKind int

const (
	Return      VerdictKind = iota + 1 // RETURN
	Accept                             // ACCEPT
	Drop                               // DROP
	Jump                               // Chain
	Redirect                           // REDIRECT --to-ports Port
	TProxy                             // TPROXY --tproxy-mark Value/0xffffffff --on-port Port
	SetMark                            // MARK --set-mark Value
	SaveMark                           // CONNMARK --save-mark
	RestoreMark                        // CONNMARK --restore-mark
	CTZone                             // CT --zone Value
)

// writeTo writes the verdict as iptables arguments, from " -j" on.
func (v Verdict) writeTo(b *strings.Builder) {
	b.WriteString(" -j ")
	switch v.Kind {
	case Return:
		b.WriteString("RETURN")
	case Accept:
		b.WriteString("ACCEPT")
	case Drop:
		b.WriteString("DROP")
	case Jump:
		b.WriteString(v.Chain)
	case Redirect:
		if v.ToPort {
			b.WriteString("REDIRECT --to-port ")
		} else {
			b.WriteString("REDIRECT --to-ports ")
		}
		writeUint(b, uint64(v.Port))
	case TProxy:
		b.WriteString("TPROXY --tproxy-mark ")
		writeUint(b, uint64(v.Value))
		b.WriteString("/0xffffffff --on-port ")
		writeUint(b, uint64(v.Port))
	case SetMark:
		b.WriteString("MARK --set-mark ")
		writeUint(b, uint64(v.Value))
	case SaveMark:
		b.WriteString("CONNMARK --save-mark")
	case RestoreMark:
		b.WriteString("CONNMARK --restore-mark")
	case CTZone:
		b.WriteString("CT --zone ")
		writeUint(b, uint64(v.Value))
	}
}

// Model is what a capture spec programs into a netns, built once (Build):
// a ruleset per family, and the routes the rules rely on.
type Model struct {
	Sets   []Ruleset
	Routes Routes
}

// Routes is what a capture needs beside its rules, written over netlink:
// with IPv6, Envoy's inbound passthrough source ::6 on lo; with TPROXY, a
// policy rule per family (fwmark Mark → table Table) and a local default
// route via lo in that table.
type Routes struct {
	IPv6   bool
	TProxy bool
	Mark   uint32
	Table  int
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
		if r.Verdict.Kind == Jump {
			add(r.Table, r.Verdict.Chain)
		}
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
				r.writeTo(&b, "-A")
				b.WriteByte('\n')
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// Cleanup renders restore input that removes exactly this ruleset from a
// netns that holds it: per table, our rules in built-in chains, then our
// chains.
func (rs Ruleset) Cleanup() string {
	var b strings.Builder
	for _, t := range rs.UsedTables() {
		b.WriteString(rs.CleanupTable(t))
	}
	return b.String()
}

// CleanupTable is Cleanup for one table. A restore commits table by table,
// so a rollback that does not know which tables a failed restore wrote
// runs each table's cleanup on its own: one for a table that is not there
// fails and changes nothing.
func (rs Ruleset) CleanupTable(t string) string {
	var b strings.Builder
	chains := rs.Chains()[t]
	b.WriteString("* " + t + "\n")
	for i := len(rs.Rules) - 1; i >= 0; i-- {
		r := rs.Rules[i]
		if r.Table == t && IsBuiltin(r.Chain) {
			r.Pos = 0 // -D names the rule by its matches, wherever it is
			r.writeTo(&b, "-D")
			b.WriteByte('\n')
		}
	}
	for _, c := range chains {
		b.WriteString("-F " + c + "\n")
	}
	for _, c := range chains {
		b.WriteString("-X " + c + "\n")
	}
	b.WriteString("COMMIT\n")
	return b.String()
}
