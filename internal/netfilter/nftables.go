package netfilter

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/nftrules"
	"github.com/meshcni/meshcni/internal/rules"
)

// The nftables backend: meshcni's own tables, "ip meshcni" and "ip6
// meshcni". A new pod's tables are written in process over netlink, one
// transaction, no exec (nftables_netlink.go); a rule outside that
// builder's vocabulary, the comparison of Apply-again and Check, and
// Remove use nft (package nftrules renders the script; the Runner runs
// it, so that the agent's HostRootRunner and the tests' counting runner
// apply). Which tables exist is read over netlink.

// nft runs one nft command with script on stdin ("-f -"), or args.
func (s *session) nft(script string, args ...string) (string, error) {
	if len(args) == 0 {
		args = []string{"-f", "-"}
	}
	return s.a.opts.Run(s.ctx, nil, script, "nft", args...)
}

func (s *session) nftApply(spec capture.Spec, sets []rules.Ruleset) error {
	tables, err := nftrules.Tables(sets)
	if err != nil {
		return err
	}
	ours, istio, err := s.nftState()
	if err != nil {
		return err
	}
	if len(istio) > 0 {
		// Rules in the way are not ours to remove.
		return fmt.Errorf("%w: iptables ISTIO_* chains are already there (%s); the nftables backend does not capture over them",
			ErrConflict, strings.Join(istio, ", "))
	}
	if len(ours) > 0 {
		same, why, err := s.nftCompare(tables, ours)
		if err != nil {
			return err
		}
		if !same {
			return fmt.Errorf("%w (nftables): %s", ErrConflict, why)
		}
	} else if err := s.nftProgram(tables); err != nil {
		// One transaction: a rejected one leaves nothing. But it may
		// have committed and then failed (nft killed on its way out):
		// what is there now was not there before, so it goes.
		if now, _, serr := nftState(); serr == nil && len(now) > 0 {
			_ = s.nftDelete(now)
		}
		return fmt.Errorf("program nftables rules: %w", err)
	}
	if err := programRoutes(spec); err != nil {
		if len(ours) == 0 {
			_ = s.nftDelete(tableFamilies(tables))
		}
		return err
	}
	return nil
}

// nftProgram writes tables into a netns that has none of meshcni's: in
// process over netlink (no exec), or with `nft -f -` when a rule is
// outside the netlink builder's vocabulary or the caller gave its own
// Runner (Options.Run).
func (s *session) nftProgram(tables []nftrules.Table) error {
	if s.a.netlink {
		err := nftNetlinkApply(tables)
		if !errors.Is(err, nftrules.ErrNotNative) {
			return err
		}
	}
	_, err := s.nft(nftrules.Script(tables))
	return err
}

// nftDelete deletes meshcni's tables of fams: over netlink where the
// tables were written that way, else (or if that fails) with nft.
func (s *session) nftDelete(fams []rules.Family) error {
	if s.a.netlink && nftNetlinkDelete(fams) == nil {
		return nil
	}
	_, err := s.nft(nftrules.DeleteScript(fams...))
	return err
}

func (s *session) nftCheck(spec capture.Spec, sets []rules.Ruleset) error {
	tables, err := nftrules.Tables(sets)
	if err != nil {
		return err
	}
	ours, _, err := s.nftState()
	if err != nil {
		return err
	}
	same, why, err := s.nftCompare(tables, ours)
	if err != nil {
		return err
	}
	if !same {
		return fmt.Errorf("%w (nftables): %s", ErrMismatch, why)
	}
	return checkRoutes(spec)
}

func (s *session) nftRemove() error {
	ours, _, err := s.nftState()
	if err != nil {
		return err
	}
	if len(ours) > 0 {
		if _, err := s.nft(nftrules.DeleteScript(ours...)); err != nil {
			return fmt.Errorf("remove nftables rules: %w", err)
		}
	}
	return removeRoutes()
}

func (s *session) nftSave(f rules.Family) (string, error) {
	ours, _, err := s.nftState()
	if err != nil || !slices.Contains(ours, f) {
		return "", err
	}
	return s.nft("", "list", "table", nftrules.NFTFamily(f), nftrules.TableName)
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

// nftCompare compares meshcni's tables in the netns (present: their
// families) with want, both as the kernel lists them: want is programmed
// into a scratch netns and listed there, since nft normalizes what it
// prints (marks in hex, named priorities, implied protocols).
func (s *session) nftCompare(want []nftrules.Table, present []rules.Family) (same bool, why string, err error) {
	var have []string
	if len(present) > 0 {
		out, err := s.nft("", "list", "ruleset")
		if err != nil {
			return false, "", err
		}
		have = nftLines(out)
	}
	var canon []string
	err = netns.Scratch(func() error {
		if _, err := s.nft(nftrules.Script(want)); err != nil {
			return fmt.Errorf("render nftables rules: %w", err)
		}
		out, err := s.nft("", "list", "ruleset")
		canon = nftLines(out)
		return err
	})
	if err != nil {
		return false, "", err
	}
	if slices.Equal(canon, have) {
		return true, "", nil
	}
	var missing, extra []string
	for _, l := range canon {
		if !slices.Contains(have, l) {
			missing = append(missing, l)
		}
	}
	for _, l := range have {
		if !slices.Contains(canon, l) {
			extra = append(extra, l)
		}
	}
	if len(missing)+len(extra) == 0 {
		return false, "the same rules in another order", nil
	}
	return false, fmt.Sprintf("missing %d rules, %d unexpected; first differences: %s",
		len(missing), len(extra), firstOf(missing, extra)), nil
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

func tableFamilies(ts []nftrules.Table) []rules.Family {
	var out []rules.Family
	for _, t := range ts {
		out = append(out, t.Family)
	}
	return out
}
