package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
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
	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/test/testbed"
)

// Pod lookups the bench can configure: the agent's watch of the node's
// pods over its Unix socket (how the agent writes the plug-in's entry),
// or a GET to the API server (the plug-in's fallback).
const (
	lookupCache = "cache"
	lookupAPI   = "api"
)

var lookups = []string{lookupCache, lookupAPI}

// serveEnv makes the bench binary the agent's side of the pod socket
// (see servePods) instead of the bench.
const serveEnv = "MESHCNI_BENCH_SERVE_PODS"

// servePodCache serves the node's pods on a Unix socket in b.dir with the
// agent's own watch and handler, in a process of its own as a running
// agent is (in the bench's process, the agent's goroutines would share a
// scheduler with the bench's forks and pipes), and returns once the watch
// has listed the node's pods. The plug-in runs in the node netns but
// shares the mount namespace, so the path reaches it.
func (b *bench) servePodCache(ctx context.Context) (stop func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(b.dir, "pods.sock")
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), serveEnv+"="+strings.Join([]string{path, b.cluster.AdminKubeconfig, testbed.NodeName}, "\n"))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	// The server stops when this pipe closes: with the bench, however it
	// ends.
	if _, err := cmd.StdinPipe(); err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("pod cache server: %w", err)
	}
	// Wait closes the pipe only once the server has exited, which is a
	// failure to start whatever was read.
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("said %q", line)
		}
		ready <- err
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop = func() { terminate(cmd, exited) }
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

// servePods is the agent's side: it prints "ready" once the watch has
// synced and serves until SIGTERM or until its stdin (the bench) closes.
func servePods(spec string) error {
	args := strings.Split(spec, "\n")
	if len(args) != 3 {
		return fmt.Errorf("%s: want socket, kubeconfig and node", serveEnv)
	}
	path, kubeconfig, node := args[0], args[1], args[2]
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		stop()
	}()
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("pod cache socket: %w", err)
	}
	store, watchDone := agent.WatchNodePods(ctx, cs, node)
	h := &podcache.Handler{Store: store}
	served := make(chan error, 1)
	go func() { served <- h.Serve(l) }()
	if cache.WaitForCacheSync(ctx.Done(), store.Synced) {
		fmt.Println("ready")
	}
	<-ctx.Done()
	_ = l.Close() // Serve returns once the lookups in flight are answered
	err = <-served
	<-watchDone
	return err
}
