package capture

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxQuoted bounds how much of a rejected value an error message repeats,
// quoted. An annotation value may be 256 KiB; quoting it whole (twice: the
// annotation, then the item) made a message the agent's log socket drops
// (64 KiB per line) and that the runtime copies into every event.
const maxQuoted = 80

// quote is %q for error messages: the longest prefix of s whose quoted
// form fits maxQuoted, cut on a rune boundary, then how long s really was.
func quote(s string) string {
	if len(s)+2 <= maxQuoted { // never quote a huge value whole
		if q := strconv.Quote(s); len(q) <= maxQuoted {
			return q
		}
	}
	cut := min(len(s), maxQuoted)
	for cut > 0 && ((cut < len(s) && !utf8.RuneStart(s[cut])) || len(strconv.Quote(s[:cut])) > maxQuoted) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("...(%d bytes)", len(s))
}

// splitList splits a comma-separated list. Lists are as long as Istio
// lets them be (it bounds none); what bounds the rules they make is
// RuleBudget, over the whole spec.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// ParsePort parses one TCP/UDP port, 1-65535.
func ParsePort(s string) (uint16, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("port %s: must be a number 1-65535", quote(s))
	}
	return uint16(n), nil
}

// ParsePortList parses "80,443" into ports, dropping duplicates.
func ParsePortList(s string) ([]uint16, error) {
	items := splitList(s)
	var out []uint16
	seen := map[uint16]bool{}
	for _, it := range items {
		p, err := ParsePort(it)
		if err != nil {
			return nil, err
		}
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out, nil
}

// ParsePorts parses an include list that may be "*".
func ParsePorts(s string) (Ports, error) {
	if strings.TrimSpace(s) == "*" {
		return Ports{All: true}, nil
	}
	l, err := ParsePortList(s)
	return Ports{List: l}, err
}

// ParseCIDRList parses "10.0.0.0/8,fd00::/8". A bare address is taken as a
// host prefix, as iptables would.
func ParseCIDRList(s string) ([]netip.Prefix, error) {
	items := splitList(s)
	var out []netip.Prefix
	for _, it := range items {
		p, err := netip.ParsePrefix(it)
		if err != nil {
			a, aerr := netip.ParseAddr(it)
			if aerr != nil || a.Zone() != "" {
				return nil, fmt.Errorf("CIDR %s: not an address or prefix like 10.0.0.0/8", quote(it))
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ParseCIDRs parses an include list that may be "*".
func ParseCIDRs(s string) (CIDRs, error) {
	if strings.TrimSpace(s) == "*" {
		return CIDRs{All: true}, nil
	}
	l, err := ParseCIDRList(s)
	return CIDRs{List: l}, err
}

// ParseIDList parses UIDs or GIDs: "1337" or "1337,1338".
func ParseIDList(s string) ([]uint32, error) {
	items := splitList(s)
	var out []uint32
	for _, it := range items {
		n, err := strconv.ParseUint(it, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("id %s: must be a number 0-4294967295", quote(it))
		}
		out = append(out, uint32(n))
	}
	return out, nil
}

// ParseInterfaces parses a list of interface names.
func ParseInterfaces(s string) ([]string, error) {
	items := splitList(s)
	for _, it := range items {
		if err := validInterface(it); err != nil {
			return nil, err
		}
	}
	return items, nil
}

// validInterface applies the kernel's rules for device names (dev_valid_name)
// and refuses a leading '-' or '!', which iptables would read as an option.
func validInterface(name string) error {
	if name == "" || len(name) > 15 || name == "." || name == ".." {
		return fmt.Errorf("interface %s: must be 1-15 characters", quote(name))
	}
	for _, r := range name {
		if r <= ' ' || r > '~' || r == '/' || r == ':' || r == '"' || r == '\'' || r == '\\' {
			return fmt.Errorf("interface %q: invalid character %q", name, r)
		}
	}
	if name[0] == '-' || name[0] == '!' {
		return fmt.Errorf("interface %q: must not start with %q", name, name[0])
	}
	// iptables reads a lone "+" as every interface: excluding it would
	// turn capture off for the pod, rerouting it would make all inbound
	// outbound. Refused, for every backend alike.
	if name == "+" {
		return fmt.Errorf("interface %q: matches every interface; name the interfaces (a trailing + is a prefix wildcard, e.g. eth+)", name)
	}
	return nil
}

// ParseMode parses an interception mode.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.TrimSpace(s)); m {
	case Redirect, TProxy:
		return m, nil
	}
	return "", fmt.Errorf("interception mode %s: must be REDIRECT or TPROXY", quote(s))
}

func joinPorts(ps []uint16) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}
