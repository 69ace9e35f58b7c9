package netfilter

// The iptables backends' listing, pure: iptables-save output read into
// Tables, the capture's lines picked out of them (ours, what the Applier's
// and the Fake's kernels hold for rules.Apply), and the removal of what
// is there.

import (
	"slices"
	"strings"

	"github.com/meshcni/meshcni/internal/rules"
)

// Tables maps a table name to rule lines in iptables-save form.
type Tables = rules.Listing

// parseSave reads iptables-save output into rule lines per table.
func parseSave(save string) Tables {
	out := Tables{}
	table := ""
	for _, line := range strings.Split(save, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "*"):
			table = strings.TrimSpace(line[1:])
		case strings.HasPrefix(line, ":") && table != "":
			// User chains are kept as ":NAME" (no counters), so that an
			// empty chain still counts as present.
			if name := strings.Fields(line[1:]); len(name) > 0 && !rules.IsBuiltin(name[0]) {
				out[table] = append(out[table], ":"+name[0])
			}
		case strings.HasPrefix(line, "-A ") && table != "":
			out[table] = append(out[table], line)
		}
	}
	return out
}

// chainOf returns the chain of an "-A CHAIN ..." or ":CHAIN" line.
func chainOf(line string) string {
	if strings.HasPrefix(line, ":") {
		return line[1:]
	}
	f := strings.Fields(line)
	if len(f) < 2 {
		return ""
	}
	return f[1]
}

func jumpsToIstio(line string) bool {
	f := strings.Fields(line)
	for i, a := range f {
		if (a == "-j" || a == "-g") && i+1 < len(f) && strings.HasPrefix(f[i+1], "ISTIO_") {
			return true
		}
	}
	return false
}

// ours selects the lines that belong to a capture: everything in ISTIO_*
// chains, jumps into them, and the built-in chain lines that the expected
// ruleset would add (known from the kernel's listing of it, may be nil).
func ours(all, expected Tables) Tables {
	out := Tables{}
	for table, lines := range all {
		for _, l := range lines {
			if strings.HasPrefix(chainOf(l), "ISTIO_") || jumpsToIstio(l) || slices.Contains(expected[table], l) {
				out[table] = append(out[table], l)
			}
		}
	}
	return out
}

// removal renders restore input that deletes the given (observed) lines
// and the ISTIO_* chains they live in. Built from what is really there, it
// succeeds on a partial state too.
func removal(have Tables) string {
	var b strings.Builder
	for _, t := range rules.Tables {
		lines := have[t]
		if len(lines) == 0 {
			continue
		}
		b.WriteString("*" + t + "\n")
		var chains []string
		for _, l := range lines {
			c := chainOf(l)
			if strings.HasPrefix(c, "ISTIO_") {
				if !slices.Contains(chains, c) {
					chains = append(chains, c)
				}
				continue
			}
			if strings.HasPrefix(l, ":") {
				continue
			}
			b.WriteString("-D" + strings.TrimPrefix(l, "-A") + "\n")
		}
		for _, c := range chains {
			b.WriteString("-F " + c + "\n")
		}
		for _, c := range chains {
			b.WriteString("-X " + c + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}
