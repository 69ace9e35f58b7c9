// Package netfilter programs a capture spec into a network namespace with
// iptables-restore, one atomic restore per address family, or with one
// atomic nftables transaction (the nftables backend, over netlink or nft),
// and reads it back for CHECK and verify. The rules are package rules'
// typed model, built once per visit and rendered by rules (restore text)
// and nftrules (nft text and netlink messages); this package does the
// kernel I/O, and compares what it read (compare.go). Visits to
// one netns take turns (lock.go). Fake is the same contract over an
// in-memory kernel, decided by the same comparison (compare.go).
package netfilter

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/rules"
)

// Interface is what the plug-in, the init command and the repair
// controller need from the kernel. Fake implements it for unit tests.
type Interface interface {
	// Apply programs spec in the netns at path ("" = current). Programming
	// the same spec again changes nothing; a different spec over existing
	// rules is refused with ErrConflict. On error nothing is left behind.
	Apply(ctx context.Context, path string, spec capture.Spec) error
	// Check returns nil when the netns holds exactly spec's rules, and an
	// error naming the missing and unexpected rules otherwise.
	Check(ctx context.Context, path string, spec capture.Spec) error
	// Remove deletes whatever capture rules the netns holds.
	Remove(ctx context.Context, path string) error
}

var (
	// ErrConflict: the netns already holds different capture rules.
	ErrConflict = errors.New("netns already holds different capture rules")
	// ErrMismatch: CHECK found rules differing from the spec.
	ErrMismatch = errors.New("capture rules differ from the pod's spec")
)

// Options configure an Applier.
type Options struct {
	// Backend forces legacy or nft; Auto follows the netns, then the node.
	Backend Backend
	// LockDir holds the per-netns lock files: the one that serialises
	// visits to a netns (every backend), and the xtables lock (legacy),
	// so that pods don't queue on the host's global /run/xtables.lock.
	LockDir string
	// HostRoot, when set, runs the iptables of that root file system
	// (chrooted, see HostRootRunner) instead of this one's.
	HostRoot string
	// Run executes commands; nil means ExecRunner (or HostRootRunner).
	// A Runner given here sees every write to the kernel: it also turns
	// off the nftables backend's in-process netlink write of a new pod
	// (which runs nothing), so that new pods go through `nft -f -` too.
	Run Runner
}

// Applier is the real Interface, over iptables-restore and -save.
type Applier struct {
	opts Options
	// netlink: the nftables backend writes a new pod's tables in
	// process, over netlink (see Options.Run).
	netlink bool
}

var _ Interface = (*Applier)(nil)

// New returns an Applier.
func New(opts Options) *Applier {
	netlink := opts.Run == nil
	if opts.Run == nil {
		opts.Run = ExecRunner
		if opts.HostRoot != "" {
			opts.Run = HostRootRunner(opts.HostRoot)
		}
	}
	if opts.LockDir == "" {
		opts.LockDir = filepath.Join(os.TempDir(), "meshcni-xtables")
	}
	return &Applier{opts: opts, netlink: netlink}
}

// session is one visit to a netns: the backend and lock chosen once.
type session struct {
	a       *Applier
	ctx     context.Context
	backend Backend
	env     []string

	// The netns's nftables tables, listed once: detection and each
	// family's check before its restore read the same listing. No other
	// meshcni visit writes the netns while this one holds its lock, and a
	// family's restore changes no other family's tables.
	listOnce   sync.Once
	listed     []nftTable
	listingErr error
}

// tables returns the session's listing of the netns's nftables tables.
func (s *session) tables() ([]nftTable, error) {
	s.listOnce.Do(func() { s.listed, s.listingErr = listTables() })
	return s.listed, s.listingErr
}

func (a *Applier) enter(ctx context.Context, path string, fn func(*session) error) error {
	// A pod's netns, never the caller's own (the node's): "" is the way to
	// ask for the current one, in init mode.
	if path != "" {
		if err := netns.CheckTarget(path); err != nil {
			return err
		}
	}
	id, err := netns.ID(path)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(a.opts.LockDir, 0o700); err != nil {
		return fmt.Errorf("create lock dir: %w", err)
	}
	// One visit per netns at a time, on every backend (see netnsLock).
	held, err := lockNetns(ctx, filepath.Join(a.opts.LockDir, "netns-"+id+".lock"))
	if err != nil {
		return err
	}
	defer held.unlock()
	// Only this visit uses the xtables lock of this netns, so it can go.
	lock := filepath.Join(a.opts.LockDir, "xtables-"+id+".lock")
	defer os.Remove(lock)
	return netns.Do(path, func() error {
		s := &session{a: a, ctx: ctx, env: []string{"XTABLES_LOCKFILE=" + lock}}
		b, err := s.detect()
		if err != nil {
			return err
		}
		s.backend = b
		noteBackend(ctx, b)
		return fn(s)
	})
}

// detect picks the backend: forced, else whichever already holds tables
// in this netns (meshcni's nftables table first), else the node's
// iptables. All are looked at without a fork.
func (s *session) detect() (Backend, error) {
	if s.a.opts.Backend != Auto {
		return s.a.opts.Backend, nil
	}
	if tables, err := s.tables(); err == nil && len(oursIn(tables)) > 0 {
		return Nftables, nil
	}
	for _, b := range []Backend{Legacy, NFT} {
		for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
			if has, err := s.hasTables(b, f); err == nil && has {
				return b, nil
			}
		}
	}
	return SystemDefault(s.a.opts.HostRoot), nil
}

func (s *session) run(stdin, name string, args ...string) (string, error) {
	if s.backend == Legacy {
		args = append([]string{"-w", "10"}, args...)
	}
	return s.a.opts.Run(s.ctx, s.env, stdin, name, args...)
}

func (s *session) save(f rules.Family) (Tables, error) {
	out, err := s.a.opts.Run(s.ctx, s.env, "", binary(s.backend, f == rules.IPv6, "save"))
	if err != nil {
		return nil, err
	}
	return parseSave(out), nil
}

func (s *session) restore(f rules.Family, text string) error {
	_, err := s.run(text, binary(s.backend, f == rules.IPv6, "restore"), "--noflush")
	return err
}

// canonical asks the kernel, in a scratch netns, how it prints rs: the only
// reliable way to compare with iptables-save output, which normalizes
// matches ("-p tcp -m tcp --dport").
func (s *session) canonical(rs rules.Ruleset) (Tables, error) {
	var got Tables
	err := netns.Scratch(func() error {
		if err := s.restore(rs.Family, rs.Restore()); err != nil {
			return fmt.Errorf("render %s rules: %w", rs.Family, err)
		}
		var err error
		got, err = s.save(rs.Family)
		return err
	})
	return got, err
}

// Apply implements Interface.
func (a *Applier) Apply(ctx context.Context, path string, spec capture.Spec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("invalid capture spec: %w", err)
	}
	sets := rules.Build(spec)
	return a.enter(ctx, path, func(s *session) error {
		if s.backend == Nftables {
			return s.nftApply(spec, sets)
		}
		wrote, err := s.applyFamilies(path, sets)
		if err == nil {
			err = programRoutes(spec)
		}
		if err != nil {
			// Undo covers a restore that failed half-way, too; rules
			// that were in the way were not written, and are not ours.
			for i, rs := range sets {
				if wrote[i] {
					s.undo(rs)
				}
			}
		}
		return err
	})
}

// applyFamilies programs each family's rules that are not there yet, and
// says which families it wrote to (wholly or in part). With the nft
// backend a dual-stack pod's IPv6 restore runs at the same time as the
// IPv4 one, from a second thread in the netns: the two execs share
// nothing, and on 2 cores that takes one restore off the ADD
// (docs/performance.md).
// Legacy restores queue on the netns's xtables lock anyway, so they run
// in order.
func (s *session) applyFamilies(path string, sets []rules.Ruleset) ([]bool, error) {
	wrote := make([]bool, len(sets))
	errs := make([]error, len(sets))
	if s.backend != NFT || len(sets) < 2 {
		for i, rs := range sets {
			if wrote[i], errs[i] = s.applyFamily(rs); errs[i] != nil {
				break
			}
		}
		return wrote, cmp.Or(errs...)
	}
	var wg sync.WaitGroup
	for i := 1; i < len(sets); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = netns.Do(path, func() error {
				var err error
				wrote[i], err = s.applyFamily(sets[i])
				return err
			})
		}()
	}
	wrote[0], errs[0] = s.applyFamily(sets[0])
	wg.Wait()
	return wrote, cmp.Or(errs...)
}

// applyFamily programs rs unless it is already there exactly. wrote says
// whether the kernel may now hold some of it.
func (s *session) applyFamily(rs rules.Ruleset) (wrote bool, err error) {
	skip, err := s.alreadyThere(rs)
	if err != nil || skip {
		return false, err
	}
	if err := s.restore(rs.Family, rs.Restore()); err != nil {
		return true, fmt.Errorf("program %s rules (%s backend): %w", rs.Family, s.backend, err)
	}
	return true, nil
}

// alreadyThere reports whether rs is already programmed exactly; other
// capture rules in the way are ErrConflict. A netns with no ISTIO chains
// (every new pod) costs one save and no scratch namespace.
func (s *session) alreadyThere(rs rules.Ruleset) (bool, error) {
	// A new pod's netns has no tables at all: no save needed.
	if has, err := s.hasTables(s.backend, rs.Family); err == nil && !has {
		return false, nil
	}
	all, err := s.save(rs.Family)
	if err != nil {
		return false, err
	}
	if ours(all, nil).Empty() {
		return false, nil
	}
	want, err := s.canonical(rs)
	if err != nil {
		return false, err
	}
	if err := compareFamily(rs.Family, want, all, ErrConflict); err != nil {
		return false, err
	}
	return true, nil
}

// undo removes what a failed or rolled-back apply wrote of rs, with the
// cleanup the rule model derives from rs. The family held none of rs's
// rules before the write (alreadyThere), and no other visit has written
// since (the netns lock), so what is there is whole tables of rs: legacy
// restores commit table by table, iptables-nft all at once. Each table's
// cleanup runs on its own, and one for a table that was never written
// fails and changes nothing.
func (s *session) undo(rs rules.Ruleset) {
	for _, t := range rs.UsedTables() {
		_ = s.restore(rs.Family, rs.CleanupTable(t))
	}
}

// Check implements Interface.
func (a *Applier) Check(ctx context.Context, path string, spec capture.Spec) error {
	return a.enter(ctx, path, func(s *session) error {
		sets := rules.Build(spec)
		if s.backend == Nftables {
			return s.nftCheck(spec, sets)
		}
		for _, rs := range sets {
			all, err := s.save(rs.Family)
			if err != nil {
				return err
			}
			want, err := s.canonical(rs)
			if err != nil {
				return err
			}
			if err := compareFamily(rs.Family, want, all, ErrMismatch); err != nil {
				return err
			}
		}
		return checkRoutes(spec)
	})
}

// Remove implements Interface.
func (a *Applier) Remove(ctx context.Context, path string) error {
	return a.enter(ctx, path, func(s *session) error {
		if s.backend == Nftables {
			return s.nftRemove()
		}
		for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
			all, err := s.save(f)
			if err != nil {
				return err
			}
			if have := ours(all, nil); !have.Empty() {
				if err := s.restore(f, removal(have)); err != nil {
					return fmt.Errorf("remove %s rules: %w", f, err)
				}
			}
		}
		return removeRoutes()
	})
}

// Save returns the netns's full iptables-save output for one family, for
// `meshcnictl verify` and debugging, without the timestamped comments, so
// that two saves of the same rules compare equal. With the nftables
// backend it is `nft list table ip meshcni` (ip6 for IPv6), or "" when
// the netns has no such table.
func (a *Applier) Save(ctx context.Context, path string, f rules.Family) (string, Backend, error) {
	var out string
	var backend Backend
	err := a.enter(ctx, path, func(s *session) error {
		backend = s.backend
		var err error
		if s.backend == Nftables {
			out, err = s.nftSave(f)
			return err
		}
		out, err = s.a.opts.Run(s.ctx, s.env, "", binary(s.backend, f == rules.IPv6, "save"))
		return err
	})
	return stripComments(out), backend, err
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

func stripComments(save string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(save, "\n") {
		if !strings.HasPrefix(l, "#") {
			b.WriteString(l)
		}
	}
	return b.String()
}
