//go:build integration

package fault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

var (
	cluster *kubeharness.Cluster
	// pluginBin is cmd/meshcni, built once.
	pluginBin string
	// pluginToken may get pods and nothing else, as in production.
	pluginToken string
	// hostNetNS identifies the test process's own network namespace: no
	// command may ever run there (guard).
	hostNetNS string

	cycles = flag.Int("cycles", 1000, "ADD/CHECK/DEL cycles in TestCyclesLeakNothing (fewer for a quick run)")
)

// childEnv marks a re-executed test binary (the private mount namespace
// of the disk-fault tests): no cluster, only the named test.
const childEnv = "MESHCNI_FAULT_CHILD"

func TestMain(m *testing.M) {
	flag.Parse()
	id, err := netns.ID("/proc/self/ns/net")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	hostNetNS = id
	if os.Getenv(childEnv) != "" {
		os.Exit(m.Run())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "test/fault needs root: it creates network and mount namespaces")
		return 1
	}
	dir, err := os.MkdirTemp("", "meshcni-fault-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if pluginBin, err = testbed.BuildPlugin(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx := context.Background()
	if cluster, err = kubeharness.Start(ctx, kubeharness.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer cluster.Stop()
	_, pluginToken, err = cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni-plugin",
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}, time.Hour)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	if code != 0 {
		fmt.Fprintln(os.Stderr, cluster.LogTail(20))
	}
	return code
}

// guard wraps a Runner so that no command ever runs in the test process's
// own network namespace, whatever bug a fault uncovers. record, if not
// nil, gets the netns of every command run.
func guard(inner netfilter.Runner, record func(netnsID, name string)) netfilter.Runner {
	return func(ctx context.Context, env []string, stdin, name string, args ...string) (string, error) {
		id, err := netns.ID("")
		if err != nil {
			return "", fmt.Errorf("fault guard: %w", err)
		}
		if id == hostNetNS {
			return "", fmt.Errorf("fault guard: refusing to run %s in the test process's own network namespace", name)
		}
		if record != nil {
			record(id, name)
		}
		return inner(ctx, env, stdin, name, args...)
	}
}

// newNS creates a pod netns, removed when the test ends.
func newNS(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() { testbed.CloseNS(n) })
	return n
}

// inNS runs a command inside the netns at path (never the host's).
func inNS(path, name string, args ...string) (string, error) {
	var out string
	err := netns.Do(path, func() error {
		var err error
		out, err = guard(netfilter.ExecRunner, nil)(context.Background(), nil, "", name, args...)
		return err
	})
	return out, err
}

var builtinChains = map[string]bool{"INPUT": true, "OUTPUT": true, "FORWARD": true, "PREROUTING": true, "POSTROUTING": true}

// residue lists every rule and user chain left in the netns, whichever
// way it was written: iptables legacy and nft for both families, and
// meshcni's own nftables tables.
func residue(t testing.TB, path string) []string {
	t.Helper()
	var out []string
	for _, tool := range []string{"iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"} {
		save, err := inNS(path, tool)
		if err != nil {
			t.Fatalf("%s in %s: %v", tool, path, err)
		}
		for _, l := range strings.Split(save, "\n") {
			switch {
			case strings.HasPrefix(l, "-A "):
				out = append(out, tool+": "+l)
			case strings.HasPrefix(l, ":"):
				if f := strings.Fields(l[1:]); len(f) > 0 && !builtinChains[f[0]] {
					out = append(out, tool+": chain "+f[0])
				}
			}
		}
	}
	list, err := inNS(path, "nft", "list", "ruleset")
	if err != nil {
		t.Fatalf("nft list ruleset in %s: %v", path, err)
	}
	for _, l := range strings.Split(list, "\n") {
		if strings.HasPrefix(l, "table ") && strings.Contains(l, "meshcni") {
			out = append(out, "nft: "+strings.TrimSuffix(l, " {"))
		}
	}
	return out
}

func assertNoResidue(t testing.TB, path string) {
	t.Helper()
	if r := residue(t, path); len(r) > 0 {
		t.Errorf("rules left in %s:\n  %s", path, strings.Join(r, "\n  "))
	}
}

// prevResult is a primary plug-in's result for a pod in netns path.
func prevResult(path string, ipv6 bool) map[string]any {
	ips := []any{map[string]any{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 0}}
	if ipv6 {
		ips = append(ips, map[string]any{"address": "fd00:1::5/64", "interface": 0})
	}
	return map[string]any{
		"cniVersion": "1.0.0",
		"interfaces": []any{map[string]any{"name": "eth0", "sandbox": path}},
		"ips":        ips,
		"dns":        map[string]any{},
	}
}

// netconf is meshcni's stdin: the test's tight API timings, then extra.
func netconf(t testing.TB, path string, ipv6 bool, extra map[string]any) []byte {
	t.Helper()
	c := map[string]any{
		"cniVersion": "1.0.0", "name": "faultnet", "type": "meshcni",
		"kubeconfig": "/nonexistent/kubeconfig", "excludeNamespaces": []string{"kube-system", "istio-system"},
		"logLevel": "debug", "apiTimeout": "300ms", "podLookupRetries": 2, "podLookupInterval": "50ms",
		"prevResult": prevResult(path, ipv6),
	}
	for k, v := range extra {
		c[k] = v
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// invocation is one run of the plug-in binary.
type invocation struct {
	stdout  []byte
	stderr  string
	err     *types.Error // the CNI error on stdout, if it failed
	elapsed time.Duration
}

// runPlugin runs the meshcni binary as a runtime would, in the test
// process's namespaces; it enters the pod netns by path itself.
func runPlugin(t testing.TB, command, netnsPath, cniArgs string, conf []byte) invocation {
	t.Helper()
	return runPluginIn(t, "", command, netnsPath, cniArgs, conf)
}

// runPluginIn runs it from inside the netns at within ("": this one), as
// a runtime living in a node netns would.
func runPluginIn(t testing.TB, within, command, netnsPath, cniArgs string, conf []byte) invocation {
	t.Helper()
	return runBinaryIn(t, pluginBin, within, command, netnsPath, cniArgs, conf)
}

// runBinaryIn is runPluginIn with another build or copy of the plug-in.
func runBinaryIn(t testing.TB, bin, within, command, netnsPath, cniArgs string, conf []byte) invocation {
	t.Helper()
	if command != "DEL" && !strings.HasPrefix(netnsPath, "/var/run/netns/") && !strings.HasPrefix(netnsPath, "/run/netns/") {
		t.Fatalf("fault guard: %s is not a netns this test created", netnsPath)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), "CNI_COMMAND="+command, "CNI_CONTAINERID=fault-"+filepath.Base(netnsPath),
		"CNI_NETNS="+netnsPath, "CNI_IFNAME=eth0", "CNI_PATH=/nonexistent", "CNI_ARGS="+cniArgs)
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	runErr := netns.Do(within, cmd.Start) // the child starts in within
	if runErr == nil {
		runErr = cmd.Wait()
	}
	inv := invocation{stdout: stdout.Bytes(), stderr: stderr.String(), elapsed: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case runErr == nil:
	case errors.As(runErr, &exit):
		// The error is the last JSON document: skel prints a result and
		// then an error when it rejects the netns after the ADD ran.
		dec := json.NewDecoder(bytes.NewReader(inv.stdout))
		for dec.More() {
			inv.err = &types.Error{}
			if err := dec.Decode(inv.err); err != nil {
				t.Fatalf("%s failed without a CNI error on stdout: %v\nstdout %s\nstderr %s", command, runErr, inv.stdout, inv.stderr)
			}
		}
		if inv.err == nil || inv.err.Code == 0 {
			t.Fatalf("%s failed without a CNI error on stdout: %v\nstdout %s\nstderr %s", command, runErr, inv.stdout, inv.stderr)
		}
	default:
		t.Fatalf("run %s: %v", bin, runErr)
	}
	return inv
}

func k8sArgs(namespace, name, uid string) string {
	return "IgnoreUnknown=1;K8S_POD_NAMESPACE=" + namespace + ";K8S_POD_NAME=" + name + ";K8S_POD_UID=" + uid
}

// captureStdout runs f with os.Stdout on a pipe (CmdAdd prints its result
// there) and closes both ends: testutils.CmdAdd leaks the read end.
func captureStdout(f func() error) ([]byte, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	var out []byte
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); out, _ = io.ReadAll(r) }()
	stdout := os.Stdout
	os.Stdout = w
	ferr := f()
	os.Stdout = stdout
	w.Close()
	wg.Wait()
	r.Close()
	return out, ferr
}
