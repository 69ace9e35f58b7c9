package fault

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docRef is how docs/reliability.md names a test: `dir.TestName` or
// `dir.TestName/subtest as written in the test's table`.
var docRef = regexp.MustCompile("`((?:internal|test)/[a-z0-9_/]+)\\.((?:Test|Fuzz)[A-Za-z0-9_]+)(?:/([^`]+))?`")

var funcDecl = regexp.MustCompile(`(?m)^func ((?:Test|Fuzz)[A-Za-z0-9_]*)\(`)

// TestReliabilityTable keeps docs/reliability.md and the tests in step:
// every test the table names exists (and every subtest it quotes is a
// case name in that test's file), and every fault, hostile-input and fuzz
// test (test/fault, *_fault_test.go, *_fuzz_test.go, fuzz_test.go) is in
// the table. Helpers run by other tests (…Helper) are exempt.
func TestReliabilityTable(t *testing.T) {
	root := filepath.Join("..", "..")
	doc, err := os.ReadFile(filepath.Join(root, "docs", "reliability.md"))
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	refs := docRef.FindAllStringSubmatch(string(doc), -1)
	if len(refs) < 50 {
		t.Fatalf("only %d test references in docs/reliability.md", len(refs))
	}
	for _, m := range refs {
		dir, fn, sub := m[1], m[2], m[3]
		named[dir+"."+fn] = true
		file := declaringFile(t, filepath.Join(root, dir), fn)
		if file == "" {
			t.Errorf("docs/reliability.md names %s.%s, which does not exist", dir, fn)
			continue
		}
		if sub == "" {
			continue
		}
		src, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(src), `"`+sub+`"`) {
			t.Errorf("docs/reliability.md names subtest %q of %s.%s, which %s does not hold", sub, dir, fn, file)
		}
	}

	for _, dir := range []string{"internal", "test"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, "_test.go") {
				return err
			}
			rel, _ := filepath.Rel(root, path)
			base := filepath.Base(path)
			inFault := filepath.Dir(rel) == filepath.Join("test", "fault")
			if !inFault && !strings.HasSuffix(base, "_fault_test.go") && !strings.HasSuffix(base, "_fuzz_test.go") && base != "fuzz_test.go" {
				return nil
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range funcDecl.FindAllStringSubmatch(string(src), -1) {
				fn := m[1]
				if strings.HasSuffix(fn, "Helper") || fn == "TestMain" || fn == "TestReliabilityTable" {
					continue
				}
				if key := filepath.ToSlash(filepath.Dir(rel)) + "." + fn; !named[key] {
					t.Errorf("%s (%s) is not in docs/reliability.md", key, rel)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}

// declaringFile returns the Go file in dir that declares fn, or "".
func declaringFile(t *testing.T, dir, fn string) string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(src), "\nfunc "+fn+"(") {
			return f
		}
	}
	return ""
}
