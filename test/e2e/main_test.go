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
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
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
		dir        string
		cluster    *kubeharness.Cluster
		kubeconfig string
		plugin     string // the built meshcni binary
		node       *testbed.Node
		rt         *Runtime
		calls      string // every CNI call the runtime made to meshcni
		pluginLog  string
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
		fmt.Fprintf(os.Stderr, "e2e: containerd, kube-apiserver, images ready in %s\n", time.Since(start).Round(time.Millisecond))
	}
	code := m.Run()
	if code != 0 && env.rt != nil {
		fmt.Fprintf(os.Stderr, "containerd log (tail):\n%s\n", env.rt.LogTail(40))
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

func setup(ctx context.Context) error {
	var err error
	if env.dir, err = os.MkdirTemp("", "meshcni-e2e-work-"); err != nil {
		return err
	}
	if env.plugin, err = testbed.BuildPlugin(env.dir); err != nil {
		return err
	}
	box := filepath.Join(env.dir, "box")
	cmd := exec.Command("go", "build", "-o", box, "github.com/meshcni/meshcni/test/e2e/box")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build box: %v: %s", err, out)
	}

	if env.cluster, err = kubeharness.Start(ctx, kubeharness.Options{}); err != nil {
		return err
	}
	// The plug-in's identity may only get pods, as in production.
	env.kubeconfig, _, err = env.cluster.ServiceAccountKubeconfig(ctx, "kube-system", "meshcni",
		[]rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}}}, time.Hour)
	if err != nil {
		return err
	}
	u, err := url.Parse(env.cluster.URL)
	if err != nil {
		return err
	}
	port, _ := strconv.Atoi(u.Port())

	env.calls = filepath.Join(env.dir, "cni-calls.log")
	env.pluginLog = filepath.Join(env.dir, "meshcni.log")
	if env.node, err = testbed.NewNode(testbed.Options{PluginConf: pluginConf(), ForwardPorts: []int{port}}); err != nil {
		return err
	}
	if err := installPlugin(); err != nil {
		return err
	}

	if env.rt, err = StartRuntime(ctx, RuntimeOptions{
		NodeNS: env.node.NS.Path(), CNIBinDir: env.node.BinDir, CNIConfDir: env.node.ConfDir, SandboxImage: pauseImage.Ref,
	}); err != nil {
		return fmt.Errorf("the container runtime could not start: %w", err)
	}
	for _, img := range []Image{pauseImage, appImage, sidecarImage} {
		tarball := filepath.Join(env.dir, filepath.Base(img.Ref)+".tar")
		if err := writeOCIArchive(tarball, box, img); err != nil {
			return err
		}
		if out, err := env.rt.Ctr(ctx, "images", "import", tarball); err != nil {
			return fmt.Errorf("import %s: %w: %s", img.Ref, err, out)
		}
	}
	return nil
}

// pluginConf is meshcni's entry in the node's conflist.
func pluginConf() map[string]any {
	return map[string]any{
		"type": "meshcni", "kubeconfig": env.kubeconfig, "exclude_namespaces": excludedNamespaces,
		"log_level": "debug", "log_file": env.pluginLog,
		"pod_lookup_retries": 5, "pod_lookup_interval": "200ms", "api_timeout": "3s",
	}
}

// installPlugin puts meshcni into the node's CNI bin dir behind a tap
// that appends each call's command, container and netns to env.calls and
// then execs the real binary with the same stdin and environment: the
// only way to see which calls the runtime made (DEL's netns, above all).
func installPlugin() error {
	tap := fmt.Sprintf("#!/bin/sh\necho \"$CNI_COMMAND $CNI_CONTAINERID netns=$CNI_NETNS\" >>%q\nexec %q \"$@\"\n", env.calls, env.plugin)
	return os.WriteFile(filepath.Join(env.node.BinDir, "meshcni"), []byte(tap), 0o755)
}

func teardown() {
	if env.rt != nil {
		for _, s := range env.rt.Close() {
			fmt.Fprintln(os.Stderr, "e2e cleanup:", s)
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
