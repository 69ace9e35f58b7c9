package install

import (
	"os"
	"path/filepath"
	"testing"
)

// compareGolden compares got with testdata/<name>.golden; with
// REFRESH_GOLDEN=true it rewrites the file instead (Istio's convention).
func compareGolden(t *testing.T, got []byte, name string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if os.Getenv("REFRESH_GOLDEN") == "true" {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with REFRESH_GOLDEN=true to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s differs from golden:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}
