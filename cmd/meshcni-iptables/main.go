// Command meshcni-iptables programs sidecar traffic capture in the current
// network namespace from an init container; a drop-in for istio-iptables.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshcni/meshcni/internal/initcmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := initcmd.Main(ctx, os.Args[1:], initcmd.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	stop()
	os.Exit(code)
}
