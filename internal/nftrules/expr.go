package nftrules

import (
	"net/netip"
	"strings"
)

// Rule is one nft rule: its matches and statements, in order. Each Expr
// carries both the nft text it renders as (Script joins them) and its
// structured form (what the netlink builder of package netfilter
// programs). translate fills both in one place, so the text and the
// netlink messages cannot drift apart.
type Rule []Expr

// String is the rule as nft text, the form Script writes.
func (r Rule) String() string {
	parts := make([]string, len(r))
	for i, e := range r {
		parts[i] = e.Text
	}
	return strings.Join(parts, " ")
}

// Kind says what an Expr is, and which of its fields hold the value.
// KindUnknown (the zero value) means the structured form could not be
// filled in (a value outside the vocabulary): the text is still right,
// but a netlink builder must not guess, and uses nft instead.
type Kind int

// The vocabulary. Matches compare one field with Neg for "!=";
// statements act.
const (
	KindUnknown Kind = iota
	// Matches.
	KindL4Proto // meta l4proto Proto
	KindAddr    // ip/ip6 Field (saddr, daddr) [!=] Prefix
	KindIfname  // Field (iifname, oifname) [!=] Name; Wildcard: Name is a prefix
	KindPort    // Proto Field (dport, sport) [!=] Ports; Set: an anonymous set
	KindMeta    // meta Field (skuid, skgid, mark) [!=] Value
	KindCtMark  // ct mark [!=] Value
	KindCtState // ct state States (a bit mask; never negated)
	// Statements.
	KindVerdict           // Verdict (return, accept, drop, jump); Chain for jump
	KindRedirect          // redirect to :Port
	KindTProxy            // tproxy to :Port
	KindMetaMarkSet       // meta mark set Value
	KindCtMarkSetMetaMark // ct mark set meta mark
	KindMetaMarkSetCtMark // meta mark set ct mark
	KindCtZoneSet         // ct zone set Value
)

// Conntrack state bits, as the kernel's ct state holds them.
const (
	CtStateInvalid     = 1
	CtStateEstablished = 2
	CtStateRelated     = 4
	CtStateNew         = 8
	CtStateUntracked   = 64
)

// Expr is one match or statement of a rule.
type Expr struct {
	// Text is the nft text of the expression ("tcp dport != 15008").
	Text string
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
