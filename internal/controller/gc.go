package controller

import (
	"log/slog"
	"math"
	"os"
	"runtime/debug"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

// gcPercentUnderLimit is GOGC when a memory limit bounds the heap. Every
// replica answers the injection webhook, which is on the path of every
// pod creation in the cluster; a review allocates about 120 KiB, so at
// 200 reviews/s a replica's small heap is collected several times a
// second, and the reviews that meet a cycle make the latency's tail.
// With the scale harness, 400 shortened the tail and cost less CPU than
// 100 (docs/performance.md, "The webhook's latency tail").
const gcPercentUnderLimit = 400

// gcPercent is the GOGC to set, or -1 to leave the runtime's: GOGC from
// the environment wins, and without a memory limit (limit is
// math.MaxInt64) a higher GOGC could grow the heap without bound.
func gcPercent(limit int64, gogcEnv string) int {
	if gogcEnv != "" || limit <= 0 || limit == math.MaxInt64 {
		return -1
	}
	return gcPercentUnderLimit
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
// win), and under that limit a higher GOGC, so that the collector runs
// less often while the limit keeps the heap inside the container.
func tuneGC(log *slog.Logger) {
	limit, err := memlimit.Set(memlimit.WithProvider(memlimit.FromCgroup), memlimit.WithRatio(MemLimitRatio), memlimit.WithLogger(log))
	if err != nil {
		log.Warn("no memory limit from the cgroup; the garbage collector keeps its defaults", "err", err)
	}
	if p := gcPercent(limit, os.Getenv("GOGC")); p >= 0 {
		debug.SetGCPercent(p)
		log.Info("garbage collector", "gomemlimit_bytes", limit, "gogc", p)
	}
}
