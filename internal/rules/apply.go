package rules

// How a model meets a network namespace's netfilter: a family's rules are
// written where none of its capture rules are, left alone where they are
// there exactly, and refused where other capture rules are in the way; a
// write that failed is undone; and CHECK says whether the netns holds
// exactly the model. It is pure: the kernel is a Kernel, package
// netfilter's real one on every backend or its in-memory Fake, and all of
// them are decided by this one comparison.

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

var (
	// ErrConflict: the netns already holds different capture
	ErrConflict = errors.New("netns already holds different capture rules")
	// ErrMismatch: CHECK found rules differing from the spec.
	ErrMismatch = errors.New("capture rules differ from the pod's spec")
)

// Kernel is one visit to a netns's netfilter on one backend: what Apply
// and Check ask of it, from inside the netns. Rules are compared in the
// kernel's own listing (Listing), since every backend prints rules in a
// normal form of its own.
type Kernel interface {
	// Held lists the capture rules family f holds now: every rule of a
	// capture chain, every jump into one, and any rule of want (the
	// kernel's listing of what is to be there; nil when asking whether
	// any is). An error wrapping ErrConflict says that capture rules of
	// another kind are in the way.
	Held(f Family, want Listing) (Listing, error)
	// Lists returns each ruleset as this kernel lists it, by family.
	Lists(sets []Ruleset) (map[Family]Listing, error)
	// Write programs sets into a netns that holds none of their capture
	// rules, and says which of them it may have written (wholly or in
	// part), also when it fails.
	Write(sets []Ruleset) (wrote []bool, err error)
	// Undo removes what a Write wrote of rs.
	Undo(rs Ruleset)
	// Route programs r; CheckRoutes reports whether r is there.
	Route(r Routes) error
	CheckRoutes(r Routes) error
}

// Apply programs m into k: each family whose capture rules are not there
// yet is written, a family that holds exactly its rules is left alone,
// and other capture rules are ErrConflict. On error nothing this call
// wrote is left behind.
func Apply(k Kernel, m Model) error {
	var write, there []Ruleset
	for _, rs := range m.Sets {
		held, err := k.Held(rs.Family, nil)
		if err != nil {
			return err
		}
		if held.Empty() {
			write = append(write, rs)
		} else {
			there = append(there, rs)
		}
	}
	if len(there) > 0 {
		if err := compare(k, there, ErrConflict); err != nil {
			return err
		}
	}
	wrote, err := k.Write(write)
	if err == nil {
		err = k.Route(m.Routes)
	}
	if err != nil {
		// Rules that were in the way were not written, and are not ours.
		for i, rs := range write {
			if i < len(wrote) && wrote[i] {
				k.Undo(rs)
			}
		}
	}
	return err
}

// Check returns nil when k holds exactly m's capture rules and routes,
// and an error wrapping ErrMismatch that names the first differences
// otherwise.
func Check(k Kernel, m Model) error {
	if err := compare(k, m.Sets, ErrMismatch); err != nil {
		return err
	}
	return k.CheckRoutes(m.Routes)
}

// compare holds each of sets against what its family holds, as the
// kernel lists both; a difference is an error wrapping kind.
func compare(k Kernel, sets []Ruleset, kind error) error {
	want, err := k.Lists(sets)
	if err != nil {
		return err
	}
	for _, rs := range sets {
		held, err := k.Held(rs.Family, want[rs.Family])
		if errors.Is(err, ErrConflict) && kind != ErrConflict {
			return fmt.Errorf("%w: %w", kind, err) // rules in the way differ too
		}
		if err != nil {
			return err
		}
		if err := Compare(rs.Family, want[rs.Family], held, kind); err != nil {
			return err
		}
	}
	return nil
}

// Listing maps a table name to rule lines as a kernel lists them; lines
// that name their own table (nftables') are listed under "".
type Listing map[string][]string

// Empty reports whether no table holds a line.
func (t Listing) Empty() bool {
	for _, l := range t {
		if len(l) > 0 {
			return false
		}
	}
	return true
}

// Names lists t's tables with a line: iptables' in restore order, then
// any other (nftables' own table) by name.
func (t Listing) Names() []string {
	var out []string
	for _, name := range Tables {
		if len(t[name]) > 0 {
			out = append(out, name)
		}
	}
	var rest []string
	for name, lines := range t {
		if len(lines) > 0 && !slices.Contains(Tables, name) {
			rest = append(rest, name)
		}
	}
	slices.Sort(rest)
	return append(out, rest...)
}

// String renders tables in that order, for messages and verify output.
func (t Listing) String() string {
	var b strings.Builder
	for _, name := range t.Names() {
		b.WriteString("*" + name + "\n")
		for _, l := range t[name] {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// Compare is the one comparison of a family's capture rules: nil when
// held is exactly want, else an error wrapping kind (ErrConflict,
// ErrMismatch) that names the first differences.
func Compare(f Family, want, held Listing, kind error) error {
	names := want.Names()
	for _, name := range held.Names() {
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	var missing, extra []string
	same := true
	for _, name := range names {
		same = same && slices.Equal(want[name], held[name])
		label := "*" + name + " "
		if name == "" {
			label = "" // lines that name their own table
		}
		for _, l := range want[name] {
			if !slices.Contains(held[name], l) {
				missing = append(missing, label+l)
			}
		}
		for _, l := range held[name] {
			if !slices.Contains(want[name], l) {
				extra = append(extra, label+l)
			}
		}
	}
	if same {
		return nil
	}
	if len(missing)+len(extra) == 0 {
		return fmt.Errorf("%w (%s): the same rules in another order", kind, f)
	}
	return fmt.Errorf("%w (%s): missing %d rules, %d unexpected; first differences: %s",
		kind, f, len(missing), len(extra), firstOf(missing, extra))
}

func firstOf(missing, extra []string) string {
	var parts []string
	for i, l := range missing {
		if i == 3 {
			break
		}
		parts = append(parts, "missing "+l)
	}
	for i, l := range extra {
		if i == 3 {
			break
		}
		parts = append(parts, "unexpected "+l)
	}
	return strings.Join(parts, "; ")
}
