//go:build integration

package scale

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestSmallScale is the scale harness at a size `make test` affords (20
// nodes, a few hundred pods): every step of `make scale` runs against the
// real processes and must succeed, and what it measures must hold.
func TestSmallScale(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	// Each node's status every second: a steady state that is not idle.
	e, err := Start(ctx, Options{Repo: repo, Progress: testWriter{t}, NodeHeartbeat: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dir := e.Dir
	pids := []int{e.ControllerPID(), e.WebhookPID(), e.kwok.PID(), e.kcm.PID(), e.sched.PID()}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		if t.Failed() {
			t.Logf("logs:\n%s", e.LogTail(15))
		}
		if notes := e.Stop(); len(notes) > 0 {
			t.Errorf("stop: %v", notes)
		}
	}
	defer stop()

	cfg := Config{Nodes: 20, Pods: 400, Rates: []int{50, 200}, RateDuration: time.Second,
		FillRate: 200, Steady: 3 * time.Second, DownPods: 20, Timeout: time.Minute}
	r, err := Run(ctx, e, cfg)
	t.Logf("\n%s", r.Markdown())
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range r.Webhook {
		n := int(float64(w.Rate) * cfg.RateDuration.Seconds())
		if w.Direct.Sent != n || w.Direct.Patched != n || w.Direct.Failed != 0 {
			t.Errorf("%d/s straight to the webhook: %d sent, %d patched, %d failed (%v); want %d patched", w.Rate, w.Direct.Sent, w.Direct.Patched, w.Direct.Failed, w.Direct.Err, n)
		}
		// Every create succeeds; one the webhook does not answer within
		// its timeout (a starved machine) fails open, unconverted.
		if w.With.Created != n || w.With.Converted == 0 {
			t.Errorf("%d/s with the webhook: %d created, %d converted, want %d created and some converted", w.Rate, w.With.Created, w.With.Converted, n)
		}
		if w.Without.Created != n || w.Without.Converted != 0 {
			t.Errorf("%d/s without the webhook: %d created, %d converted, want %d and 0", w.Rate, w.Without.Created, w.Without.Converted, n)
		}
		// The API server's own CPU is read from its process (the PID the
		// harness started execs into kube-apiserver): it creates the pods.
		if w.APIServerWith <= 0 || w.APIServerWithout <= 0 {
			t.Errorf("%d/s: API server CPU %.3f / %.3f cores, want both > 0", w.Rate, w.APIServerWith, w.APIServerWithout)
		}
		if math.IsNaN(w.AdmitP99) { // the API server never called the webhook
			t.Errorf("%d/s: no webhook call in the API server's histogram", w.Rate)
		}
	}
	// Fails open: every pod created while the webhook is down, none converted.
	if r.Down.Created != cfg.DownPods || r.Down.Converted != 0 {
		t.Errorf("webhook down: %d created, %d converted; want %d and 0", r.Down.Created, r.Down.Converted, cfg.DownPods)
	}
	if r.PodsCreated < cfg.Pods || r.PodsRunning < r.PodsCreated-cfg.DownPods {
		t.Errorf("%d pods created, %d running; want %d", r.PodsCreated, r.PodsRunning, cfg.Pods)
	}
	if r.MaxUnavailable != "10%" {
		t.Errorf("the chart's maxUnavailable is %q, want 10%%", r.MaxUnavailable)
	}
	// Kubelet heartbeats (every node's status each second here) must not
	// drive the controller: at steady state it applies nothing.
	if applies, beats := r.Steady.Verb("APPLY"), r.Steady.Requests["PATCH nodes status"]; applies != 0 || beats == 0 {
		t.Errorf("steady state: %v applies (want 0) with %v node status patches (want some): %v", applies, beats, r.Steady.Requests)
	}
	if r.ControllerRSS == 0 || r.WebhookRSS == 0 || len(r.Steady.Watches) == 0 || len(r.Rollout.Requests) == 0 {
		t.Errorf("missing figures: %+v", r)
	}
	// Each replica runs with the collector its container would give it:
	// the chart's memory limit makes its GOMEMLIMIT, and the collector off under it.
	want := fmt.Sprintf(`"msg":"garbage collector","gomemlimit_bytes":%d,"gogc":"off"`, e.controllerGoMemLimit())
	for _, name := range []string{"meshcni-controller", "meshcni-controller-standby"} {
		b, err := os.ReadFile(filepath.Join(dir, name+".log"))
		if err != nil || !strings.Contains(string(b), want) {
			t.Errorf("%s: no %s in its log (%v)", name, want, err)
		}
	}

	stop()
	for _, pid := range pids {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid))); err == nil {
			t.Errorf("process %d still running after Stop", pid)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left behind: %v", dir, err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b[:len(b)-1]))
	return len(b), nil
}
