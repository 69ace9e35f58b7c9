package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

type report struct {
	Machine    machine
	Options    options
	Started    time.Time
	Took       time.Duration
	LoadEnd    string
	BinarySize int64
	Rows       []row
	Breakdown  []step
	Procs      []procCost
	Init       *initCost
	Agent      *agentResult
}

func (r *report) write(w io.Writer) {
	o := r.Options
	fmt.Fprintf(w, "## ADD benchmark: %s\n\n", o.plugin)
	fmt.Fprintf(w, "- Machine: %s\n", r.Machine)
	fmt.Fprintf(w, "- Load average at the end: %s\n", r.LoadEnd)
	fmt.Fprintf(w, "- Run: %s, took %s; --pods %d --batches %s --kinds %s", r.Started.UTC().Format(time.RFC3339), r.Took.Round(time.Second),
		o.pods, joinInts(o.batches), strings.Join(o.kinds, ","))
	fmt.Fprintf(w, " --lookup %s", strings.Join(o.lookups, ","))
	if o.backend != "" {
		fmt.Fprintf(w, " --backend %s", o.backend)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "- Plug-in binary: %.1f MiB\n\n", float64(r.BinarySize)/(1<<20))

	fmt.Fprintln(w, "### ADD latency (ms)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Plug-in alone: one exec of the plug-in with the primary's prevResult, fork to reaped. Whole chain: libcni AddNetworkList over bridge + host-local + plug-in (loopback excluded). In-process: the plug-in's own `duration` log field (CmdAdd). Start-up: fork to the start of CmdAdd, from the log line's time. CPU: user+system time of the plug-in and its children per ADD (rusage), which load on the machine disturbs far less than wall time. Pod lookup: cache, the agent's watch of the node's pods over its Unix socket (the entry the agent writes); api, a GET to the API server (the plug-in's fallback when the agent is not there). p99 of fewer than 100 ADDs is the slowest.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| pod kind | timed | pod lookup | pods at once | ADDs | failed | p50 | p99 | mean | in-process p50 | start-up p50 | CPU p50 | batch wall | API pod GETs/ADD |")
	fmt.Fprintln(w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	var notes []string
	for _, x := range r.Rows {
		gets := "?"
		if !math.IsNaN(x.GETsPerADD) {
			gets = fmt.Sprintf("%.2f", x.GETsPerADD)
		}
		wall := "–"
		if x.AtOnce > 1 {
			wall = ms(x.Wall)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %d | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", x.Kind, x.Scope, x.Lookup, x.AtOnce, x.ADDs, x.Fails,
			ms(percentile(x.Lat, 50)), ms(percentile(x.Lat, 99)), ms(mean(x.Lat)), ms(percentile(x.InProc, 50)), ms(percentile(x.Startup, 50)),
			ms(percentile(x.CPU, 50)), wall, gets)
		where := fmt.Sprintf("%s, %s, %s lookup, %d at once", x.Kind, x.Scope, x.Lookup, x.AtOnce)
		if x.FirstErr != "" {
			notes = append(notes, fmt.Sprintf("%s: first failure: %s", where, oneLine(x.FirstErr)))
		}
		if x.OtherSource > 0 {
			notes = append(notes, fmt.Sprintf("%s: the plug-in's log says %d pods came from elsewhere than the %s lookup (first cache miss: %s)",
				where, x.OtherSource, x.Lookup, dash(oneLine(x.FirstMiss))))
		}
		if x.NotCaptured > 0 {
			notes = append(notes, fmt.Sprintf("%s: the plug-in's log says %d mesh pods were not captured", where, x.NotCaptured))
		}
		if len(x.Lat) > 0 && len(x.InProc) == 0 {
			notes = append(notes, fmt.Sprintf("%s: no ADD lines with a duration in the plug-in's log_file", where))
		}
		if x.dualExpected && !x.DualStackOK {
			notes = append(notes, fmt.Sprintf("%s: some pods got no IPv6 address", where))
		}
	}
	for _, n := range notes {
		fmt.Fprintf(w, "\n- %s", n)
	}
	if len(notes) > 0 {
		fmt.Fprintln(w)
	}

	if len(r.Breakdown) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "### Where ADD time goes (plug-in alone, one at a time, %d of each, interleaved; ms)\n\n", o.pods)
		fmt.Fprintln(w, "Each ADD split by the plug-in's log line: start-up (fork to CmdAdd), in-process (CmdAdd), exit (log line to reaped). CPU and minor page faults from rusage, children included.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| step | p50 | mean | p50 minus the step it adds to | start-up p50 | in-process p50 | exit p50 | CPU p50 | minor faults p50 |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
		for _, s := range r.Breakdown {
			p50 := percentile(s.Lat, 50)
			delta := "–"
			if s.AddsTo >= 0 {
				delta = signedMS(p50 - percentile(r.Breakdown[s.AddsTo].Lat, 50))
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %d |\n", s.Name, ms(p50), ms(mean(s.Lat)), delta,
				ms(percentile(s.Startup, 50)), ms(percentile(s.InProc, 50)), ms(percentile(s.Exit, 50)), ms(percentile(s.CPU, 50)), medianInt(s.Faults))
		}
	}

	if r.Init != nil {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "### Package initialisation before main (GODEBUG=inittrace=1, VERSION, mean of %d runs)\n\n", r.Init.Runs)
		fmt.Fprintf(w, "All packages: %s ms, %.1f MiB allocated. The slowest:\n\n", ms(r.Init.Total), float64(r.Init.TotalBytes)/(1<<20))
		fmt.Fprintln(w, "| package | init ms | KiB allocated |")
		fmt.Fprintln(w, "|---|---:|---:|")
		for _, p := range r.Init.Top {
			fmt.Fprintf(w, "| %s | %.3f | %d |\n", p.Pkg, float64(p.Clock)/float64(time.Millisecond), p.Bytes/1024)
		}
	}
	if len(r.Procs) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "### Processes and memory per plug-in run (plug-in alone)")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Execs and forks: `strace -f`, the plug-in's own exec not counted; forks are clones without CLONE_THREAD, in brackets those whose child never exec'd (Go 1.23+ forks once per process to probe pidfd support). Peak RSS: ru_maxrss of the plug-in (and of its children, whichever is larger) from a small launcher, so the bench's own size does not leak in; the no-op row is that floor.")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| run | runs | execs/run | forks/run | peak RSS KiB p50 | peak RSS KiB max | programs exec'd |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---|")
		for _, c := range r.Procs {
			maxRSS := int64(0)
			if len(c.RSS) > 0 {
				maxRSS = slices.Max(c.RSS)
			}
			forks := perRun(c.Forks)
			if !math.IsNaN(c.Forks) {
				forks += " (" + perRun(c.ForksNoExec) + ")"
			}
			fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s |\n", c.What, c.Runs, perRun(c.Execs), forks,
				kib(medianInt(c.RSS)), kib(maxRSS), dash(c.Programs))
		}
	}
	if r.Agent != nil {
		fmt.Fprintln(w)
		r.Agent.write(w)
	}
}

func perRun(v float64) string {
	if math.IsNaN(v) {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func kib(v int64) string {
	if v == 0 {
		return "–"
	}
	return strconv.FormatInt(v, 10)
}

func dash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func signedMS(d time.Duration) string {
	switch {
	case d == 0:
		return "0.00"
	case d > 0:
		return "+" + ms(d)
	}
	return "−" + ms(-d)
}

func medianInt(xs []int64) int64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func joinInts(xs []int) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprint(x))
	}
	if len(s) == 0 {
		return `""`
	}
	return strings.Join(s, ",")
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
