// Command meshcni-controller reconciles the MeshCNI resource; all logic is
// in internal/controller.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshcni/meshcni/internal/controller"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := controller.NewCommand(os.Stderr).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "meshcni-controller:", err)
		stop()
		os.Exit(1)
	}
}
