package netfilter

// The backends: their names, their commands, and the node's default.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Backend is how a node programs pods: one of the two iptables
// implementations, or native nftables. Its value is the name users write
// (iptablesBackend, --iptables-backend, the node label), spelt so that
// the three cannot be confused; ParseBackend also takes the older
// spellings "legacy" and "nft".
type Backend string

const (
	// Legacy is iptables-legacy: iptables rules in the kernel's x_tables.
	Legacy Backend = "iptables-legacy"
	// NFT is iptables-nft: iptables rules, stored by the kernel's
	// nftables (tables ip nat, ip mangle, ...).
	NFT Backend = "iptables-nft"
	// Nftables is meshcni's own nftables tables, "ip meshcni" and "ip6
	// meshcni", written over netlink or with nft (package nftrules).
	Nftables Backend = "nftables"
	// Auto lets existing rules decide, then the system's `iptables`.
	Auto Backend = ""
)

// ParseBackend accepts iptables-legacy, iptables-nft, nftables, or
// auto/empty; legacy and nft are aliases of the first two.
func ParseBackend(s string) (Backend, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "", "auto":
		return Auto, nil
	case "iptables-legacy", "legacy":
		return Legacy, nil
	case "iptables-nft", "nft":
		return NFT, nil
	case "nftables":
		return Nftables, nil
	}
	return "", fmt.Errorf("iptables backend %q: must be iptables-legacy, iptables-nft, nftables (native) or auto (legacy and nft are accepted too)", s)
}

// Command is the iptables command of an iptables backend for a family
// ("iptables-legacy", "ip6tables-nft"), the one every tool of it is named
// after; "" for nftables and auto.
func (b Backend) Command(ipv6 bool) string {
	suffix, ok := map[Backend]string{Legacy: "legacy", NFT: "nft"}[b]
	if !ok {
		return ""
	}
	if ipv6 {
		return "ip6tables-" + suffix
	}
	return "iptables-" + suffix
}

// binary returns the command name for a backend, family and tool
// ("save" or "restore").
func binary(b Backend, ipv6 bool, tool string) string {
	return b.Command(ipv6) + "-" + tool
}

// Commands lists what a backend runs on the node, for `meshcnictl doctor`.
func Commands(b Backend) []string {
	if b == Nftables {
		return []string{"nft"}
	}
	var out []string
	for _, v6 := range []bool{false, true} {
		for _, tool := range []string{"restore", "save"} {
			out = append(out, binary(b, v6, tool))
		}
	}
	return out
}

// SystemDefault is the backend the node's `iptables` command uses (below
// root; "" or "/" for this file system), read from where the alternatives
// link points; no command is run.
func SystemDefault(root string) Backend {
	if root == "" {
		root = "/"
	}
	p, err := lookIn(root, "iptables")
	if err != nil {
		return NFT
	}
	// Resolve link by link inside root: absolute targets are root's.
	for i := 0; i < 8; i++ {
		target, err := os.Readlink(filepath.Join(root, p))
		if err != nil {
			break
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = target
	}
	if strings.Contains(p, "legacy") {
		return Legacy
	}
	return NFT
}
