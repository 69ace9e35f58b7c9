package cluster

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/internal/inject"
)

var istioFixtures = filepath.Join("..", "..", "inject", "testdata", "istio")

func runMutate(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	// A root with kubectl's flags (-n), as meshcnictl's.
	flags := genericclioptions.NewConfigFlags(true)
	cmd := &cobra.Command{Use: "meshcnictl", SilenceUsage: true, SilenceErrors: true}
	flags.AddFlags(cmd.PersistentFlags())
	cmd.AddCommand(NewCmdMutate(flags, genericiooptions.IOStreams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut}))
	cmd.SetArgs(append([]string{"mutate"}, args...))
	err := cmd.Execute()
	return out.String(), err
}

// initContainers lists every pod (template) init container in a YAML
// stream, by object name.
func initContainers(t *testing.T, stream string) map[string][]corev1.Container {
	t.Helper()
	got := map[string][]corev1.Container{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(strings.NewReader(stream)))
	for {
		doc, err := r.Read()
		if err != nil {
			return got
		}
		var obj struct {
			Kind     string
			Metadata struct{ Name string }
			Spec     struct {
				InitContainers []corev1.Container `json:"initContainers"`
				Template       struct {
					Spec corev1.PodSpec
				}
			}
		}
		if err := utilyaml.Unmarshal(doc, &obj); err != nil {
			t.Fatal(err)
		}
		switch obj.Kind {
		case "Pod":
			got[obj.Metadata.Name] = obj.Spec.InitContainers
		case "Deployment":
			got[obj.Metadata.Name] = obj.Spec.Template.Spec.InitContainers
		}
	}
}

func hasNetCaps(c corev1.Container) bool {
	sc := c.SecurityContext
	return sc != nil && sc.Capabilities != nil &&
		(slices.Contains(sc.Capabilities.Add, "NET_ADMIN") || slices.Contains(sc.Capabilities.Add, "NET_RAW"))
}

// Every Bookinfo and pods object, in both Istio modes, with its namespace
// captured and excluded: captured pods end with istio-validation and no
// NET_ADMIN/NET_RAW anywhere; excluded ones with istio-init and both.
// Bookinfo has no namespace, so -n places it.
func TestMutateFixtures(t *testing.T) {
	for _, file := range []string{"bookinfo-injected-default", "bookinfo-injected-cni", "pods-injected-default", "pods-injected-cni"} {
		for _, excluded := range []bool{false, true} {
			name := file + map[bool]string{false: "/captured", true: "/excluded"}[excluded]
			t.Run(name, func(t *testing.T) {
				ex := "istio-system"
				if excluded {
					ex = "istio-system,shop"
				}
				out, err := runMutate(t, "", "-f", filepath.Join(istioFixtures, file+".yaml"), "-n", "shop", "--exclude-namespaces", ex)
				if err != nil {
					t.Fatal(err)
				}
				inits := initContainers(t, out)
				if len(inits) == 0 {
					t.Fatal("no pods in the output")
				}
				for obj, cs := range inits {
					if obj == "opted-out" {
						if len(cs) != 0 {
							t.Errorf("opted-out pod got init containers %v", cs)
						}
						continue
					}
					if len(cs) != 1 {
						t.Fatalf("%s: %d init containers", obj, len(cs))
					}
					c := cs[0]
					if excluded {
						if c.Name != inject.InitName || !hasNetCaps(c) || *c.SecurityContext.RunAsUser != 0 {
							t.Errorf("%s: init container %s, caps %v: want the rule-programming istio-init", obj, c.Name, c.SecurityContext.Capabilities)
						}
						continue
					}
					if c.Name != inject.ValidationName || hasNetCaps(c) || !*c.SecurityContext.RunAsNonRoot || !*c.SecurityContext.ReadOnlyRootFilesystem {
						t.Errorf("%s: init container %s, caps %v: want istio-validation without capabilities", obj, c.Name, c.SecurityContext.Capabilities)
					}
				}
			})
		}
	}
}

// Without -n an object without a namespace is in "default"; without
// --exclude-namespaces the chart's list applies (istio-system excluded).
func TestMutateNamespaceDefaults(t *testing.T) {
	in, err := os.ReadFile(filepath.Join(istioFixtures, "bookinfo-injected-default.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	out, err := runMutate(t, string(in), "-f", "-")
	if err != nil {
		t.Fatal(err)
	}
	if c := initContainers(t, out)["productpage-v1"][0]; c.Name != inject.ValidationName {
		t.Errorf("in default: %s, want %s", c.Name, inject.ValidationName)
	}
	out, err = runMutate(t, string(in), "-f", "-", "-n", "istio-system")
	if err != nil {
		t.Fatal(err)
	}
	if c := initContainers(t, out)["productpage-v1"][0]; c.Name != inject.InitName {
		t.Errorf("in istio-system (excluded by the chart): %s, want %s", c.Name, inject.InitName)
	}
	out, err = runMutate(t, string(in), "-f", "-", "-n", "default", "--exclude-namespaces", "default")
	if err != nil {
		t.Fatal(err)
	}
	if c := initContainers(t, out)["productpage-v1"][0]; c.Name != inject.InitName {
		t.Errorf("in an excluded default: %s, want %s", c.Name, inject.InitName)
	}
}

// Other kinds pass through byte for byte; a bad document prints nothing.
func TestMutatePassThroughAndErrors(t *testing.T) {
	cm := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  a:   \"spaced\"   # a comment\n"
	out, err := runMutate(t, cm, "-f", "-")
	if err != nil || out != cm {
		t.Fatalf("out %q, err %v; want the ConfigMap unchanged", out, err)
	}
	out, err = runMutate(t, cm+"---\nkind: Pod\nspec: {initContainers: 3}\n", "-f", "-")
	if err == nil || out != "" || !strings.Contains(err.Error(), "document 2") {
		t.Fatalf("out %q, err %v; want an error naming document 2 and no output", out, err)
	}
	if _, err := runMutate(t, ""); err == nil || !strings.Contains(err.Error(), "-f") {
		t.Fatalf("err %v; want -f required", err)
	}
	if _, err := runMutate(t, "", "-f", "/nonexistent/x.yaml"); err == nil {
		t.Fatal("missing file: no error")
	}
}
