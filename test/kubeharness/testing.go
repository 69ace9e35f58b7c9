package kubeharness

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"
)

// StartT starts a cluster for one test and stops it in t.Cleanup. It fails
// the test, rather than skipping it, when the binaries are missing: `make
// test` builds them. If the test failed, the process log tails are logged.
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	start := time.Now()
	c, err := Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("kubeharness: %v", err)
	}
	t.Logf("kubeharness: kube-apiserver ready at %s in %v (dir %s)", c.URL, time.Since(start).Round(time.Millisecond), c.Dir)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kubeharness logs:\n%s", c.LogTail(30))
		}
		if err := c.Stop(); err != nil {
			t.Errorf("kubeharness: stop: %v", err)
		}
	})
	return c
}

// RunTests starts one cluster for a whole test package, stores it in
// *cluster, runs the tests and stops the cluster. Call it from TestMain:
//
//	os.Exit(kubeharness.RunTests(m, kubeharness.Options{}, &cluster))
//
// If the cluster does not start, it prints why and returns 1 without
// running any test.
//
// m is usually the *testing.M; a wrapper may run setup before its tests.
func RunTests(m Runner, opts Options, cluster **Cluster) int {
	if !flag.Parsed() {
		flag.Parse() // for testing.Verbose; m.Run would do it anyway
	}
	start := time.Now()
	c, err := Start(context.Background(), opts)
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubeharness: %v\n", err)
		return 1
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "kubeharness: kube-apiserver ready at %s in %v (dir %s)\n", c.URL, time.Since(start).Round(time.Millisecond), c.Dir)
	}
	*cluster = c
	code := m.Run()
	if code != 0 {
		fmt.Fprintf(os.Stderr, "kubeharness logs:\n%s", c.LogTail(30))
	}
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "kubeharness: stop: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Runner is what RunTests runs: a *testing.M, or a wrapper around one.
type Runner interface{ Run() int }
