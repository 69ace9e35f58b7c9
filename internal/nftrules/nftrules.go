// Package nftrules turns a capture spec into a native nftables ruleset. It
// does not restate Istio's logic: it takes the iptables rules of package
// rules, in their order, and translates each into nft syntax, so that both
// backends capture the same traffic by construction. It is pure: no exec,
// no netns.
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
// Each rule comes in two forms built together by one translation: nft
// text (Chain.Rules, what Script writes) and a structured form
// (Chain.Exprs, see Rule and Expr) that package netfilter programs over
// netlink without an exec.
//
// The script is nft's own command language, run by one `nft -f -`. It is
// the text sigs.k8s.io/knftables renders for the same objects (a test
// holds it to that, and runs it through knftables' Fake), but knftables is
// not linked into the plug-in: its package init compiles regexps that
// cost every plug-in exec about 0.25 ms, whatever the backend.
package nftrules

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
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
	// Rules are the chain's rules as nft text; Exprs the same rules,
	// structured (Rules[i] is Exprs[i].String()).
	Rules []string
	Exprs []Rule
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
// holding the translation of rules.Build(spec), rule for rule.
func Build(spec capture.Spec) ([]Table, error) {
	var out []Table
	for _, rs := range rules.Build(spec) {
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
		nft, err := translate(rs.Family, r)
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
			for _, r := range u {
				c.Rules = append(c.Rules, r.String())
				c.Exprs = append(c.Exprs, r)
			}
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

// translate turns one iptables rule into nft rules (usually one). The
// vocabulary of package rules is small and closed; anything else is a bug
// there, reported rather than guessed.
func translate(f rules.Family, r rules.Rule) ([]Rule, error) {
	ip := "ip"
	if f == rules.IPv6 {
		ip = "ip6"
	}
	args := r.Args
	j := slices.Index(args, "-j")
	if j < 0 || j+1 >= len(args) {
		return nil, fmt.Errorf("no target")
	}
	match, target, targetArgs := args[:j], args[j+1], args[j+2:]

	var (
		exprs     []Expr
		proto     string
		protoAt   = -1
		portMatch bool
		module    string
		neg       bool
	)
	for i := 0; i < len(match); i++ {
		opt := match[i]
		if opt == "!" {
			neg = true
			continue
		}
		if i+1 >= len(match) {
			return nil, fmt.Errorf("%s without a value", opt)
		}
		i++
		v := match[i]
		op := ""
		if neg {
			op = "!= "
		}
		neg = false
		switch opt {
		case "-p":
			if op != "" {
				return nil, fmt.Errorf("negated protocol")
			}
			proto, protoAt = v, len(exprs)
			e := Expr{Text: "meta l4proto " + v}
			if v == "tcp" || v == "udp" {
				e.Kind, e.Proto = KindL4Proto, v
			}
			exprs = append(exprs, e)
		case "-s", "-d":
			field := "saddr"
			if opt == "-d" {
				field = "daddr"
			}
			a, p, err := address(v)
			if err != nil {
				return nil, err
			}
			e := Expr{Text: ip + " " + field + " " + op + a}
			if p.Addr().Is4() == (f == rules.IPv4) && p.Bits() > 0 {
				e.Kind, e.Field, e.Neg, e.Prefix = KindAddr, field, op != "", p
			}
			exprs = append(exprs, e)
		case "-i", "-o":
			field := "iifname"
			if opt == "-o" {
				field = "oifname"
			}
			e := Expr{Text: field + " " + op + ifname(v)}
			name, wild := strings.CutSuffix(v, "+")
			if len(name) < 16 && (name != "" || !wild) {
				e.Kind, e.Field, e.Neg, e.Name, e.Wildcard = KindIfname, field, op != "", name, wild
			}
			exprs = append(exprs, e)
		case "--dport", "--sport", "--dports":
			if proto == "" {
				return nil, fmt.Errorf("%s without -p", opt)
			}
			port := v
			if opt == "--dports" {
				port = "{ " + strings.ReplaceAll(v, ",", ", ") + " }"
			}
			field := "dport"
			if opt == "--sport" {
				field = "sport"
			}
			e := Expr{Text: proto + " " + field + " " + op + port}
			if ports, ok := parsePorts(v); ok && (proto == "tcp" || proto == "udp") {
				e.Kind, e.Proto, e.Field, e.Neg, e.Ports, e.Set = KindPort, proto, field, op != "", ports, opt == "--dports"
			}
			exprs = append(exprs, e)
			portMatch = true
		case "-m":
			module = v
		case "--uid-owner":
			exprs = append(exprs, number(Expr{Text: "meta skuid " + op + v, Kind: KindMeta, Field: "skuid", Neg: op != ""}, v, 32))
		case "--gid-owner":
			exprs = append(exprs, number(Expr{Text: "meta skgid " + op + v, Kind: KindMeta, Field: "skgid", Neg: op != ""}, v, 32))
		case "--ctstate":
			e := Expr{Text: "ct state " + op + strings.ToLower(v)}
			if states, ok := ctStates(v); ok && op == "" {
				e.Kind, e.States = KindCtState, states
			}
			exprs = append(exprs, e)
		case "--mark":
			switch module {
			case "mark":
				exprs = append(exprs, number(Expr{Text: "meta mark " + op + v, Kind: KindMeta, Field: "mark", Neg: op != ""}, v, 32))
			case "connmark":
				exprs = append(exprs, number(Expr{Text: "ct mark " + op + v, Kind: KindCtMark, Neg: op != ""}, v, 32))
			default:
				return nil, fmt.Errorf("--mark of module %q", module)
			}
		default:
			return nil, fmt.Errorf("unknown match %s", opt)
		}
	}
	// A port match implies its protocol: nft lists the rule without the
	// protocol match, so neither do we.
	if portMatch && protoAt >= 0 {
		exprs = slices.Delete(exprs, protoAt, protoAt+1)
	}
	rule := func(stmts ...Expr) Rule { return append(slices.Clone(exprs), stmts...) }
	verdict := func(v, chain string) Expr {
		text := v
		if chain != "" {
			text += " " + chain
		}
		return Expr{Text: text, Kind: KindVerdict, Verdict: v, Chain: chain}
	}

	opt := func(name string) (string, bool) {
		i := slices.Index(targetArgs, name)
		if i < 0 || i+1 >= len(targetArgs) {
			return "", false
		}
		return targetArgs[i+1], true
	}
	switch {
	case target == "RETURN" || target == "ACCEPT" || target == "DROP":
		return []Rule{rule(verdict(strings.ToLower(target), ""))}, nil
	case strings.HasPrefix(target, "ISTIO_"):
		return []Rule{rule(verdict("jump", ChainName(r.Table, target)))}, nil
	case target == "REDIRECT":
		port, ok := opt("--to-ports")
		if !ok {
			port, ok = opt("--to-port")
		}
		if !ok {
			return nil, fmt.Errorf("REDIRECT without a port")
		}
		return []Rule{rule(portStmt(Expr{Text: "redirect to :" + port, Kind: KindRedirect}, port))}, nil
	case target == "TPROXY":
		port, ok1 := opt("--on-port")
		mark, ok2 := opt("--tproxy-mark")
		value, mask, _ := strings.Cut(mark, "/")
		if !ok1 || !ok2 || (mask != "" && mask != "0xffffffff") {
			return nil, fmt.Errorf("TPROXY needs --on-port and a full --tproxy-mark")
		}
		// iptables' TPROXY marks and accepts the packet, and drops it when
		// no transparent socket listens; nft's tproxy only skips the rest
		// of its rule then, so the drop is a rule of its own.
		return []Rule{
			rule(portStmt(Expr{Text: "tproxy to :" + port, Kind: KindTProxy}, port),
				number(Expr{Text: "meta mark set " + value, Kind: KindMetaMarkSet}, value, 32),
				verdict("accept", "")),
			rule(verdict("drop", "")),
		}, nil
	case target == "MARK":
		v, ok := opt("--set-mark")
		if !ok {
			return nil, fmt.Errorf("MARK without --set-mark")
		}
		return []Rule{rule(number(Expr{Text: "meta mark set " + v, Kind: KindMetaMarkSet}, v, 32))}, nil
	case target == "CONNMARK" && slices.Equal(targetArgs, []string{"--save-mark"}):
		return []Rule{rule(Expr{Text: "ct mark set meta mark", Kind: KindCtMarkSetMetaMark})}, nil
	case target == "CONNMARK" && slices.Equal(targetArgs, []string{"--restore-mark"}):
		return []Rule{rule(Expr{Text: "meta mark set ct mark", Kind: KindMetaMarkSetCtMark})}, nil
	case target == "CT":
		zone, ok := opt("--zone")
		if !ok {
			return nil, fmt.Errorf("CT without --zone")
		}
		return []Rule{rule(number(Expr{Text: "ct zone set " + zone, Kind: KindCtZoneSet}, zone, 16))}, nil
	}
	return nil, fmt.Errorf("unknown target %s %s", target, strings.Join(targetArgs, " "))
}

// address renders an iptables address or prefix as nft lists it: a
// single address without its /32 or /128. It returns the prefix too.
func address(s string) (string, netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return "", netip.Prefix{}, fmt.Errorf("address %q: %w", s, err)
		}
		return a.String(), netip.PrefixFrom(a, a.BitLen()), nil
	}
	if p.IsSingleIP() {
		return p.Addr().String(), p, nil
	}
	return p.Masked().String(), p.Masked(), nil
}

// number sets e.Value from the decimal v, or leaves e of KindUnknown
// when v is anything else (a netlink builder must not guess).
func number(e Expr, v string, bits int) Expr {
	n, err := strconv.ParseUint(v, 10, bits)
	if err != nil {
		return Expr{Text: e.Text}
	}
	e.Value = uint32(n)
	return e
}

// portStmt sets e.Port from the decimal port, as number does.
func portStmt(e Expr, port string) Expr {
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return Expr{Text: e.Text}
	}
	e.Port = uint16(n)
	return e
}

// parsePorts reads "15008" or "53,15008": single decimal ports only.
func parsePorts(v string) ([]uint16, bool) {
	var out []uint16
	for _, s := range strings.Split(v, ",") {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || slices.Contains(out, uint16(n)) {
			return nil, false
		}
		out = append(out, uint16(n))
	}
	return out, true
}

// ctStates reads iptables' --ctstate list into the kernel's bits.
func ctStates(v string) (uint32, bool) {
	bits := map[string]uint32{
		"INVALID": CtStateInvalid, "ESTABLISHED": CtStateEstablished, "RELATED": CtStateRelated,
		"NEW": CtStateNew, "UNTRACKED": CtStateUntracked,
	}
	var out uint32
	for _, s := range strings.Split(v, ",") {
		b, ok := bits[s]
		if !ok {
			return 0, false
		}
		out |= b
	}
	return out, true
}

// ifname quotes an interface name for nft. iptables' wildcard "eth+" is
// nft's "eth*"; a literal trailing "*" is escaped. capture already
// rejects quotes, backslashes and whitespace in names.
func ifname(name string) string {
	switch {
	case strings.HasSuffix(name, "+"):
		name = strings.TrimSuffix(name, "+") + "*"
	case strings.HasSuffix(name, "*"):
		name = strings.TrimSuffix(name, "*") + `\*`
	}
	return `"` + name + `"`
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
				b.WriteString("add rule " + table + " " + c.Name + " " + r + "\n")
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
