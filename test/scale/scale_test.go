//go:build scale

package scale

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	nodesFlag   = flag.Int("scale.nodes", 2000, "simulated nodes")
	podsFlag    = flag.Int("scale.pods", 60000, "application pods when the controller and the API load are measured")
	ratesFlag   = flag.String("scale.rates", "50,200,500", "pod creates per second the webhook is measured at")
	rateDur     = flag.Duration("scale.rate-duration", 10*time.Second, "how long each rate runs (with the webhook, then as long without)")
	fillFlag    = flag.Int("scale.fill-rate", 300, "creates per second for the rest of the pods")
	steadyFlag  = flag.Duration("scale.steady", 30*time.Second, "steady-state window")
	timeoutFlag = flag.Duration("scale.timeout", 30*time.Minute, "bound on each wait")
	outFlag     = flag.String("scale.out", "", "also write the table to this file")
	hbFlag      = flag.Duration("scale.heartbeat", 5*time.Minute, "each node's status update period (the kubelet's nodeStatusReportFrequency)")
	webhookOnly = flag.Bool("scale.webhook-only", false, "end after the webhook's rates (to compare webhook settings)")
)

// TestScale is `make scale`: the whole measurement at full size, printed
// as the table docs/performance.md records.
func TestScale(t *testing.T) {
	var rates []int
	for _, s := range strings.Split(*ratesFlag, ",") {
		r, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || r <= 0 {
			t.Fatalf("-scale.rates: %q", s)
		}
		rates = append(rates, r)
	}
	cfg := Config{Nodes: *nodesFlag, Pods: *podsFlag, Rates: rates, RateDuration: *rateDur, FillRate: *fillFlag,
		Steady: *steadyFlag, DownPods: 200, Timeout: *timeoutFlag, WebhookOnly: *webhookOnly}
	ctx := context.Background()
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	e, err := Start(ctx, Options{Repo: repo, Progress: os.Stderr, NodeHeartbeat: *hbFlag})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s", e.LogTail(20))
		}
		if notes := e.Stop(); len(notes) > 0 {
			t.Errorf("stop: %v", notes)
		}
	}()
	r, err := Run(ctx, e, cfg)
	table := r.Markdown()
	fmt.Printf("\n## meshcni at scale (2 shared cores)\n\n%s\n", table)
	if *outFlag != "" {
		if werr := os.WriteFile(*outFlag, []byte(table), 0o644); werr != nil {
			t.Error(werr)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}
