//go:build e2e

// Package e2e runs meshcni the way production does: containerd's CRI
// plug-in runs the node's conflist (Debian's bridge + host-local, then
// meshcni) for each pod sandbox, against a real kube-apiserver, and real
// containers (an app, a stand-in sidecar running as 1337) then prove where
// the traffic lands. containerd, the bridge and every pod live in a "node"
// network namespace the suite creates; see docs/e2e.md.
package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"

	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

// Images the suite builds and imports; pause is CRI's sandbox image.
var (
	pauseImage   = Image{Ref: "meshcni.local/e2e/pause:1", Entrypoint: []string{"/box", "pause"}, User: "65535:65535"}
	appImage     = Image{Ref: "meshcni.local/e2e/app:1", Entrypoint: []string{"/box", "serve"}, User: "1000:1000"}
	sidecarImage = Image{Ref: "meshcni.local/e2e/sidecar:1", Entrypoint: []string{"/box", "serve", "outbound=:15001", "inbound=:15006"}, User: "1337:1337"}
)

// Namespaces the plug-in never captures.
var excludedNamespaces = []string{"kube-system", "istio-system"}

// env is what TestMain sets up once; setupErr says why it could not.
var (
	env struct {
		dir     string
		cluster *kubeharness.Cluster
		plugin  string // the built meshcni binary
		node    *testbed.Node
		rt      *Runtime
		agent   *Agent
		agentIn AgentOptions // to start it again after an uninstall
		calls   string       // every CNI call the runtime made to meshcni
	}
	setupErr error
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	flag.Parse()
	var once sync.Once
	cleanup := func() { once.Do(teardown) }
	defer cleanup()
	// Cleanup must run even when go test's -timeout or a signal would
	// kill the process: containers, shims and mounts outlive it.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-stop
		fmt.Fprintf(os.Stderr, "e2e: %s: cleaning up\n", s)
		cleanup()
		os.Exit(2)
	}()
	if d := testTimeout(); d > 2*time.Minute {
		t := time.AfterFunc(d-time.Minute, func() {
			fmt.Fprintln(os.Stderr, "e2e: about to hit -timeout: cleaning up")
			cleanup()
			os.Exit(2)
		})
		defer t.Stop()
	}

	start := time.Now()
	setupErr = setup(context.Background())
	if setupErr != nil {
		fmt.Fprintf(os.Stderr, "e2e: SETUP FAILED, every test will fail: %v\n", setupErr)
	} else {
		fmt.Fprintf(os.Stderr, "e2e: node ready (kube-apiserver, containerd in the node netns, images, meshcni-agent) in %s\n", time.Since(start).Round(time.Millisecond))
	}
	code := m.Run()
	if code != 0 && env.rt != nil {
		fmt.Fprintf(os.Stderr, "containerd log (tail):\n%s\n", env.rt.LogTail(40))
	}
	if code != 0 && env.agent != nil {
		fmt.Fprintf(os.Stderr, "meshcni-agent log (tail):\n%s\n", env.agent.Tail(40))
	}
	if code != 0 && env.cluster != nil {
		fmt.Fprintln(os.Stderr, env.cluster.LogTail(20))
	}
	return code
}

func testTimeout() time.Duration {
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil {
			return d
		}
	}
	return 0
}

// setup brings a node up the way a cluster does: the API server, a node
// with its primary CNI config (bridge + host-local), containerd, then the
// meshcni agent, which installs the plug-in and its conflist entry, and
// containerd picking that up by itself.
func setup(ctx context.Context) error {
	for _, s := range append(SweepStale(), sweepWorkDirs()...) {
		fmt.Fprintln(os.Stderr, "e2e: swept an earlier run's leftovers:", s)
	}
	last := time.Now()
	step := func(what string) {
		fmt.Fprintf(os.Stderr, "e2e: setup: %s (%s)\n", what, time.Since(last).Round(time.Millisecond))
		last = time.Now()
	}
	var err error
	if env.dir, err = os.MkdirTemp("", workDirPrefix+strconv.Itoa(os.Getpid())+"-"); err != nil {
		return err
	}
	if env.plugin, err = testbed.BuildPlugin(env.dir); err != nil {
		return err
	}
	agentBin := filepath.Join(env.dir, "meshcni-agent")
	box := filepath.Join(env.dir, "box")
	for out, pkg := range map[string]string{agentBin: "cmd/meshcni-agent", box: "test/e2e/box"} {
		cmd := exec.Command("go", "build", "-o", out, "github.com/meshcni/meshcni/"+pkg)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %v: %s", pkg, err, b)
		}
	}
	step("built meshcni, meshcni-agent, box")

	if env.cluster, err = kubeharness.Start(ctx, kubeharness.Options{}); err != nil {
		return err
	}
	// The plug-in's identity may only get pods, as in production.
	kubeconfig, token, err := env.cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni",
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}, time.Hour)
	if err != nil {
		return err
	}
	tokenPath := filepath.Join(env.dir, "serviceaccount", "token")
	if err := os.MkdirAll(filepath.Dir(tokenPath), 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(tokenPath, []byte(token), 0o600); err != nil {
		return err
	}
	step("kube-apiserver up, plug-in service account made")
	// Dual-stack, as a modern cluster's nodes: every pod also gets IPv6.
	if env.node, err = testbed.NewNode(testbed.Options{ForwardPorts: []int{env.cluster.Port}, Subnet6: "fd0a:e2e::/64"}); err != nil {
		return err
	}

	if env.rt, err = StartRuntime(ctx, RuntimeOptions{
		NodeNS: env.node.NS.Path(), CNIBinDir: env.node.BinDir, CNIConfDir: env.node.ConfDir, SandboxImage: pauseImage.Ref,
	}); err != nil {
		return fmt.Errorf("the container runtime could not start: %w", err)
	}
	step("containerd answers CRI in the node netns")
	for _, img := range []Image{pauseImage, appImage, sidecarImage} {
		tarball := filepath.Join(env.dir, filepath.Base(img.Ref)+".tar")
		if err := writeOCIArchive(tarball, box, img); err != nil {
			return err
		}
		if out, err := env.rt.Ctr(ctx, "images", "import", tarball); err != nil {
			return fmt.Errorf("import %s: %w: %s", img.Ref, err, out)
		}
	}
	step("images built and imported")

	env.calls = filepath.Join(env.dir, "cni-calls.log")
	tap, err := writeTap()
	if err != nil {
		return err
	}
	env.agentIn = AgentOptions{
		Binary: agentBin, PluginBinary: tap, Node: env.node, Kubeconfig: kubeconfig, TokenPath: tokenPath,
		Dir: filepath.Join(env.dir, "agent"),
		Args: []string{"--exclude-namespaces", strings.Join(excludedNamespaces, ","), "--plugin-log-level", "debug",
			"--pod-lookup-retries", "5", "--pod-lookup-interval", "200ms", "--api-timeout", "3s"},
	}
	env.agent, err = StartAgent(ctx, env.agentIn)
	if err != nil {
		return err
	}
	step("meshcni-agent ready")
	err = env.rt.WaitCNIConfig(ctx, "with meshcni last", chainedLast)
	step("containerd loaded the chained conflist")
	return err
}

// workDirPrefix names the suite's work dir, followed by the test process's
// PID: a dir whose process is gone was left by a run killed with SIGKILL.
const workDirPrefix = "meshcni-e2e-work-"

func sweepWorkDirs() []string {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), workDirPrefix+"*"))
	var swept []string
	for _, dir := range dirs {
		pid, _, _ := strings.Cut(strings.TrimPrefix(filepath.Base(dir), workDirPrefix), "-")
		if _, err := strconv.Atoi(pid); err != nil {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); os.IsNotExist(err) {
			_ = os.RemoveAll(dir)
			swept = append(swept, "removed "+dir)
		}
	}
	return swept
}

// chainedLast: the conflist ends with the meshcni entry.
func chainedLast(conflist string) bool {
	var l struct{ Plugins []struct{ Type string } }
	return json.Unmarshal([]byte(conflist), &l) == nil && len(l.Plugins) > 1 && l.Plugins[len(l.Plugins)-1].Type == "meshcni"
}

// writeTap writes the file the agent installs as the plug-in: a tap that
// appends each call's command, container and netns to env.calls, then
// execs the real meshcni with the same stdin and environment. It is the
// only way to see which calls the runtime made (DEL's netns, above all).
func writeTap() (string, error) {
	path := filepath.Join(env.dir, "tap", "meshcni")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	tap := fmt.Sprintf("#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID netns=$CNI_NETNS\" >>%q\nexec %q \"$@\"\n", env.calls, env.plugin)
	return path, os.WriteFile(path, []byte(tap), 0o755)
}

func teardown() {
	if env.rt != nil {
		for _, s := range env.rt.Close() {
			fmt.Fprintln(os.Stderr, "e2e cleanup:", s)
		}
	}
	if env.agent != nil {
		if note := env.agent.Stop(15 * time.Second); note != "" {
			fmt.Fprintln(os.Stderr, "e2e cleanup:", note)
		}
	}
	if env.node != nil {
		env.node.Close()
	}
	if env.cluster != nil {
		_ = env.cluster.Stop()
	}
	if env.dir != "" {
		_ = os.RemoveAll(env.dir)
	}
}
