package scale

import (
	"regexp"
	"strconv"
	"testing"
	"time"
)

// A heartbeat never follows the previous one within a second: it would
// write the same status, and kwok would never heartbeat that node again
// (heartbeatDelay).
func TestHeartbeatDelayOverASecond(t *testing.T) {
	delay := regexp.MustCompile(`durationMilliseconds: (\d+)\n\s*jitterDurationMilliseconds: (\d+)`)
	for _, tc := range []struct {
		period   time.Duration
		min, max time.Duration
	}{
		{100 * time.Millisecond, time.Second, time.Second},
		{time.Second, time.Second, 1500 * time.Millisecond},
		{2 * time.Second, time.Second, 3 * time.Second},
		{5 * time.Minute, 150 * time.Second, 450 * time.Second},
	} {
		m := delay.FindStringSubmatch(kwokHeartbeat(tc.period))
		if m == nil {
			t.Fatalf("period %v: no delay in the stage:\n%s", tc.period, kwokHeartbeat(tc.period))
		}
		lo, _ := strconv.Atoi(m[1])
		hi, _ := strconv.Atoi(m[2])
		got := [2]time.Duration{time.Duration(lo) * time.Millisecond, time.Duration(hi) * time.Millisecond}
		if want := [2]time.Duration{tc.min, tc.max}; got != want {
			t.Errorf("period %v: delay %v to %v, want %v to %v", tc.period, got[0], got[1], want[0], want[1])
		}
	}
}
