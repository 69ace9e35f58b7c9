package netfilter

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"

	"github.com/meshcni/meshcni/internal/nftrules"
	"github.com/meshcni/meshcni/internal/rules"
)

// The nftables backend's hot path: a new pod's tables written in-process
// over netlink, one batch (one kernel transaction) for both families, with
// no exec and no NSS lookup. Each nftrules.Expr becomes the expressions
// nft 1.0.6 compiles its text into (as `nft --debug=netlink` shows), so
// that `nft list ruleset` prints the same tables either way
// (TestNetlinkEqualsNft). An Expr outside the vocabulary makes nftBatch
// return errNotNative, and the caller runs `nft -f -` instead.

// errNotNative: the tables hold something the netlink builder does not
// program; nft must.
var errNotNative = errors.New("not in the netlink builder's vocabulary")

// nftNetlinkApply programs tables in the current thread's netns as one
// transaction: per family, add the table, flush it, add its chains and
// rules (the shape of nftrules.Script). errNotNative means nothing was
// sent.
func nftNetlinkApply(tables []nftrules.Table) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables netlink: %w", err)
	}
	if err := nftBatch(conn, tables); err != nil {
		return err
	}
	return conn.Flush()
}

// nftNetlinkDelete deletes meshcni's table of each family, in one
// transaction.
func nftNetlinkDelete(fams []rules.Family) error {
	conn, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open nftables netlink: %w", err)
	}
	for _, f := range fams {
		conn.DelTable(&nftables.Table{Name: nftrules.TableName, Family: nftFamily(f)})
	}
	return conn.Flush()
}

func nftFamily(f rules.Family) nftables.TableFamily {
	if f == rules.IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// nftBatch queues tables' messages on conn. All rules are translated
// before anything is queued, so errNotNative leaves conn empty.
func nftBatch(conn *nftables.Conn, tables []nftrules.Table) error {
	type rule struct {
		chain string
		exprs []expr.Any
		sets  []anonSet
	}
	type table struct {
		t      *nftables.Table
		chains []nftrules.Chain
		rules  []rule
	}
	var out []table
	for _, t := range tables {
		tt := table{t: &nftables.Table{Name: nftrules.TableName, Family: nftFamily(t.Family)}, chains: t.Chains}
		for _, c := range t.Chains {
			if c.IsBase() {
				if _, _, err := baseChain(c); err != nil {
					return err
				}
			}
			if len(c.Exprs) != len(c.Rules) {
				return fmt.Errorf("%w: %s %s: %d rules, %d structured", errNotNative, nftrules.NFTFamily(t.Family), c.Name, len(c.Rules), len(c.Exprs))
			}
			for i, r := range c.Exprs {
				if r.String() != c.Rules[i] {
					// Only the text is known to be what nft writes.
					return fmt.Errorf("%w: %s %s: rule %q is structured as %q", errNotNative, nftrules.NFTFamily(t.Family), c.Name, c.Rules[i], r)
				}
				exprs, sets, err := ruleExprs(t.Family, r)
				if err != nil {
					return fmt.Errorf("%w: %s %s: %s: %v", errNotNative, nftrules.NFTFamily(t.Family), c.Name, r, err)
				}
				tt.rules = append(tt.rules, rule{c.Name, exprs, sets})
			}
		}
		out = append(out, tt)
	}
	for _, tt := range out {
		conn.AddTable(tt.t)
		conn.FlushTable(tt.t)
		chains := map[string]*nftables.Chain{}
		for _, c := range tt.chains {
			ch := &nftables.Chain{Name: c.Name, Table: tt.t}
			if c.IsBase() {
				typ, hook, _ := baseChain(c)
				ch.Type, ch.Hooknum, ch.Priority = typ, hook, nftables.ChainPriorityRef(nftables.ChainPriority(c.Priority))
			}
			chains[c.Name] = conn.AddChain(ch)
		}
		for _, r := range tt.rules {
			for _, s := range r.sets {
				s.set.Table = tt.t
				if err := conn.AddSet(s.set, s.elems); err != nil {
					return err
				}
				s.lookup.SetName, s.lookup.SetID = s.set.Name, s.set.ID
			}
			conn.AddRule(&nftables.Rule{Table: tt.t, Chain: chains[r.chain], Exprs: r.exprs})
		}
	}
	return nil
}

func baseChain(c nftrules.Chain) (nftables.ChainType, *nftables.ChainHook, error) {
	var typ nftables.ChainType
	switch c.Type {
	case "filter":
		typ = nftables.ChainTypeFilter
	case "route":
		typ = nftables.ChainTypeRoute
	case "nat":
		typ = nftables.ChainTypeNAT
	default:
		return "", nil, fmt.Errorf("%w: chain %s type %q", errNotNative, c.Name, c.Type)
	}
	switch c.Hook {
	case "prerouting":
		return typ, nftables.ChainHookPrerouting, nil
	case "output":
		return typ, nftables.ChainHookOutput, nil
	}
	return "", nil, fmt.Errorf("%w: chain %s hook %q", errNotNative, c.Name, c.Hook)
}

// anonSet is an anonymous set a rule looks up; its name and ID are
// known once conn.AddSet has queued it.
type anonSet struct {
	set    *nftables.Set
	elems  []nftables.SetElement
	lookup *expr.Lookup
}

const reg = 1 // nft uses register 1 (32-bit reg 1 = NFT_REG_1) for all of these

var l4proto = map[string]byte{"tcp": 6, "udp": 17}

func cmpOp(neg bool) expr.CmpOp {
	if neg {
		return expr.CmpOpNeq
	}
	return expr.CmpOpEq
}

// ruleExprs translates one rule into the expressions nft compiles it into.
func ruleExprs(f rules.Family, r nftrules.Rule) ([]expr.Any, []anonSet, error) {
	var (
		out  []expr.Any
		sets []anonSet
	)
	imm := func(data []byte) { out = append(out, &expr.Immediate{Register: reg, Data: data}) }
	for _, e := range r {
		switch e.Kind {
		case nftrules.KindL4Proto:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{l4proto[e.Proto]}})
		case nftrules.KindAddr:
			a, err := addrExprs(f, e)
			if err != nil {
				return nil, nil, err
			}
			out = append(out, a...)
		case nftrules.KindIfname:
			key := expr.MetaKeyIIFNAME
			if e.Field == "oifname" {
				key = expr.MetaKeyOIFNAME
			} else if e.Field != "iifname" {
				return nil, nil, fmt.Errorf("field %q", e.Field)
			}
			data := []byte(e.Name)
			if !e.Wildcard {
				data = make([]byte, 16) // IFNAMSIZ, NUL-padded
				copy(data, e.Name)
			}
			out = append(out, &expr.Meta{Key: key, Register: reg}, &expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: data})
		case nftrules.KindPort:
			var off uint32
			switch e.Field {
			case "sport":
			case "dport":
				off = 2
			default:
				return nil, nil, fmt.Errorf("field %q", e.Field)
			}
			// A set of one is not a set nft keeps: leave it to nft.
			if len(e.Ports) == 0 || (len(e.Ports) > 1) != e.Set {
				return nil, nil, fmt.Errorf("ports %v", e.Ports)
			}
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{l4proto[e.Proto]}},
				&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 2})
			if !e.Set {
				out = append(out, &expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: binaryutil.BigEndian.PutUint16(e.Ports[0])})
				break
			}
			s := anonSet{
				set:    &nftables.Set{Anonymous: true, Constant: true, KeyType: nftables.TypeInetService},
				lookup: &expr.Lookup{SourceRegister: reg, Invert: e.Neg},
			}
			for _, p := range e.Ports {
				s.elems = append(s.elems, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)})
			}
			sets = append(sets, s)
			out = append(out, s.lookup)
		case nftrules.KindMeta:
			var key expr.MetaKey
			switch e.Field {
			case "skuid":
				key = expr.MetaKeySKUID
			case "skgid":
				key = expr.MetaKeySKGID
			case "mark":
				key = expr.MetaKeyMARK
			default:
				return nil, nil, fmt.Errorf("field %q", e.Field)
			}
			out = append(out, &expr.Meta{Key: key, Register: reg},
				&expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: binaryutil.NativeEndian.PutUint32(e.Value)})
		case nftrules.KindCtMark:
			out = append(out, &expr.Ct{Key: expr.CtKeyMARK, Register: reg},
				&expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: binaryutil.NativeEndian.PutUint32(e.Value)})
		case nftrules.KindCtState:
			if e.Neg || e.States == 0 {
				return nil, nil, fmt.Errorf("ct state %#x", e.States)
			}
			out = append(out, &expr.Ct{Key: expr.CtKeySTATE, Register: reg},
				&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(e.States), Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: make([]byte, 4)})
		case nftrules.KindVerdict:
			v := &expr.Verdict{}
			switch e.Verdict {
			case "return":
				v.Kind = expr.VerdictReturn
			case "accept":
				v.Kind = expr.VerdictAccept
			case "drop":
				v.Kind = expr.VerdictDrop
			case "jump":
				if e.Chain == "" {
					return nil, nil, errors.New("jump without a chain")
				}
				v.Kind, v.Chain = expr.VerdictJump, e.Chain
			default:
				return nil, nil, fmt.Errorf("verdict %q", e.Verdict)
			}
			out = append(out, v)
		case nftrules.KindRedirect:
			imm(binaryutil.BigEndian.PutUint16(e.Port))
			// NF_NAT_RANGE_PROTO_SPECIFIED, as nft sets it.
			out = append(out, &expr.Redir{RegisterProtoMin: reg, Flags: 2})
		case nftrules.KindTProxy:
			imm(binaryutil.BigEndian.PutUint16(e.Port))
			fam := byte(nftFamily(f))
			out = append(out, &expr.TProxy{Family: fam, TableFamily: fam, RegPort: reg})
		case nftrules.KindMetaMarkSet:
			imm(binaryutil.NativeEndian.PutUint32(e.Value))
			out = append(out, &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg})
		case nftrules.KindCtMarkSetMetaMark:
			out = append(out, &expr.Meta{Key: expr.MetaKeyMARK, Register: reg},
				&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: reg})
		case nftrules.KindMetaMarkSetCtMark:
			out = append(out, &expr.Ct{Key: expr.CtKeyMARK, Register: reg},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg})
		case nftrules.KindCtZoneSet:
			if e.Value > 0xffff {
				return nil, nil, fmt.Errorf("ct zone %d", e.Value)
			}
			imm(binaryutil.NativeEndian.PutUint16(uint16(e.Value)))
			out = append(out, &expr.Ct{Key: expr.CtKeyZONE, SourceRegister: true, Register: reg})
		default:
			return nil, nil, fmt.Errorf("no netlink form for %q", e.Text)
		}
	}
	return out, sets, nil
}

// addrExprs matches ip/ip6 saddr/daddr against a prefix as nft does: the
// whole address, the leading bytes of a byte-aligned prefix, or the whole
// address masked.
func addrExprs(f rules.Family, e nftrules.Expr) ([]expr.Any, error) {
	var off uint32
	size := 4
	if f == rules.IPv6 {
		size = 16
	}
	switch {
	case e.Field == "saddr" && f == rules.IPv4:
		off = 12
	case e.Field == "daddr" && f == rules.IPv4:
		off = 16
	case e.Field == "saddr" && f == rules.IPv6:
		off = 8
	case e.Field == "daddr" && f == rules.IPv6:
		off = 24
	default:
		return nil, fmt.Errorf("field %q", e.Field)
	}
	p := e.Prefix.Masked()
	addr := p.Addr().AsSlice()
	bits := p.Bits()
	if len(addr) != size || bits <= 0 {
		return nil, fmt.Errorf("prefix %s in the %s table", e.Prefix, nftrules.NFTFamily(f))
	}
	load := func(n int) *expr.Payload {
		return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(n)}
	}
	switch {
	case bits == size*8:
		return []expr.Any{load(size), &expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: addr}}, nil
	case bits%8 == 0:
		n := bits / 8
		return []expr.Any{load(n), &expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: addr[:n]}}, nil
	}
	mask := make([]byte, size)
	for i := 0; i < bits; i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return []expr.Any{
		load(size),
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: uint32(size), Mask: mask, Xor: make([]byte, size)},
		&expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: addr},
	}, nil
}
