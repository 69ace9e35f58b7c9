package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/cache"

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

// servePodCache serves the node's pods on a Unix socket in b.dir with the
// agent's own watch and handler, as a running agent does, and returns
// once the watch has listed the node's pods. The plug-in runs in the node
// netns but shares the bench's mount namespace, so the path reaches it.
func (b *bench) servePodCache(ctx context.Context) (stop func(), err error) {
	path := filepath.Join(b.dir, "pods.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("pod cache socket: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	store, watchDone := agent.WatchNodePods(ctx, b.cluster.Client, testbed.NodeName)
	srv := &http.Server{Handler: &podcache.Handler{Store: store}, ReadHeaderTimeout: time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	stop = func() {
		cancel()
		_ = srv.Close()
		<-served
		<-watchDone
	}
	syncCtx, syncDone := context.WithTimeout(ctx, time.Minute)
	defer syncDone()
	if !cache.WaitForCacheSync(syncCtx.Done(), store.Synced) {
		stop()
		return nil, errors.New("pod cache: the watch of the node's pods did not sync within a minute")
	}
	b.cacheSocket = path
	return stop, nil
}
