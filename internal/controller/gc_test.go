package controller

import (
	"math"
	"testing"
)

func TestGCPercent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		limit int64
		env   string
		want  int
	}{
		{"a container's limit", 172 << 20, "", gcPercentUnderLimit},
		{"no limit", math.MaxInt64, "", -1},
		{"GOGC set", 172 << 20, "100", -1},
		{"GOGC off", 172 << 20, "off", -1},
		{"no limit, GOGC set", math.MaxInt64, "50", -1},
	} {
		if got := gcPercent(tc.limit, tc.env); got != tc.want {
			t.Errorf("%s: gcPercent(%d, %q) = %d, want %d", tc.name, tc.limit, tc.env, got, tc.want)
		}
	}
}
