package nftrules

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/meshcni/meshcni/internal/rules"
)

// The third rendering of the tables, beside Script's nft text: the
// netlink messages of the nftables backend's hot path, a new pod's tables
// written in-process (package netfilter sends them), one batch (one kernel
// transaction) for both families, with no exec and no NSS lookup. This
// file is pure: it builds bytes. Each Expr becomes the expressions
// nft 1.0.6 compiles its text into (as `nft --debug=netlink` shows), so
// that `nft list ruleset` prints the same tables either way
// (TestNetlinkEqualsNft). An Expr whose value this encoder does not write
// (an interface name of 16 bytes, a /0 prefix, a set with a repeated port)
// makes Batch return ErrNotNative, and the caller runs `nft -f -`,
// whose own checks then apply.
//
// google/nftables provides the expressions' encoding (expr.Marshal); the
// messages around them are written here, because its Conn.Flush asks the
// kernel to echo every rule back and to ack every message, and reads them
// one by one: for a dual-stack pod that cost more than nft's whole exec.
// The batch is sent the way nft sends it: one send, no echo, one ack.

// ErrNotNative: the tables hold something the netlink builder does not
// program; nft must.
var ErrNotNative = errors.New("not in the netlink builder's vocabulary")

func nftFamily(f rules.Family) nftables.TableFamily {
	if f == rules.IPv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// Batch builds tables' transaction. All rules are translated before
// anything is built, so ErrNotNative comes before any message.
func Batch(tables []Table) (*NetlinkBatch, error) {
	type rule struct {
		chain string
		exprs []expr.Any
		sets  []anonSet
	}
	rulesOf := make([][]rule, len(tables))
	for i, t := range tables {
		for _, c := range t.Chains {
			if c.IsBase() {
				if _, _, err := baseChain(c); err != nil {
					return nil, err
				}
			}
			for _, r := range c.Rules {
				exprs, sets, err := ruleExprs(t.Family, r)
				if err != nil {
					return nil, fmt.Errorf("%w: %s %s: %s: %v", ErrNotNative, NFTFamily(t.Family), c.Name, r, err)
				}
				rulesOf[i] = append(rulesOf[i], rule{c.Name, exprs, sets})
			}
		}
	}
	b := newBatch()
	var setID uint32
	for i, t := range tables {
		fam := nftFamily(t.Family)
		table := attrStr(unix.NFTA_TABLE_NAME, TableName)
		b.msg(unix.NFT_MSG_NEWTABLE, unix.NLM_F_CREATE, fam, table, attrU32(unix.NFTA_TABLE_FLAGS, 0))
		b.msg(unix.NFT_MSG_DELRULE, 0, fam, table) // flush table
		for _, c := range t.Chains {
			a := [][]byte{table, attrStr(unix.NFTA_CHAIN_NAME, c.Name)}
			if c.IsBase() {
				typ, hook, _ := baseChain(c)
				a = append(a,
					attr(unix.NLA_F_NESTED|unix.NFTA_CHAIN_HOOK, cat(
						attrU32(unix.NFTA_HOOK_HOOKNUM, uint32(*hook)),
						attrU32(unix.NFTA_HOOK_PRIORITY, uint32(int32(c.Priority))))),
					attrStr(unix.NFTA_CHAIN_TYPE, string(typ)))
			}
			b.msg(unix.NFT_MSG_NEWCHAIN, unix.NLM_F_CREATE, fam, a...)
		}
		for _, r := range rulesOf[i] {
			for _, s := range r.sets {
				setID++
				s.lookup.SetName, s.lookup.SetID = "__set%d", setID
				b.msg(unix.NFT_MSG_NEWSET, unix.NLM_F_CREATE, fam, table,
					attrStr(unix.NFTA_SET_NAME, s.lookup.SetName),
					attrU32(unix.NFTA_SET_FLAGS, unix.NFT_SET_ANONYMOUS|unix.NFT_SET_CONSTANT),
					attrU32(unix.NFTA_SET_KEY_TYPE, s.keyType),
					attrU32(unix.NFTA_SET_KEY_LEN, s.keyLen),
					attrU32(unix.NFTA_SET_ID, setID),
					attr(unix.NLA_F_NESTED|unix.NFTA_SET_DESC, attrU32(unix.NFTA_SET_DESC_SIZE, uint32(len(s.elems)))),
					// The key's byte order (big endian), as nft writes it.
					attr(unix.NFTA_SET_USERDATA, userdata.AppendUint32(nil, userdata.NFTNL_UDATA_SET_KEYBYTEORDER, 2)))
				var elems [][]byte
				for k, e := range s.elems {
					elems = append(elems, attr(unix.NLA_F_NESTED|uint16(k+1),
						attr(unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_KEY, attr(unix.NFTA_DATA_VALUE, e))))
				}
				b.msg(unix.NFT_MSG_NEWSETELEM, unix.NLM_F_CREATE, fam,
					attrStr(unix.NFTA_SET_ELEM_LIST_TABLE, TableName),
					attrStr(unix.NFTA_SET_ELEM_LIST_SET, s.lookup.SetName),
					attrU32(unix.NFTA_SET_ELEM_LIST_SET_ID, setID),
					attr(unix.NLA_F_NESTED|unix.NFTA_SET_ELEM_LIST_ELEMENTS, cat(elems...)))
			}
			var list [][]byte
			for _, e := range r.exprs {
				data, err := expr.Marshal(byte(fam), e)
				if err != nil {
					return nil, err
				}
				list = append(list, attr(unix.NLA_F_NESTED|unix.NFTA_LIST_ELEM, data))
			}
			b.msg(unix.NFT_MSG_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_APPEND, fam,
				table, attrStr(unix.NFTA_RULE_CHAIN, r.chain),
				attr(unix.NLA_F_NESTED|unix.NFTA_RULE_EXPRESSIONS, cat(list...)))
		}
	}
	return b.end(), nil
}

// batch is one nf_tables transaction as nft sends it: begin, the
// messages (no echo, no ack but for the last), end.
type NetlinkBatch struct {
	buf  []byte
	seq  uint32
	last int // offset of the last message before the end
}

func newBatch() *NetlinkBatch {
	b := &NetlinkBatch{}
	b.raw(unix.NFNL_MSG_BATCH_BEGIN, 0, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	return b
}

// msg appends an nf_tables message of type typ (NFT_MSG_*).
func (b *NetlinkBatch) msg(typ, flags uint16, fam nftables.TableFamily, attrs ...[]byte) {
	b.last = len(b.buf)
	b.raw(unix.NFNL_SUBSYS_NFTABLES<<8|typ, flags, byte(fam), 0, attrs...)
}

func (b *NetlinkBatch) end() *NetlinkBatch {
	if b.seq > 1 {
		// Ask for an ack of the last message: the one reply of a batch
		// that worked.
		flags := binaryutil.NativeEndian.Uint16(b.buf[b.last+6:])
		copy(b.buf[b.last+6:], binaryutil.NativeEndian.PutUint16(flags|unix.NLM_F_ACK))
	}
	b.raw(unix.NFNL_MSG_BATCH_END, 0, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES)
	return b
}

// Bytes are the batch's messages, to send on a NETLINK_NETFILTER socket.
func (b *NetlinkBatch) Bytes() []byte { return b.buf }

// Messages counts the batch's messages, begin and end included; the last
// but one, Messages()-1, is the one whose ack says the batch worked.
func (b *NetlinkBatch) Messages() uint32 { return b.seq }

// DeleteBatch deletes meshcni's table of each family, in one transaction.
func DeleteBatch(fams ...rules.Family) *NetlinkBatch {
	b := newBatch()
	for _, f := range fams {
		b.msg(unix.NFT_MSG_DELTABLE, 0, nftFamily(f), attrStr(unix.NFTA_TABLE_NAME, TableName))
	}
	return b.end()
}

// ListTablesRequest asks for every nftables table of a netns, every
// family, in one dump.
func ListTablesRequest() []byte {
	req := &NetlinkBatch{}
	req.raw(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_GETTABLE, unix.NLM_F_DUMP, unix.AF_UNSPEC, 0)
	return req.buf
}

func (b *NetlinkBatch) raw(typ, flags uint16, fam byte, resID uint16, attrs ...[]byte) {
	b.seq++
	body := cat(attrs...)
	n := unix.NLMSG_HDRLEN + 4 + len(body)
	b.buf = append(b.buf, binaryutil.NativeEndian.PutUint32(uint32(n))...)
	b.buf = append(b.buf, binaryutil.NativeEndian.PutUint16(typ)...)
	b.buf = append(b.buf, binaryutil.NativeEndian.PutUint16(unix.NLM_F_REQUEST|flags)...)
	b.buf = append(b.buf, binaryutil.NativeEndian.PutUint32(b.seq)...)
	b.buf = append(b.buf, 0, 0, 0, 0) // port id: the kernel's
	b.buf = append(b.buf, fam, unix.NFNETLINK_V0)
	b.buf = append(b.buf, binaryutil.BigEndian.PutUint16(resID)...)
	b.buf = append(b.buf, body...)
}

// attr is one netlink attribute, padded.
func attr(typ uint16, data []byte) []byte {
	n := unix.SizeofNlAttr + len(data)
	out := make([]byte, 0, (n+unix.NLA_ALIGNTO-1) & ^(unix.NLA_ALIGNTO-1))
	out = append(out, binaryutil.NativeEndian.PutUint16(uint16(n))...)
	out = append(out, binaryutil.NativeEndian.PutUint16(typ)...)
	out = append(out, data...)
	for len(out)%unix.NLA_ALIGNTO != 0 {
		out = append(out, 0)
	}
	return out
}

func attrStr(typ uint16, s string) []byte { return attr(typ, append([]byte(s), 0)) }

func attrU32(typ uint16, v uint32) []byte { return attr(typ, binaryutil.BigEndian.PutUint32(v)) }

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// The netlink names of nftrules' words: a word not here is outside the
// in-process builder's vocabulary, and nft writes the rule instead.
var (
	chainTypes = map[string]nftables.ChainType{
		"filter": nftables.ChainTypeFilter, "route": nftables.ChainTypeRoute, "nat": nftables.ChainTypeNAT,
	}
	chainHooks = map[string]*nftables.ChainHook{
		"prerouting": nftables.ChainHookPrerouting, "output": nftables.ChainHookOutput,
	}
	metaKeys = map[string]expr.MetaKey{
		"skuid": expr.MetaKeySKUID, "skgid": expr.MetaKeySKGID, "mark": expr.MetaKeyMARK,
	}
)

func baseChain(c Chain) (nftables.ChainType, *nftables.ChainHook, error) {
	typ, ok := chainTypes[c.Type]
	if !ok {
		return "", nil, fmt.Errorf("%w: chain %s type %q", ErrNotNative, c.Name, c.Type)
	}
	hook, ok := chainHooks[c.Hook]
	if !ok {
		return "", nil, fmt.Errorf("%w: chain %s hook %q", ErrNotNative, c.Name, c.Hook)
	}
	return typ, hook, nil
}

// anonSet is an anonymous set of ports that a rule looks up; Batch
// names it and fills in the lookup.
type anonSet struct {
	keyType, keyLen uint32
	elems           [][]byte
	lookup          *expr.Lookup
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
func ruleExprs(f rules.Family, r Rule) ([]expr.Any, []anonSet, error) {
	var (
		out  []expr.Any
		sets []anonSet
	)
	imm := func(data []byte) { out = append(out, &expr.Immediate{Register: reg, Data: data}) }
	for _, e := range r {
		switch e.Kind {
		case KindL4Proto:
			if l4proto[e.Proto] == 0 {
				return nil, nil, fmt.Errorf("protocol %q", e.Proto)
			}
			out = append(out,
				&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{l4proto[e.Proto]}})
		case KindAddr:
			a, err := addrExprs(f, e)
			if err != nil {
				return nil, nil, err
			}
			out = append(out, a...)
		case KindIfname:
			key := expr.MetaKeyIIFNAME
			if e.Field == "oifname" {
				key = expr.MetaKeyOIFNAME
			} else if e.Field != "iifname" {
				return nil, nil, fmt.Errorf("field %q", e.Field)
			}
			if len(e.Name) >= 16 || (e.Name == "" && e.Wildcard) {
				return nil, nil, fmt.Errorf("interface name %q", e.Name)
			}
			data := []byte(e.Name)
			if !e.Wildcard {
				data = make([]byte, 16) // IFNAMSIZ, NUL-padded
				copy(data, e.Name)
			}
			out = append(out, &expr.Meta{Key: key, Register: reg}, &expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: data})
		case KindPort:
			var off uint32
			switch e.Field {
			case "sport":
			case "dport":
				off = 2
			default:
				return nil, nil, fmt.Errorf("field %q", e.Field)
			}
			// A set of one is not a set nft keeps: leave it to nft.
			if len(e.Ports) == 0 || (len(e.Ports) > 1) != e.Set || hasRepeat(e.Ports) || l4proto[e.Proto] == 0 {
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
				keyType: nftables.TypeInetService.GetNFTMagic(), keyLen: nftables.TypeInetService.Bytes,
				lookup: &expr.Lookup{SourceRegister: reg, Invert: e.Neg},
			}
			for _, p := range e.Ports {
				s.elems = append(s.elems, binaryutil.BigEndian.PutUint16(p))
			}
			sets = append(sets, s)
			out = append(out, s.lookup)
		case KindMeta:
			key, ok := metaKeys[e.Field]
			if !ok {
				return nil, nil, fmt.Errorf("field %q", e.Field)
			}
			out = append(out, &expr.Meta{Key: key, Register: reg},
				&expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: binaryutil.NativeEndian.PutUint32(e.Value)})
		case KindCtMark:
			out = append(out, &expr.Ct{Key: expr.CtKeyMARK, Register: reg},
				&expr.Cmp{Op: cmpOp(e.Neg), Register: reg, Data: binaryutil.NativeEndian.PutUint32(e.Value)})
		case KindCtState:
			if e.Neg || e.States == 0 {
				return nil, nil, fmt.Errorf("ct state %#x", e.States)
			}
			out = append(out, &expr.Ct{Key: expr.CtKeySTATE, Register: reg},
				&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(e.States), Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: make([]byte, 4)})
		case KindVerdict:
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
		case KindRedirect:
			if e.Port == 0 {
				return nil, nil, errors.New("redirect to port 0")
			}
			imm(binaryutil.BigEndian.PutUint16(e.Port))
			// NF_NAT_RANGE_PROTO_SPECIFIED, as nft sets it.
			out = append(out, &expr.Redir{RegisterProtoMin: reg, Flags: 2})
		case KindTProxy:
			if e.Port == 0 {
				return nil, nil, errors.New("tproxy to port 0")
			}
			imm(binaryutil.BigEndian.PutUint16(e.Port))
			fam := byte(nftFamily(f))
			out = append(out, &expr.TProxy{Family: fam, TableFamily: fam, RegPort: reg})
		case KindMetaMarkSet:
			imm(binaryutil.NativeEndian.PutUint32(e.Value))
			out = append(out, &expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg})
		case KindCtMarkSetMetaMark:
			out = append(out, &expr.Meta{Key: expr.MetaKeyMARK, Register: reg},
				&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: reg})
		case KindMetaMarkSetCtMark:
			out = append(out, &expr.Ct{Key: expr.CtKeyMARK, Register: reg},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg})
		case KindCtZoneSet:
			if e.Value > 0xffff {
				return nil, nil, fmt.Errorf("ct zone %d", e.Value)
			}
			imm(binaryutil.NativeEndian.PutUint16(uint16(e.Value)))
			out = append(out, &expr.Ct{Key: expr.CtKeyZONE, SourceRegister: true, Register: reg})
		default:
			return nil, nil, fmt.Errorf("no netlink form for %q", e)
		}
	}
	return out, sets, nil
}

func hasRepeat(ps []uint16) bool {
	for i, p := range ps {
		if slices.Contains(ps[i+1:], p) {
			return true
		}
	}
	return false
}

// addrExprs matches ip/ip6 saddr/daddr against a prefix as nft does: the
// whole address, the leading bytes of a byte-aligned prefix, or the whole
// address masked.
func addrExprs(f rules.Family, e Expr) ([]expr.Any, error) {
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
		return nil, fmt.Errorf("prefix %s in the %s table", e.Prefix, NFTFamily(f))
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
