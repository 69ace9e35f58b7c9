package netfilter

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/nftrules"
	"github.com/meshcni/meshcni/internal/rules"
)

// The nftables backend: meshcni's own tables, "ip meshcni" and "ip6
// meshcni". A new pod's tables are written in process over netlink, one
// transaction, no exec (netlink_io.go); a rule outside that
// builder's vocabulary, the comparison of Apply-again and Check, and
// Remove use nft (package nftrules renders the script; the Runner runs
// it, so that the agent's HostRootRunner and the tests' counting runner
// apply). Which tables exist is read over netlink.

// nftKernel is a visit on the nftables backend. Its methods run in the
// visit's netns.
type nftKernel struct {
	*visit
	read  bool
	lines []string                  // meshcni's tables as nft lists them (nftLines)
	istio map[rules.Family][]string // iptables-nft ISTIO_* chains, "nat/ISTIO_OUTPUT"
}

var _ rules.Kernel = (*nftKernel)(nil)

// nft runs one nft command with script on stdin ("-f -"), or args, in
// the calling thread's netns.
func (v *visit) nft(script string, args ...string) (string, error) {
	if len(args) == 0 {
		args = []string{"-f", "-"}
	}
	return v.a.opts.Run(v.ctx, nil, script, "nft", args...)
}

// Held implements rules.Kernel: meshcni's table of family f, read once
// per visit (one netlink listing, then `nft list ruleset` only when some
// table of meshcni's is there). iptables-nft's capture chains of the
// family are in the way: the nftables backend neither replaces nor adds
// to them.
func (k *nftKernel) Held(f rules.Family, _ rules.Listing) (rules.Listing, error) {
	if !k.read {
		ours, istio, err := k.nftState()
		if err != nil {
			return nil, err
		}
		k.istio = istio
		if len(ours) > 0 {
			out, err := k.nft("", "list", "ruleset")
			if err != nil {
				return nil, err
			}
			k.lines = nftLines(out)
		}
		k.read = true
	}
	if chains := k.istio[f]; len(chains) > 0 {
		return nil, fmt.Errorf("%w: iptables ISTIO_* chains are already there (%s); the nftables backend does not capture over them",
			rules.ErrConflict, strings.Join(chains, ", "))
	}
	return byFamily(k.lines, f), nil
}

// Lists implements rules.Kernel: the sets are programmed into a
// scratch netns and listed there, since nft normalizes what it prints
// (marks in hex, named priorities, implied protocols).
func (k *nftKernel) Lists(sets []rules.Ruleset) (map[rules.Family]rules.Listing, error) {
	tables, err := nftrules.Tables(sets)
	if err != nil {
		return nil, err
	}
	var lines []string
	err = netns.Scratch(func() error {
		if _, err := k.nft(nftrules.Script(tables)); err != nil {
			return fmt.Errorf("render nftables rules: %w", err)
		}
		out, err := k.nft("", "list", "ruleset")
		lines = nftLines(out)
		return err
	})
	out := map[rules.Family]rules.Listing{}
	for _, rs := range sets {
		out[rs.Family] = byFamily(lines, rs.Family)
	}
	return out, err
}

// Write implements rules.Kernel: every family in one transaction. A
// rejected one leaves nothing, but it may have committed and then failed
// (nft killed on its way out), so every family counts as written.
func (k *nftKernel) Write(sets []rules.Ruleset) ([]bool, error) {
	wrote := make([]bool, len(sets))
	if len(sets) == 0 {
		return wrote, nil
	}
	tables, err := nftrules.Tables(sets)
	if err != nil {
		return wrote, err
	}
	for i := range wrote {
		wrote[i] = true
	}
	if err := k.nftProgram(tables); err != nil {
		return wrote, fmt.Errorf("program nftables rules: %w", err)
	}
	return wrote, nil
}

// Undo implements rules.Kernel: rs's family's table goes, if it is there.
func (k *nftKernel) Undo(rs rules.Ruleset) {
	if now, _, err := nftState(); err == nil && slices.Contains(now, rs.Family) {
		_ = k.nftDelete([]rules.Family{rs.Family})
	}
}

// byFamily picks family f's lines out of nftLines' listing. They name
// their own family, table and chain, so they are listed under no table.
func byFamily(lines []string, f rules.Family) rules.Listing {
	prefix := nftrules.NFTFamily(f) + " "
	held := rules.Listing{}
	for _, l := range lines {
		if strings.HasPrefix(l, prefix) {
			held[""] = append(held[""], l)
		}
	}
	return held
}

// nftProgram writes tables into a netns that has none of meshcni's: in
// process over netlink (no exec), or with `nft -f -` when a rule is
// outside the netlink builder's vocabulary or the caller gave its own
// Runner (Options.Run).
func (v *visit) nftProgram(tables []nftrules.Table) error {
	if v.a.netlink {
		err := nftNetlinkApply(tables)
		if !errors.Is(err, nftrules.ErrNotNative) {
			return err
		}
	}
	_, err := v.nft(nftrules.Script(tables))
	return err
}

// nftDelete deletes meshcni's tables of fams: over netlink where the
// tables were written that way, else (or if that fails) with nft.
func (v *visit) nftDelete(fams []rules.Family) error {
	if v.a.netlink && nftNetlinkDelete(fams) == nil {
		return nil
	}
	_, err := v.nft(nftrules.DeleteScript(fams...))
	return err
}

func (v *visit) nftRemove() error {
	ours, _, err := v.nftState()
	if err != nil {
		return err
	}
	if len(ours) > 0 {
		if _, err := v.nft(nftrules.DeleteScript(ours...)); err != nil {
			return fmt.Errorf("remove nftables rules: %w", err)
		}
	}
	return removeRoutes()
}

func (v *visit) nftSave(f rules.Family) (string, error) {
	ours, _, err := v.nftState()
	if err != nil || !slices.Contains(ours, f) {
		return "", err
	}
	return v.nft("", "list", "table", nftrules.NFTFamily(f), nftrules.TableName)
}

// NftablesIn reports whether the netns at path holds meshcni's nftables
// tables (those of the nftables backend). It reads netlink; no fork.
func NftablesIn(path string) (bool, error) {
	var ours []rules.Family
	err := netns.Do(path, func() error {
		var err error
		ours, _, err = nftState()
		return err
	})
	return len(ours) > 0, err
}

// nftLines reads `nft list ruleset` output into comparable lines for
// meshcni's tables only: each chain with its hook, then each rule as
// "ip istio_output: ip daddr 127.0.0.1 return".
func nftLines(list string) []string {
	var out []string
	var family, chain string
	ours := false
	for _, l := range strings.Split(list, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "":
		case strings.HasPrefix(l, "table "):
			f := strings.Fields(l)
			ours = len(f) >= 3 && f[2] == nftrules.TableName
			if ours {
				family = f[1]
			}
		case !ours:
		case l == "}":
			chain = ""
		case strings.HasPrefix(l, "chain "):
			chain = strings.TrimSuffix(strings.TrimPrefix(l, "chain "), " {")
			out = append(out, family+" chain "+chain)
		case chain != "" && strings.HasPrefix(l, "type "):
			out[len(out)-1] += " { " + l + " }"
		case chain != "":
			out = append(out, family+" "+chain+": "+l)
		}
	}
	return out
}
