//go:build integration

// Package ctl tests meshcnictl as a user runs it: enable, status, disable
// against a real kube-apiserver and the real meshcni-controller run
// in-process (the test plays the DaemonSet controller and the kubelets),
// verify on real pod network namespaces of a simulated
// node, and doctor on a temp CNI config with a real API token.
package ctl

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/internal/ctl"
	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

var (
	cluster   *kubeharness.Cluster
	pluginBin string
	cacheDir  string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshcni-ctl-")
	if err != nil {
		panic(err)
	}
	cacheDir = dir + "/kube-cache"
	code := testbed.Main(m, &pluginBin, &cluster, nil)
	os.RemoveAll(dir)
	os.Exit(code)
}

// meshcnictl runs the command line as a user would, with the admin
// kubeconfig, and returns what it printed.
func meshcnictl(ctx context.Context, args ...string) (stdout, stderr string, err error) {
	var out bytes.Buffer
	errOut, err := meshcnictlTo(ctx, &out, args...)
	return out.String(), errOut, err
}

// meshcnictlTo is meshcnictl writing its stdout to out, which the test
// may read while the command runs.
func meshcnictlTo(ctx context.Context, out io.Writer, args ...string) (stderr string, err error) {
	var errb bytes.Buffer
	cmd := ctl.NewCmd(genericiooptions.IOStreams{In: strings.NewReader(""), Out: out, ErrOut: &errb})
	cmd.SetArgs(append([]string{"--kubeconfig", cluster.AdminKubeconfig, "--cache-dir", cacheDir}, args...))
	err = cmd.ExecuteContext(ctx)
	return errb.String(), err
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := meshcnictl(context.Background(), args...)
	if err != nil {
		t.Fatalf("meshcnictl %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}
