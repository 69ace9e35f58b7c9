package scale

import (
	"bufio"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Sample is one line of the Prometheus text format: a metric name, its
// labels and its value.
type Sample struct {
	Name   string
	Labels map[string]string
	Value  float64
}

// ParseMetrics reads the Prometheus text exposition format (what the API
// server's /metrics serves), skipping comments. Pure.
func ParseMetrics(text string) ([]Sample, error) {
	var out []Sample
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := parseSample(line)
		if err != nil {
			return nil, fmt.Errorf("metrics line %d %q: %w", n, line, err)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseSample(line string) (Sample, error) {
	s := Sample{Labels: map[string]string{}}
	rest := line
	if i := strings.IndexAny(line, "{ "); i < 0 {
		return s, fmt.Errorf("no value")
	} else {
		s.Name, rest = line[:i], line[i:]
	}
	if strings.HasPrefix(rest, "{") {
		rest = rest[1:]
		for {
			rest = strings.TrimLeft(rest, ", ")
			if strings.HasPrefix(rest, "}") {
				rest = rest[1:]
				break
			}
			eq := strings.Index(rest, `="`)
			if eq < 0 {
				return s, fmt.Errorf("bad labels")
			}
			key := rest[:eq]
			rest = rest[eq+2:]
			var val strings.Builder
			closed := false
			for i := 0; i < len(rest); i++ {
				c := rest[i]
				if c == '\\' && i+1 < len(rest) {
					i++
					switch rest[i] {
					case 'n':
						val.WriteByte('\n')
					default:
						val.WriteByte(rest[i])
					}
					continue
				}
				if c == '"' {
					rest = rest[i+1:]
					closed = true
					break
				}
				val.WriteByte(c)
			}
			if !closed {
				return s, fmt.Errorf("unterminated label value")
			}
			s.Labels[key] = val.String()
		}
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return s, fmt.Errorf("no value")
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return s, err
	}
	s.Value = v
	return s, nil
}

// Sum adds the values of the samples named name whose labels include all
// of match.
func Sum(samples []Sample, name string, match map[string]string) float64 {
	total := 0.0
	for _, s := range samples {
		if s.Name == name && matches(s.Labels, match) {
			total += s.Value
		}
	}
	return total
}

func matches(labels, match map[string]string) bool {
	for k, v := range match {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// SumBy adds the values of the samples named name whose labels include
// match, grouped by the values of the labels in by (joined with " ").
func SumBy(samples []Sample, name string, match map[string]string, by ...string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range samples {
		if s.Name != name || !matches(s.Labels, match) {
			continue
		}
		key := make([]string, len(by))
		for i, l := range by {
			key[i] = s.Labels[l]
		}
		out[strings.Join(key, " ")] += s.Value
	}
	return out
}

// Delta is after minus before, key by key (keys only in after count from 0).
func Delta(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	UpperBound float64 // +Inf for the last
	Count      float64
}

// Buckets collects the cumulative buckets of histogram name (its _bucket
// samples) whose labels include match, summed over the other labels, in
// order of their bounds.
func Buckets(samples []Sample, name string, match map[string]string) []Bucket {
	byLE := map[float64]float64{}
	for _, s := range samples {
		if s.Name != name+"_bucket" || !matches(s.Labels, match) {
			continue
		}
		le, err := strconv.ParseFloat(s.Labels["le"], 64)
		if err != nil {
			continue
		}
		byLE[le] += s.Value
	}
	out := make([]Bucket, 0, len(byLE))
	for le, c := range byLE {
		out = append(out, Bucket{UpperBound: le, Count: c})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UpperBound < out[j].UpperBound })
	return out
}

// BucketDelta is after minus before, bucket by bucket (same bounds).
func BucketDelta(before, after []Bucket) []Bucket {
	prev := map[float64]float64{}
	for _, b := range before {
		prev[b.UpperBound] = b.Count
	}
	out := make([]Bucket, len(after))
	for i, b := range after {
		out[i] = Bucket{UpperBound: b.UpperBound, Count: b.Count - prev[b.UpperBound]}
	}
	return out
}

// BucketBound returns the upper bound of the bucket holding quantile q
// (0 < q ≤ 1): a histogram says no more than that, so the result is "≤
// bound". It returns +Inf past the last finite bound and NaN when empty.
func BucketBound(buckets []Bucket, q float64) float64 {
	if len(buckets) == 0 || buckets[len(buckets)-1].Count == 0 {
		return math.NaN()
	}
	rank := q * buckets[len(buckets)-1].Count
	for _, b := range buckets {
		if b.Count >= rank {
			return b.UpperBound
		}
	}
	return math.Inf(1)
}

// Quantile is the q-quantile (0 ≤ q ≤ 1) of durations, nearest rank. It
// sorts d in place; 0 for none.
func Quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	i := int(math.Ceil(q*float64(len(d)))) - 1
	return d[max(0, min(i, len(d)-1))]
}

// ProcStat is what /proc says about a process: CPU time so far and memory.
type ProcStat struct {
	CPU   time.Duration // user + system
	RSS   uint64        // VmRSS, bytes
	HWM   uint64        // VmHWM (peak RSS), bytes
	Taken time.Time
}

// ParseProcStat reads utime and stime (fields 14 and 15, in clock ticks of
// ticksPerSecond) from the text of /proc/PID/stat. The command name, in
// parentheses, may hold spaces, so fields count from its closing one.
func ParseProcStat(stat string, ticksPerSecond int) (time.Duration, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc stat: no command name")
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state): utime is field 14, stime field 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc stat: %d fields", len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc stat: utime %q stime %q", f[11], f[12])
	}
	return time.Duration(ut+st) * time.Second / time.Duration(ticksPerSecond), nil
}

// ParseProcStatus reads VmRSS and VmHWM (in bytes) from the text of
// /proc/PID/status.
func ParseProcStatus(status string) (rss, hwm uint64, err error) {
	found := 0
	for _, line := range strings.Split(status, "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM") {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, fmt.Errorf("/proc status %s: %q", key, val)
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc status %s: %w", key, err)
		}
		if key == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
		found++
	}
	if found != 2 {
		return 0, 0, fmt.Errorf("/proc status: VmRSS or VmHWM missing")
	}
	return rss, hwm, nil
}

// CPUShare is the CPU a process used between two readings, in cores
// (1.0: one core busy all the time).
func CPUShare(a, b ProcStat) float64 {
	wall := b.Taken.Sub(a.Taken)
	if wall <= 0 {
		return 0
	}
	return float64(b.CPU-a.CPU) / float64(wall)
}
