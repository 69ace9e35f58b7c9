package netfilter

// Which tables a netns holds, read from the kernel without a fork: /proc
// for iptables-legacy, the netlink listing for iptables-nft and meshcni's
// own nftables tables.

import (
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"

	"github.com/meshcni/meshcni/internal/nftrules"
	"github.com/meshcni/meshcni/internal/rules"
)

// hasTables reports whether the visit's netns holds any iptables table
// of family f for backend b. It costs a /proc read (legacy) or the
// visit's one netlink dump (nft), instead of an iptables-save fork.
// meshcni's own nftables table is not an iptables table.
func (v *visit) hasTables(b Backend, f rules.Family) (bool, error) {
	if b == Legacy {
		name := "ip_tables_names"
		if f == rules.IPv6 {
			name = "ip6_tables_names"
		}
		data, err := os.ReadFile("/proc/thread-self/net/" + name)
		if os.IsNotExist(err) {
			return false, nil // module not loaded: no legacy table anywhere
		}
		if err != nil {
			return false, err
		}
		return strings.TrimSpace(string(data)) != "", nil
	}
	fam := nftables.TableFamilyIPv4
	if f == rules.IPv6 {
		fam = nftables.TableFamilyIPv6
	}
	tables, err := v.tables()
	if err != nil {
		return false, err
	}
	for _, t := range tables {
		if t.Family == fam && t.Name != nftrules.TableName {
			return true, nil
		}
	}
	return false, nil
}

// oursIn returns the families that hold meshcni's nftables table.
func oursIn(tables []nftTable) []rules.Family {
	var ours []rules.Family
	for _, t := range tables {
		switch {
		case t.Name != nftrules.TableName:
		case t.Family == nftables.TableFamilyIPv4:
			ours = append(ours, rules.IPv4)
		case t.Family == nftables.TableFamilyIPv6:
			ours = append(ours, rules.IPv6)
		}
	}
	return ours
}

// nftState reads, over netlink and without a fork, which families hold
// meshcni's nftables table in the current thread's netns, and, by
// family, the iptables-nft ISTIO_* chains that would capture alongside it
// ("nat/ISTIO_OUTPUT").
func nftState() (ours []rules.Family, istio map[rules.Family][]string, err error) {
	tables, err := listTables()
	if err != nil {
		return nil, nil, err
	}
	return stateOf(tables)
}

// nftState is the state before the visit writes anything, from the
// listing detection may already have taken.
func (v *visit) nftState() (ours []rules.Family, istio map[rules.Family][]string, err error) {
	tables, err := v.tables()
	if err != nil {
		return nil, nil, err
	}
	return stateOf(tables)
}

// stateOf is nftState for a listing of the current thread's netns.
func stateOf(tables []nftTable) (ours []rules.Family, istio map[rules.Family][]string, err error) {
	ours = oursIn(tables)
	if !slices.ContainsFunc(tables, func(t nftTable) bool { return t.Name != nftrules.TableName }) {
		return ours, nil, nil
	}
	// Someone else's tables: rare on a pod, so the full library does it.
	conn, err := nftables.New()
	if err != nil {
		return nil, nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	defer conn.CloseLasting()
	chains, err := conn.ListChains()
	if err != nil {
		return nil, nil, fmt.Errorf("list nftables chains: %w", err)
	}
	istio = map[rules.Family][]string{}
	for _, c := range chains {
		if c.Table.Name == nftrules.TableName || !strings.HasPrefix(c.Name, "ISTIO_") {
			continue
		}
		f := rules.IPv4
		if c.Table.Family == nftables.TableFamilyIPv6 {
			f = rules.IPv6
		}
		istio[f] = append(istio[f], c.Table.Name+"/"+c.Name)
	}
	return ours, istio, nil
}
