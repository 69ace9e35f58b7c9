package netfilter

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/rules"
)

// Fake is an in-memory Interface at the kernel's level, as knftables'
// Fake is: it holds each netns's tables, chains and rules (per family, in
// the form iptables-save lists them), and is decided by rules.Apply and
// rules.Check, as the Applier is, over a kernel of its own (fakeKernel),
// so that the two cannot disagree about what is the same spec, a
// conflict or a mismatch. Like the Applier, an apply changes every family
// or none. Set Err to make the next calls fail.
type Fake struct {
	mu     sync.Mutex
	kernel map[string]map[rules.Family]Tables
	specs  map[string]capture.Spec
	// Err, when set, is returned by Apply and Check without side effects.
	Err error
	// Calls counts Apply calls, including refused ones.
	Calls int
}

var _ Interface = (*Fake)(nil)

// NewFake returns an empty Fake.
func NewFake() *Fake {
	return &Fake{kernel: map[string]map[rules.Family]Tables{}, specs: map[string]capture.Spec{}}
}

// Apply implements Interface.
func (f *Fake) Apply(_ context.Context, path string, spec capture.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Calls++
	if f.Err != nil {
		return f.Err
	}
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("invalid capture spec: %w", err)
	}
	if err := rules.Apply(fakeKernel{f, path}, rules.Build(spec)); err != nil {
		return fmt.Errorf("%w in %s", err, path)
	}
	f.specs[path] = spec
	return nil
}

// Check implements Interface.
func (f *Fake) Check(_ context.Context, path string, spec capture.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	if err := rules.Check(fakeKernel{f, path}, rules.Build(spec)); err != nil {
		return fmt.Errorf("%w in %s", err, path)
	}
	return nil
}

// fakeKernel is the Fake's netns at path, a rules.Kernel; f.mu is
// held. It has no routes.
type fakeKernel struct {
	f    *Fake
	path string
}

func (k fakeKernel) Held(fam rules.Family, want Tables) (Tables, error) {
	return ours(k.f.kernel[k.path][fam], want), nil
}

func (k fakeKernel) Lists(sets []rules.Ruleset) (map[rules.Family]Tables, error) {
	out := map[rules.Family]Tables{}
	for _, rs := range sets {
		out[rs.Family] = listing(rs)
	}
	return out, nil
}

func (k fakeKernel) Write(sets []rules.Ruleset) ([]bool, error) {
	if k.f.kernel[k.path] == nil {
		k.f.kernel[k.path] = map[rules.Family]Tables{}
	}
	for _, rs := range sets {
		k.f.kernel[k.path][rs.Family] = merge(k.f.kernel[k.path][rs.Family], listing(rs))
	}
	wrote := make([]bool, len(sets))
	for i := range wrote {
		wrote[i] = true
	}
	return wrote, nil
}

func (k fakeKernel) Undo(rs rules.Ruleset) {
	all, written := k.f.kernel[k.path][rs.Family], listing(rs)
	left := Tables{}
	for t, lines := range all {
		for _, l := range lines {
			if !slices.Contains(written[t], l) {
				left[t] = append(left[t], l)
			}
		}
	}
	k.f.kernel[k.path][rs.Family] = left
}

func (fakeKernel) Route(rules.Routes) error       { return nil }
func (fakeKernel) CheckRoutes(rules.Routes) error { return nil }

// Remove implements Interface: every capture rule goes, as the Applier's
// Remove, and whatever else the netns holds stays.
func (f *Fake) Remove(_ context.Context, path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for fam, all := range f.kernel[path] {
		have := ours(all, nil)
		left := Tables{}
		for t, lines := range all {
			for _, l := range lines {
				if !slices.Contains(have[t], l) {
					left[t] = append(left[t], l)
				}
			}
		}
		f.kernel[path][fam] = left
	}
	delete(f.specs, path)
	return nil
}

// Spec returns the spec last applied to path, until a Remove.
func (f *Fake) Spec(path string) (capture.Spec, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.specs[path]
	return s, ok
}

// Tables returns what the fake kernel holds in path for family fam.
func (f *Fake) Tables(path string, fam rules.Family) Tables {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.kernel[path][fam])
}

// SetTables replaces what the fake kernel holds in path for family fam:
// rules written by someone else, or a partial state.
func (f *Fake) SetTables(path string, fam rules.Family, t Tables) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.kernel[path] == nil {
		f.kernel[path] = map[rules.Family]Tables{}
	}
	f.kernel[path][fam] = clone(t)
}

// listing is rs as the fake kernel lists it, in iptables-save's shape:
// per table, our chains (":NAME"), then each chain's rules, chain by
// chain, in their final order (an -I N lands before the Nth rule). The
// real kernel also normalises matches; the Applier asks it for its own
// form (xtablesKernel.Listing), the Fake has only this one.
func listing(rs rules.Ruleset) Tables {
	out := Tables{}
	chains := rs.Chains()
	for _, t := range rs.UsedTables() {
		for _, c := range chains[t] {
			out[t] = append(out[t], ":"+c)
		}
		out[t] = append(out[t], placed(rs, t)...)
	}
	return out
}

// placed lists table t's rules of rs as "-A CHAIN ..." lines, chain by
// chain in order of first rule, each -I N put before the Nth rule.
func placed(rs rules.Ruleset, t string) []string {
	var order []string
	byChain := map[string][]string{}
	for _, r := range rs.Rules {
		if r.Table != t {
			continue
		}
		if !slices.Contains(order, r.Chain) {
			order = append(order, r.Chain)
		}
		pos := r.Pos
		r.Pos = 0
		lines := byChain[r.Chain]
		if pos > 0 && pos-1 < len(lines) {
			lines = slices.Insert(lines, pos-1, r.String())
		} else {
			lines = append(lines, r.String())
		}
		byChain[r.Chain] = lines
	}
	var out []string
	for _, c := range order {
		out = append(out, byChain[c]...)
	}
	return out
}

func merge(all, add Tables) Tables {
	out := clone(all)
	for t, lines := range add {
		out[t] = append(out[t], lines...)
	}
	return out
}

func clone(t Tables) Tables {
	out := Tables{}
	for name, lines := range t {
		out[name] = slices.Clone(lines)
	}
	return out
}
