// Package addstat is the record of one ADD that the plug-in sends the
// agent over the log socket, after its log lines, and that the agent turns
// into meshcni_plugin_add_duration_seconds and meshcni_plugin_adds_total.
// It is apart from the log lines because those follow the plug-in's log
// level (at "warn" no ADD line is sent) and carry free text; the record
// is sent whatever the level, and holds label values from fixed sets only.
package addstat

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/meshcni/meshcni/internal/podspec"
)

// Key marks a line as a Record: no slog line of the plug-in has it.
const Key = "meshcni_add"

// The decisions of an ADD.
const (
	Captured = "captured"
	Skipped  = "skipped"
	Failed   = "failed"
)

// Decisions lists every decision.
var Decisions = []string{Captured, Skipped, Failed}

// NoBackend labels an ADD that programmed nothing.
const NoBackend = "none"

// Backends lists every backend label (netfilter's Backend names).
var Backends = []string{"iptables-legacy", "iptables-nft", "nftables", NoBackend}

// Other replaces a label value outside its set, so that a line from
// another version cannot make new series.
const Other = "other"

// Record is one ADD: its decision, the verdict's code (podspec.Codes),
// the backend that programmed the pod, and its duration in seconds.
type Record struct {
	Version  int     `json:"meshcni_add"`
	Decision string  `json:"decision"`
	Reason   string  `json:"reason"`
	Backend  string  `json:"backend"`
	Seconds  float64 `json:"seconds"`
}

// New returns the record of an ADD that took d.
func New(decision, reason, backend string, d time.Duration) Record {
	if backend == "" {
		backend = NoBackend
	}
	return Record{Version: 1, Decision: decision, Reason: reason, Backend: backend, Seconds: d.Seconds()}
}

// Line is the record as one JSON line.
func (r Record) Line() []byte {
	b, _ := json.Marshal(r) // strings and numbers only: cannot fail
	return append(b, '\n')
}

// Parse reads a line written by Line; ok is false for any other line.
func Parse(line []byte) (r Record, ok bool) {
	if err := json.Unmarshal(line, &r); err != nil || r.Version == 0 {
		return Record{}, false
	}
	return r, true
}

// Labels returns the record's label values, each kept to its fixed set.
func (r Record) Labels() (decision, reason, backend string) {
	return known(r.Decision, Decisions), known(r.Reason, podspec.Codes), known(r.Backend, Backends)
}

func known(v string, set []string) string {
	if slices.Contains(set, v) {
		return v
	}
	return Other
}
