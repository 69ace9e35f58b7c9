package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/internal/plugin"
	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/test/testbed"
)

// Pod lookups the bench can configure: the agent runs the ADD with the
// pod from its watch (delegate_add, how the agent writes the plug-in's
// entry); the plug-in asks the agent's watch over its Unix socket and
// runs the ADD itself; or it GETs the pod from the API server (its
// fallback when there is no agent).
const (
	lookupAgent = "agent"
	lookupCache = "cache"
	lookupAPI   = "api"
)

var lookups = []string{lookupAgent, lookupCache, lookupAPI}

// serveEnv makes the bench binary the agent's side of the socket (see
// servePods) instead of the bench.
const serveEnv = "MESHCNI_BENCH_SERVE_PODS"

// servePodCache starts the agent's side of its Unix socket in b.dir, in a
// process of its own as a running agent is: the agent's own watch of the
// node's pods and its handlers, which answer lookups and run the ADDs
// handed over (decision lines to the plug-in's log_file). It returns once
// the watch has listed the node's pods. The plug-in runs in the node
// netns but shares the mount namespace, so the path reaches it.
func (b *bench) servePodCache(ctx context.Context) (stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(b.dir, "pods.sock")
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), serveEnv+"="+strings.Join([]string{path, b.cluster.AdminKubeconfig, b.logFile, testbed.NodeName}, "\x00"))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pod cache server: %w", err)
	}
	stop = func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("said %q", line)
		}
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-time.After(time.Minute):
		err = errors.New("the watch of the node's pods did not sync within a minute")
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		stop()
		return nil, fmt.Errorf("pod cache server: %w", err)
	}
	b.cacheSocket = path
	return stop, nil
}

// servePods is the agent's side: it serves until SIGTERM.
func servePods(spec string) error {
	args := strings.Split(spec, "\x00")
	if len(args) != 4 {
		return fmt.Errorf("%s: want socket, kubeconfig, log file and node", serveEnv)
	}
	path, kubeconfig, logFile, node := args[0], args[1], args[2], args[3]
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(logFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("pod cache socket: %w", err)
	}
	store, watchDone := agent.WatchNodePods(ctx, cs, node)
	adds := plugin.NewInAgent(plugin.InAgent{Pods: store,
		Log: slog.New(slog.NewJSONHandler(logf, nil)).With("plugin", "meshcni", "ran_in", "agent")})
	srv := &http.Server{Handler: &podcache.Handler{Store: store, Add: adds.Add},
		ConnContext: podcache.ConnContext, ReadHeaderTimeout: time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(podcache.FDListener(l)) }()
	if cache.WaitForCacheSync(ctx.Done(), store.Synced) {
		fmt.Println("ready")
	}
	<-ctx.Done()
	_ = srv.Close()
	<-served
	<-watchDone
	return nil
}
