package netfilter

import (
	"fmt"
	"os"
	"strings"

	"github.com/google/nftables"

	"github.com/meshcni/meshcni/internal/rules"
)

// hasTables reports whether the current thread's netns holds any iptables
// table of family f for backend b. It costs a /proc read (legacy) or one
// netlink dump (nft), instead of an iptables-save fork.
func hasTables(b Backend, f rules.Family) (bool, error) {
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
	conn, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("open nftables netlink: %w", err)
	}
	defer conn.CloseLasting()
	fam := nftables.TableFamilyIPv4
	if f == rules.IPv6 {
		fam = nftables.TableFamilyIPv6
	}
	tables, err := conn.ListTablesOfFamily(fam)
	if err != nil {
		return false, fmt.Errorf("list nftables tables: %w", err)
	}
	return len(tables) > 0, nil
}
