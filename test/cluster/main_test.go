//go:build cluster

package cluster

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cl is the cluster every test uses: bringing one up costs ~15 s, so the
// tests share it and run in order (none runs in parallel).
var cl *Cluster

// setupErr says why the cluster could not be brought up: every test then
// fails with it, so the suite never passes without having run.
var setupErr error

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	for _, s := range SweepStale() {
		fmt.Fprintln(os.Stderr, "cluster: swept:", s)
	}
	var closeOnce sync.Once
	var closeErr error
	closeCluster := func() {
		closeOnce.Do(func() {
			if cl != nil {
				t0 := time.Now()
				closeErr = cl.Close()
				fmt.Fprintf(os.Stderr, "cluster: closed in %.1fs\n", time.Since(t0).Seconds())
			}
		})
	}
	// A SIGINT or SIGTERM, or go test's -timeout coming (a watchdog one
	// minute before it), cleans up as the normal end does.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sig
		fmt.Fprintln(os.Stderr, "cluster: got", s, "- cleaning up")
		closeCluster()
		os.Exit(1)
	}()
	if d := testDeadline(); d > 0 {
		go func() {
			time.Sleep(d - time.Minute)
			fmt.Fprintln(os.Stderr, "cluster: go test's timeout is one minute away - cleaning up")
			closeCluster()
			os.Exit(1)
		}()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t0 := time.Now()
	fmt.Fprintln(os.Stderr, "cluster: bringing up a two-node cluster")
	cl, setupErr = Start(ctx, options(), "node-a", "node-b")
	cancel()
	if setupErr == nil {
		fmt.Fprintf(os.Stderr, "cluster: up in %.1fs\n", time.Since(t0).Seconds())
	}
	code := m.Run()
	closeCluster()
	if closeErr != nil {
		fmt.Fprintln(os.Stderr, "cluster:", closeErr)
		code = 1
	}
	return code
}

func options() Options {
	cache := os.Getenv("MESHCNI_CACHE")
	if cache == "" {
		cache = "/var/cache/meshcni"
	}
	root, _ := filepath.Abs("../..")
	crictl := filepath.Join(cache, "bin", "crictl")
	return Options{
		KubeBinDir: filepath.Join(cache, "bin"),
		Crictl:     crictl,
		AgentImage: filepath.Join(root, "dist", "meshcni-agent.oci.tar"),
		ModuleDir:  root,
		Log:        os.Stderr,
	}
}

// testDeadline is go test's -timeout (0: none).
func testDeadline() time.Duration {
	if f := flag.Lookup("test.timeout"); f != nil {
		if d, err := time.ParseDuration(f.Value.String()); err == nil {
			return d
		}
	}
	return 0
}

// need fails the test when the cluster could not be brought up.
func need(t *testing.T) *Cluster {
	t.Helper()
	if setupErr != nil {
		t.Fatalf("cluster: the cluster could not be brought up, nothing was tested: %v", setupErr)
	}
	return cl
}
