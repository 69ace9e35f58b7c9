// Command meshcni-webhook is meshcni's admission webhook; all logic is in
// internal/webhook.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshcni/meshcni/internal/webhook"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := webhook.NewCommand(os.Stderr).ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "meshcni-webhook:", err)
		stop()
		os.Exit(1)
	}
}
