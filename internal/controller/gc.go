package controller

import (
	"log/slog"
	"math"
	"os"
	"runtime/debug"
	"strconv"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// gcPercent is the GOGC to set under a memory limit, and whether to set
// one: off, so that the collector runs only to keep the heap under the
// limit. Every replica answers the injection webhook, which is on the
// path of every pod creation in the cluster; a review allocates about
// 120 KiB, so at 200 reviews/s a replica's small live heap would be
// collected every second or two, and the reviews that meet a cycle make
// the latency's tail. Under the limit alone, a cycle comes when the
// garbage reaches the limit, whatever the live heap; each cycle costs
// what the live heap costs to mark. With the scale harness, the tail was
// shorter at GOGC 400 than at Go's default, and shorter still with the
// collector off under the limit (docs/performance.md, "The webhook's
// latency tail"). GOGC from the environment wins, and without a memory
// limit (limit is math.MaxInt64) nothing is set: the heap would grow
// without bound.
func gcPercent(limit int64, gogcEnv string) (percent int, set bool) {
	if gogcEnv != "" || limit <= 0 || limit == math.MaxInt64 {
		return 0, false
	}
	return -1, true // off: debug.SetGCPercent(-1)
}

// MemLimitRatio is the share of the container's memory limit given to
// GOMEMLIMIT. The limit is soft: under a burst of reviews (the API server
// sends them all at once when it is slow) a replica's RSS overshot a 90 %
// GOMEMLIMIT by 19 MiB, to the container's own limit; 75 % leaves a
// quarter for that and for what the runtime does not count.
const MemLimitRatio = 0.75

// tuneGC sets the garbage collector as the Go GC guide advises for a
// process in a container: a soft memory limit under the container's (its
// cgroup's memory.max; GOMEMLIMIT or AUTOMEMLIMIT in the environment
// win), and under that limit the collector off (gcPercent), so that it
// runs only when the limit asks for it.
func tuneGC(log *slog.Logger) {
	limit, err := memlimit.Set(memlimit.WithProvider(memlimit.FromCgroup), memlimit.WithRatio(MemLimitRatio), memlimit.WithLogger(log))
	if err != nil {
		log.Warn("no memory limit from the cgroup; the garbage collector keeps its defaults", "err", err)
	}
	if p, set := gcPercent(limit, os.Getenv("GOGC")); set {
		debug.SetGCPercent(p)
		log.Info("garbage collector", "gomemlimit_bytes", limit, "gogc", gogcName(p))
	}
}

// gogcName is p as GOGC spells it.
func gogcName(p int) string {
	if p < 0 {
		return "off"
	}
	return strconv.Itoa(p)
}
