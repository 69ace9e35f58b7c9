package netfilter

import (
	"cmp"
	"fmt"
	"sync"

	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/rules"
)

// xtablesKernel is a visit on an iptables backend (iptables-legacy or
// iptables-nft): rules go in with iptables-restore, one per family, and
// are read back with iptables-save. Its methods run in the visit's netns.
type xtablesKernel struct {
	*visit
	// saved is each family's iptables-save, read once per visit: no
	// other visit writes the netns while this one holds its lock, and it
	// is read before this visit writes.
	saved map[rules.Family]Tables
}

var _ rules.Kernel = (*xtablesKernel)(nil)

// Held implements rules.Kernel.
func (k *xtablesKernel) Held(f rules.Family, want rules.Listing) (rules.Listing, error) {
	all, ok := k.saved[f]
	if !ok {
		// A new pod's netns has no tables at all: no save needed.
		if has, err := k.hasTables(k.backend, f); err == nil && !has {
			all = Tables{}
		} else if all, err = k.save(f); err != nil {
			return nil, err
		}
		k.saved[f] = all
	}
	return ours(all, want), nil
}

// Lists implements rules.Kernel: the kernel is asked, in a scratch
// netns, how it lists each ruleset. It is the only reliable way to
// compare with iptables-save output, which normalizes matches ("-p tcp
// -m tcp --dport").
func (k *xtablesKernel) Lists(sets []rules.Ruleset) (map[rules.Family]rules.Listing, error) {
	out := map[rules.Family]rules.Listing{}
	err := netns.Scratch(func() error {
		for _, rs := range sets {
			if err := k.restore(rs.Family, rs.Restore()); err != nil {
				return fmt.Errorf("render %s rules: %w", rs.Family, err)
			}
			got, err := k.save(rs.Family)
			if err != nil {
				return err
			}
			out[rs.Family] = got
		}
		return nil
	})
	return out, err
}

// Write implements rules.Kernel. With iptables-nft a dual-stack pod's
// IPv6 restore runs at the same time as the IPv4 one, from a second
// thread in the netns: the two execs share nothing, and on 2 cores that
// takes one restore off the ADD (docs/performance.md). Legacy restores
// queue on the netns's xtables lock anyway, so they run in order.
func (k *xtablesKernel) Write(sets []rules.Ruleset) ([]bool, error) {
	clear(k.saved)
	wrote := make([]bool, len(sets))
	errs := make([]error, len(sets))
	write := func(i int) error {
		rs := sets[i]
		wrote[i] = true
		if err := k.restore(rs.Family, rs.Restore()); err != nil {
			return fmt.Errorf("program %s rules (%s backend): %w", rs.Family, k.backend, err)
		}
		return nil
	}
	if k.backend != NFT || len(sets) < 2 {
		for i := range sets {
			if errs[i] = write(i); errs[i] != nil {
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
			errs[i] = netns.Do(k.path, func() error { return write(i) })
		}()
	}
	errs[0] = write(0)
	wg.Wait()
	return wrote, cmp.Or(errs...)
}

// Undo implements rules.Kernel, with the cleanup the rule model derives
// from rs. The family held none of rs's rules before the write, and no
// other visit has written since (the netns lock), so what is there is
// whole tables of rs: legacy restores commit table by table,
// iptables-nft all at once. Each table's cleanup runs on its own, and one
// for a table that was never written fails and changes nothing.
func (k *xtablesKernel) Undo(rs rules.Ruleset) {
	for _, t := range rs.UsedTables() {
		_ = k.restore(rs.Family, rs.CleanupTable(t))
	}
}
