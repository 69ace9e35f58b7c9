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
		want  string // "" = left alone
	}{
		{"a container's limit", 172 << 20, "", "off"},
		{"no limit", math.MaxInt64, "", ""},
		{"GOGC set", 172 << 20, "100", ""},
		{"GOGC off", 172 << 20, "off", ""},
		{"no limit, GOGC set", math.MaxInt64, "50", ""},
	} {
		got := ""
		if p, set := gcPercent(tc.limit, tc.env); set {
			got = gogcName(p)
		}
		if got != tc.want {
			t.Errorf("%s: gcPercent(%d, %q) sets %q, want %q", tc.name, tc.limit, tc.env, got, tc.want)
		}
	}
}
