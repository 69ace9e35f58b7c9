// Package golden compares test output with testdata/<name>.golden, and
// rewrites the file instead when REFRESH_GOLDEN=true (Istio's convention).
package golden

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Refresh reports whether goldens are being rewritten.
func Refresh() bool { return os.Getenv("REFRESH_GOLDEN") == "true" }

// Compare checks got against testdata/<name>.golden, naming the lines
// that differ.
func Compare(t testing.TB, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if Refresh() {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with REFRESH_GOLDEN=true to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (REFRESH_GOLDEN=true rewrites it):\n%s", path, LineDiff(string(want), got))
	}
}

// LineDiff lists the lines where want and got differ.
func LineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < len(w) || i < len(g); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			b.WriteString("line " + strconv.Itoa(i+1) + ":\n  want: " + wl + "\n  got:  " + gl + "\n")
		}
	}
	return b.String()
}
