package nftrules

import (
	"net/netip"
	"strconv"
	"strings"
)

// Rule is one nft rule: its matches and statements, in order. Its text
// (Script) and its netlink messages (Batch) are both made
// from these typed expressions; neither is derived from the other.
type Rule []Expr

// String is the rule as nft text, the form Script writes.
func (r Rule) String() string {
	parts := make([]string, len(r))
	for i, e := range r {
		parts[i] = e.String()
	}
	return strings.Join(parts, " ")
}

// Kind says what an Expr is, and which of its fields hold the value. The
// zero Kind is no expression: a bug wherever it appears.
type Kind int

// The vocabulary. Matches compare one field with Neg for "!=";
// statements act.
const (
	// Matches.
	KindL4Proto Kind = iota + 1 // meta l4proto Proto
	KindAddr                    // ip/ip6 Field (saddr, daddr) [!=] Prefix
	KindIfname                  // Field (iifname, oifname) [!=] Name; Wildcard: Name is a prefix
	KindPort                    // Proto Field (dport, sport) [!=] Ports; Set: an anonymous set
	KindMeta                    // meta Field (skuid, skgid, mark) [!=] Value
	KindCtMark                  // ct mark [!=] Value
	KindCtState                 // ct state States (a bit mask)
	// Statements.
	KindVerdict           // Verdict (return, accept, drop, jump); Chain for jump
	KindRedirect          // redirect to :Port
	KindTProxy            // tproxy to :Port
	KindMetaMarkSet       // meta mark set Value
	KindCtMarkSetMetaMark // ct mark set meta mark
	KindMetaMarkSetCtMark // meta mark set ct mark
	KindCtZoneSet         // ct zone set Value
)

// Conntrack state bits, as the kernel's ct state holds them (the same
// bits as rules.CtState).
const (
	CtStateInvalid     = 1
	CtStateEstablished = 2
	CtStateRelated     = 4
	CtStateNew         = 8
	CtStateUntracked   = 64
)

// Expr is one match or statement of a rule.
type Expr struct {
	Kind Kind
	Neg  bool
	// Field: saddr/daddr, iifname/oifname, dport/sport, skuid/skgid/mark.
	Field string
	// Proto: tcp or udp (KindL4Proto, KindPort).
	Proto    string
	Prefix   netip.Prefix
	Name     string
	Wildcard bool
	Ports    []uint16
	Set      bool
	Value    uint32
	States   uint32
	Verdict  string
	Chain    string
	Port     uint16
}

// String renders the expression as nft writes it ("tcp dport != 15008").
func (e Expr) String() string {
	op := ""
	if e.Neg {
		op = "!= "
	}
	u := func(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
	switch e.Kind {
	case KindL4Proto:
		return "meta l4proto " + e.Proto
	case KindAddr:
		ip, a := "ip", e.Prefix.String()
		if e.Prefix.Addr().Is6() {
			ip = "ip6"
		}
		if e.Prefix.IsSingleIP() {
			a = e.Prefix.Addr().String() // as nft lists it: no /32 or /128
		}
		return ip + " " + e.Field + " " + op + a
	case KindIfname:
		return e.Field + " " + op + ifname(e.Name, e.Wildcard)
	case KindPort:
		ports := make([]string, len(e.Ports))
		for i, p := range e.Ports {
			ports[i] = u(uint32(p))
		}
		v := strings.Join(ports, ", ")
		if e.Set {
			v = "{ " + v + " }"
		}
		return e.Proto + " " + e.Field + " " + op + v
	case KindMeta:
		return "meta " + e.Field + " " + op + u(e.Value)
	case KindCtMark:
		return "ct mark " + op + u(e.Value)
	case KindCtState:
		var names []string
		// Written in Istio's order, as package rules writes them.
		for _, s := range []struct {
			bit  uint32
			name string
		}{{CtStateInvalid, "invalid"}, {CtStateRelated, "related"}, {CtStateEstablished, "established"}, {CtStateNew, "new"}, {CtStateUntracked, "untracked"}} {
			if e.States&s.bit != 0 {
				names = append(names, s.name)
			}
		}
		return "ct state " + op + strings.Join(names, ",")
	case KindVerdict:
		if e.Chain != "" {
			return e.Verdict + " " + e.Chain
		}
		return e.Verdict
	case KindRedirect:
		return "redirect to :" + u(uint32(e.Port))
	case KindTProxy:
		return "tproxy to :" + u(uint32(e.Port))
	case KindMetaMarkSet:
		return "meta mark set " + u(e.Value)
	case KindCtMarkSetMetaMark:
		return "ct mark set meta mark"
	case KindMetaMarkSetCtMark:
		return "meta mark set ct mark"
	case KindCtZoneSet:
		return "ct zone set " + u(e.Value)
	}
	return "<kind " + strconv.Itoa(int(e.Kind)) + ">"
}

// ifname quotes an interface name for nft: a wildcard name ends in "*",
// and a literal trailing "*" is escaped. capture already rejects quotes,
// backslashes and whitespace in names.
func ifname(name string, wildcard bool) string {
	switch {
	case wildcard:
		name += "*"
	case strings.HasSuffix(name, "*"):
		name = strings.TrimSuffix(name, "*") + `\*`
	}
	return `"` + name + `"`
}
