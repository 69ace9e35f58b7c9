// Package netfilter is meshcni's kernel I/O: it programs a capture spec
// into a network namespace with iptables-restore, one atomic restore per
// address family, or with one atomic nftables transaction (the nftables
// backend, over netlink or nft), and reads it back for CHECK and verify.
// A visit to a netns holds its lock (lock.go) and, inside the netns, is a
// rules.Kernel on the backend it finds there: the spec is validated and
// built into the rule model once, and rules.Apply decides against the
// kernel, asking it what is there and telling it what to write. The
// kernels render the model themselves (rules: restore text; nftrules: nft
// text and netlink) and read the kernel's listing back (compare.go,
// nftables.go). Fake is the same contract over an in-memory kernel,
// decided by the same rules.Apply.
package netfilter

import (
	"context"
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
	ErrConflict = rules.ErrConflict
	// ErrMismatch: CHECK found rules differing from the spec.
	ErrMismatch = rules.ErrMismatch
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

// visit is one visit to a netns: its lock held, and once inside it, the
// backend chosen once.
type visit struct {
	a       *Applier
	ctx     context.Context
	path    string
	backend Backend
	env     []string
	locked  *netnsLock
	xtables string // this netns's xtables lock file

	// The netns's nftables tables, listed once: detection and each
	// family's check before its write read the same listing. No other
	// meshcni visit writes the netns while this one holds its lock, and a
	// family's write changes no other family's tables.
	listOnce   sync.Once
	listed     []nftTable
	listingErr error
}

// open starts a visit to the netns at path ("" = the current one): the
// path checked, and the netns's lock taken. The visit's work runs inside
// the netns (netns.Do), where kernel picks the backend.
func (a *Applier) open(ctx context.Context, path string) (*visit, error) {
	// A pod's netns, never the caller's own (the node's): "" is the way to
	// ask for the current one, in init mode.
	if path != "" {
		if err := netns.CheckTarget(path); err != nil {
			return nil, err
		}
	}
	id, err := netns.ID(path)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(a.opts.LockDir, 0o700); err != nil {
		return nil, fmt.Errorf("create lock dir: %w", err)
	}
	// One visit per netns at a time, on every backend (see netnsLock).
	locked, err := lockNetns(ctx, filepath.Join(a.opts.LockDir, "netns-"+id+".lock"))
	if err != nil {
		return nil, err
	}
	// Only this visit uses the xtables lock of this netns, so it can go
	// when the visit ends.
	xtables := filepath.Join(a.opts.LockDir, "xtables-"+id+".lock")
	return &visit{a: a, ctx: ctx, path: path, env: []string{"XTABLES_LOCKFILE=" + xtables},
		locked: locked, xtables: xtables}, nil
}

func (v *visit) close() {
	os.Remove(v.xtables)
	v.locked.unlock()
}

// pick chooses the visit's backend, inside the netns (detect), and notes
// it for the caller (RecordBackend).
func (v *visit) pick() error {
	b, err := v.detect()
	if err != nil {
		return err
	}
	v.backend = b
	noteBackend(v.ctx, b)
	return nil
}

// kernel picks the backend and is the visit on it.
func (v *visit) kernel() (rules.Kernel, error) {
	if err := v.pick(); err != nil {
		return nil, err
	}
	if v.backend == Nftables {
		return &nftKernel{visit: v}, nil
	}
	return &xtablesKernel{visit: v, saved: map[rules.Family]Tables{}}, nil
}

// tables returns the visit's listing of the netns's nftables tables.
func (v *visit) tables() ([]nftTable, error) {
	v.listOnce.Do(func() { v.listed, v.listingErr = listTables() })
	return v.listed, v.listingErr
}

// detect picks the backend: forced, else whichever already holds tables
// in this netns (meshcni's nftables table first), else the node's
// iptables. All are looked at without a fork.
func (v *visit) detect() (Backend, error) {
	if v.a.opts.Backend != Auto {
		return v.a.opts.Backend, nil
	}
	if tables, err := v.tables(); err == nil && len(oursIn(tables)) > 0 {
		return Nftables, nil
	}
	for _, b := range []Backend{Legacy, NFT} {
		for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
			if has, err := v.hasTables(b, f); err == nil && has {
				return b, nil
			}
		}
	}
	return SystemDefault(v.a.opts.HostRoot), nil
}

// run, save and restore exec in the calling thread's netns: the visit's,
// or a scratch netns.
func (v *visit) run(stdin, name string, args ...string) (string, error) {
	if v.backend == Legacy {
		args = append([]string{"-w", "10"}, args...)
	}
	return v.a.opts.Run(v.ctx, v.env, stdin, name, args...)
}

func (v *visit) save(f rules.Family) (Tables, error) {
	out, err := v.a.opts.Run(v.ctx, v.env, "", binary(v.backend, f == rules.IPv6, "save"))
	if err != nil {
		return nil, err
	}
	return parseSave(out), nil
}

func (v *visit) restore(f rules.Family, text string) error {
	_, err := v.run(text, binary(v.backend, f == rules.IPv6, "restore"), "--noflush")
	return err
}

// Route and CheckRoutes are every kernel's: routes are netlink's alone.
func (v *visit) Route(r rules.Routes) error       { return programRoutes(r) }
func (v *visit) CheckRoutes(r rules.Routes) error { return checkRoutes(r) }

// Apply implements Interface: a spec that is not valid is refused before
// the netns is locked or entered; its model is built before too, and
// rules.Apply decides it against the visit's kernel.
func (a *Applier) Apply(ctx context.Context, path string, spec capture.Spec) error {
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("invalid capture spec: %w", err)
	}
	return a.decide(ctx, path, rules.Build(spec), rules.Apply)
}

// Check implements Interface.
func (a *Applier) Check(ctx context.Context, path string, spec capture.Spec) error {
	return a.decide(ctx, path, rules.Build(spec), rules.Check)
}

// decide runs how (rules.Apply or rules.Check) on model m, inside the
// netns at path, against the kernel of a visit to it.
func (a *Applier) decide(ctx context.Context, path string, m rules.Model, how func(rules.Kernel, rules.Model) error) error {
	v, err := a.open(ctx, path)
	if err != nil {
		return err
	}
	defer v.close()
	return netns.Do(path, func() error {
		k, err := v.kernel()
		if err != nil {
			return err
		}
		return how(k, m)
	})
}

// Remove implements Interface.
func (a *Applier) Remove(ctx context.Context, path string) error {
	v, err := a.open(ctx, path)
	if err != nil {
		return err
	}
	defer v.close()
	return netns.Do(path, func() error {
		if err := v.pick(); err != nil {
			return err
		}
		if v.backend == Nftables {
			return v.nftRemove()
		}
		for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
			all, err := v.save(f)
			if err != nil {
				return err
			}
			if have := ours(all, nil); !have.Empty() {
				if err := v.restore(f, removal(have)); err != nil {
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
	v, err := a.open(ctx, path)
	if err != nil {
		return "", Auto, err
	}
	defer v.close()
	var out string
	err = netns.Do(path, func() (err error) {
		if err := v.pick(); err != nil {
			return err
		}
		if v.backend == Nftables {
			out, err = v.nftSave(f)
			return err
		}
		out, err = v.a.opts.Run(v.ctx, v.env, "", binary(v.backend, f == rules.IPv6, "save"))
		return err
	})
	return stripComments(out), v.backend, err
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
