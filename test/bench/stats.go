package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// percentile is the nearest-rank percentile of ds (p in 0-100); 0 for
// none. With fewer than 100 samples p99 is the maximum.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[max(rank, 1)-1]
}

func mean(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return sum / time.Duration(len(ds))
}

// ms renders a duration in milliseconds with two decimals; "–" for 0.
func ms(d time.Duration) string {
	if d == 0 {
		return "–"
	}
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}

// podRequests sums apiserver_request_total for requests on pods (the
// object, not a subresource) with one of verbs, from the API server's
// Prometheus text output.
func podRequests(metrics io.Reader, verbs ...string) (float64, error) {
	var sum float64
	sc := bufio.NewScanner(metrics)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		labels := parseLabels(line[len("apiserver_request_total{"):end])
		if labels["resource"] != "pods" || !slices.Contains(verbs, labels["verb"]) || labels["subresource"] != "" {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			return 0, fmt.Errorf("metrics line %q: %w", line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// parseLabels reads `a="x",b="y"`; values hold no quotes in these labels.
func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			break
		}
		key := s[:eq]
		rest := s[eq+2:]
		q := strings.IndexByte(rest, '"')
		if q < 0 {
			break
		}
		out[key] = rest[:q]
		s = strings.TrimPrefix(rest[q+1:], ",")
	}
	return out
}

// addLine is what the bench reads from the plug-in's one log line per ADD.
type addLine struct {
	At       time.Time // when the line was logged, at the end of CmdAdd
	Duration time.Duration
	Decision string
	Source   string // pod_source: where the plug-in found the pod (meshcni's log)
	Miss     string // cache_miss: why the agent's cache did not answer
}

// readAddLog maps "namespace/name" to the plug-in's own ADD line: its
// in-process duration and decision. Lines it cannot read are skipped, so
// a plug-in that logs nothing (or something else) yields an empty map.
func readAddLog(r io.Reader) map[string]addLine {
	out := map[string]addLine{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		var rec struct {
			Time     time.Time `json:"time"`
			Msg      string    `json:"msg"`
			Pod      string    `json:"pod"`
			Duration string    `json:"duration"`
			Decision string    `json:"decision"`
			Source   string    `json:"pod_source"`
			Miss     string    `json:"cache_miss"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Msg != "ADD" || rec.Pod == "" {
			continue
		}
		d, err := time.ParseDuration(rec.Duration)
		if err != nil {
			continue
		}
		out[rec.Pod] = addLine{At: rec.Time, Duration: d, Decision: rec.Decision, Source: rec.Source, Miss: rec.Miss}
	}
	return out
}

// straceCounts are what one `strace -f -e trace=execve,clone,clone3,fork,vfork`
// log shows: successful execs, and clones that made a process rather
// than a thread (no CLONE_THREAD).
type straceCounts struct {
	Execs, Forks int
	// ForksNoExec are forked children that never exec'd (Go 1.23+
	// probes pidfd support so once per process).
	ForksNoExec int
	// Programs lists each successful exec's path, in order.
	Programs []string
}

// straceRet finds a syscall's return value: ") = 0", ")      = 0".
var straceRet = regexp.MustCompile(`\)\s+=\s+(-?\w+)(\s|$)`)

func parseStrace(r io.Reader) (straceCounts, error) {
	var c straceCounts
	pendingExec := map[string]string{} // pid -> path of an unfinished execve
	pendingFork := map[string]bool{}   // pid -> an unfinished process clone
	var children []string
	execd := map[string]bool{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		pid, rest, _ := strings.Cut(line, " ")
		if _, err := strconv.Atoi(pid); err != nil {
			// strace without -f prints no pid column.
			pid, rest = "", line
		}
		rest = strings.TrimSpace(rest)
		ret := ""
		if m := straceRet.FindStringSubmatch(rest); m != nil {
			ret = m[1]
		}
		switch {
		case strings.HasPrefix(rest, "execve("):
			path := quoted(rest)
			if strings.HasSuffix(rest, "<unfinished ...>") {
				pendingExec[pid] = path
			} else if ret == "0" {
				c.Execs++
				c.Programs = append(c.Programs, path)
				execd[pid] = true
			}
		case strings.HasPrefix(rest, "<... execve resumed>"):
			if ret == "0" {
				c.Execs++
				c.Programs = append(c.Programs, pendingExec[pid])
				execd[pid] = true
			}
			delete(pendingExec, pid)
		case strings.HasPrefix(rest, "clone(") || strings.HasPrefix(rest, "clone3(") ||
			strings.HasPrefix(rest, "fork(") || strings.HasPrefix(rest, "vfork("):
			if strings.Contains(rest, "CLONE_THREAD") {
				continue
			}
			c.Forks++
			if strings.HasSuffix(rest, "<unfinished ...>") {
				pendingFork[pid] = true
			} else if ret != "" {
				children = append(children, ret)
			}
		case strings.HasPrefix(rest, "<... clone resumed>") || strings.HasPrefix(rest, "<... clone3 resumed>") ||
			strings.HasPrefix(rest, "<... fork resumed>") || strings.HasPrefix(rest, "<... vfork resumed>"):
			if pendingFork[pid] && ret != "" {
				children = append(children, ret)
			}
			delete(pendingFork, pid)
		}
	}
	for _, ch := range children {
		if !execd[ch] {
			c.ForksNoExec++
		}
	}
	return c, sc.Err()
}

// quoted returns the first "..." in s.
func quoted(s string) string {
	_, after, ok := strings.Cut(s, `"`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(after, `"`)
	return v
}

// initTrace sums GODEBUG=inittrace=1 output: each package's init clock
// time and heap bytes. Lines look like
// "init k8s.io/api/core/v1 @1.2 ms, 0.17 ms clock, 81920 bytes, 1100 allocs".
func initTrace(r io.Reader) (clock map[string]time.Duration, bytes map[string]int64, err error) {
	clock, bytes = map[string]time.Duration{}, map[string]int64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 9 || f[0] != "init" || f[6] != "clock," {
			continue
		}
		v, err := strconv.ParseFloat(f[4], 64)
		if err != nil {
			continue
		}
		b, _ := strconv.ParseInt(f[7], 10, 64)
		clock[f[1]] += time.Duration(v * float64(time.Millisecond))
		bytes[f[1]] += b
	}
	return clock, bytes, sc.Err()
}
