package rules

import (
	"strings"
	"testing"

	"github.com/meshcni/meshcni/internal/capture/capturetest"
	"github.com/meshcni/meshcni/internal/golden"
)

func render(sets []Ruleset) string {
	var b strings.Builder
	for _, rs := range sets {
		b.WriteString("# " + rs.Family.String() + " restore\n" + rs.Restore())
	}
	for _, rs := range sets {
		b.WriteString("# " + rs.Family.String() + " cleanup\n" + rs.Cleanup())
	}
	return b.String()
}

func TestBuildGolden(t *testing.T) {
	for _, tc := range capturetest.Cases {
		t.Run(tc.Name, func(t *testing.T) {
			golden.Compare(t, tc.Name, render(Build(tc.Spec(t)).Sets))
		})
	}
}
