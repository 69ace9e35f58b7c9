//go:build integration || scale

package scale

import (
	"context"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/chart"
)

// Config sizes a run.
type Config struct {
	Nodes int
	// Pods is how many application pods exist when the controller and
	// the API load are measured (the rate runs count towards it).
	Pods int
	// Rates are the create rates (per second) the webhook is measured
	// at, each for RateDuration with the webhook and as long without.
	Rates        []int
	RateDuration time.Duration
	// FillRate creates the rest of Pods.
	FillRate int
	// Steady is how long the steady state is watched.
	Steady time.Duration
	// DownPods are created with the webhook process stopped.
	DownPods int
	// WebhookOnly ends the run after the webhook's rates, to compare
	// the webhook's settings without the rest of a run.
	WebhookOnly bool
	// Timeout bounds each wait (nodes ready, agents ready, rollout).
	Timeout time.Duration
}

// WebhookRow is one create rate.
type WebhookRow struct {
	Rate int
	// Direct is the webhook alone: reviews sent straight to it at the
	// rate, before the creates.
	Direct                 DirectResult
	P50Direct, P99Direct   time.Duration
	DirectCPU              float64 // cores, webhook, during Direct
	With, Without          LoadResult
	P50With, P99With       time.Duration
	P50Without, P99Without time.Duration
	// AdmitP50, AdmitP99 are the API server's histogram's upper bounds for
	// the call to meshcni's webhook (its buckets are 5 ms, 25 ms, ...).
	AdmitP50, AdmitP99 float64
	WebhookCPU         float64 // cores, during the run with the webhook
	// APIServerWith, APIServerWithout are kube-apiserver's CPU (cores)
	// during the creates with the webhook and without it: on 2 shared
	// cores, what a create costs the API server sets its queue.
	APIServerWith, APIServerWithout float64
}

// APIWindow is the API server's work over a window.
type APIWindow struct {
	Seconds  float64
	Requests map[string]float64 // "VERB resource subresource" → count
	Watches  map[string]float64 // resource → open watches at the end
}

// Verb is how many requests of verb the window saw.
func (w APIWindow) Verb(verb string) float64 {
	n := 0.0
	for k, v := range w.Requests {
		if strings.HasPrefix(k, verb+" ") {
			n += v
		}
	}
	return n
}

// Report is everything a run measured.
type Report struct {
	Config  Config
	Started time.Time
	Load    string // /proc/loadavg at the start and the end

	NodesReady time.Duration // from the first node create

	AgentsReady  time.Duration // MeshCNI created → every agent Ready
	ReadyToPhase time.Duration // last agent Ready → phase Running

	Webhook        []WebhookRow
	WebhookRSS     uint64
	WebhookHWM     uint64
	Down           LoadResult
	DownP50        time.Duration
	DownP99        time.Duration
	PodsCreated    int
	FillFailed     int
	PodsRunning    int
	FillTime       time.Duration
	ControllerIdle float64 // cores, steady state
	ControllerRoll float64 // cores, during the rollout
	ControllerRSS  uint64  // after the rollout
	ControllerHWM  uint64
	// Restarts counts the replicas' restarts (the leader, the webhook):
	// a replica that loses its Lease exits and is started again.
	Restarts [2]int

	Steady  APIWindow
	Rollout APIWindow

	RolloutNodes   time.Duration // settings change → every node's agent Ready with it
	RolloutRunning time.Duration // settings change → phase Running
	MaxUnavailable string
}

// agentTracker follows the agent pods through a watch and records when
// all nodes' agents became Ready with a given settings hash.
type agentTracker struct {
	mu    sync.Mutex
	pods  map[string]*corev1.Pod // by name
	moved chan struct{}
}

func (t *agentTracker) set(p *corev1.Pod, gone bool) {
	t.mu.Lock()
	if gone {
		delete(t.pods, p.Name)
	} else {
		t.pods[p.Name] = p
	}
	t.mu.Unlock()
	select {
	case t.moved <- struct{}{}:
	default:
	}
}

// count is how many distinct nodes have a Ready agent with hash.
func (t *agentTracker) count(hash string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	nodes := map[string]bool{}
	for _, p := range t.pods {
		if p.DeletionTimestamp == nil && podReady(p) && p.Annotations[chart.ConfigHashAnnotation] == hash {
			nodes[p.Spec.NodeName] = true
		}
	}
	return len(nodes)
}

// wait returns when n nodes' agents are Ready with hash, and the time
// that was first seen.
func (t *agentTracker) wait(ctx context.Context, hash string, n int, timeout time.Duration) (time.Time, error) {
	deadline := time.After(timeout)
	for {
		if c := t.count(hash); c >= n {
			return time.Now(), nil
		}
		select {
		case <-t.moved:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			return time.Time{}, fmt.Errorf("%d of %d agents Ready with settings %s after %v", t.count(hash), n, hash, timeout)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

func (e *Env) trackAgents(ctx context.Context) (*agentTracker, error) {
	t := &agentTracker{pods: map[string]*corev1.Pod{}, moved: make(chan struct{}, 1)}
	f := informers.NewSharedInformerFactoryWithOptions(e.Client, 0, informers.WithNamespace(Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = chart.AgentSelector }))
	inf := f.Core().V1().Pods().Informer()
	_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { t.set(o.(*corev1.Pod), false) },
		UpdateFunc: func(_, o any) { t.set(o.(*corev1.Pod), false) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if p, ok := o.(*corev1.Pod); ok {
				t.set(p, true)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	return t, nil
}

// waitPhase polls the MeshCNI until its status says phase for its
// current generation.
func (e *Env) waitPhase(ctx context.Context, phase string, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		mc, err := e.MeshCNI(ctx)
		if err == nil && mc.Status.Phase == phase && mc.Status.ObservedGeneration == mc.Generation {
			return time.Now(), nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%s (%.200s), generation %d observed %d", mc.Status.Phase, mc.Status.Message, mc.Generation, mc.Status.ObservedGeneration)
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("MeshCNI not %s after %v: %s", phase, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// daemonSetHash waits until the DaemonSet exists with a template hash
// other than not, and returns it.
func (e *Env) daemonSetHash(ctx context.Context, not string, timeout time.Duration) (*appsv1.DaemonSet, string, error) {
	deadline := time.Now().Add(timeout)
	for {
		ds, err := e.Client.AppsV1().DaemonSets(Namespace).Get(ctx, chart.DaemonSetName, metav1.GetOptions{})
		if err == nil {
			if h := ds.Spec.Template.Annotations[chart.ConfigHashAnnotation]; h != "" && h != not {
				return ds, h, nil
			}
		}
		if time.Now().After(deadline) {
			return nil, "", fmt.Errorf("DaemonSet %s with new settings: not after %v (%v)", chart.DaemonSetName, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *Env) apiWindow(ctx context.Context, before []Sample, from time.Time) (APIWindow, []Sample, error) {
	after, err := e.APIMetrics(ctx)
	if err != nil {
		return APIWindow{}, nil, err
	}
	w := APIWindow{Seconds: time.Since(from).Seconds()}
	by := []string{"verb", "resource", "subresource"}
	w.Requests = Delta(SumBy(before, "apiserver_request_total", nil, by...), SumBy(after, "apiserver_request_total", nil, by...))
	w.Watches = SumBy(after, "apiserver_longrunning_requests", map[string]string{"verb": "WATCH"}, "resource")
	return w, after, nil
}

// Run measures, step by step, on a started Env; it returns what it
// measured so far with the first error.
func Run(ctx context.Context, e *Env, cfg Config) (r *Report, err error) {
	r = &Report{Config: cfg, Started: time.Now(), Load: loadavg()}
	defer func() {
		r.Load += " → " + loadavg()
		r.Restarts[0], r.Restarts[1] = e.Restarts()
	}()
	if err := LoadIstioTemplate(e.opts.Repo); err != nil {
		return r, err
	}

	e.logf("registering %d nodes", cfg.Nodes)
	t0 := time.Now()
	if err := e.AddNodes(ctx, 0, cfg.Nodes, 50); err != nil {
		return r, fmt.Errorf("nodes: %w", err)
	}
	if err := e.WaitNodesReady(ctx, cfg.Nodes, cfg.Timeout); err != nil {
		return r, err
	}
	r.NodesReady = time.Since(t0)

	agents, err := e.trackAgents(ctx)
	if err != nil {
		return r, err
	}
	e.logf("enabling meshcni (the MeshCNI resource)")
	t0 = time.Now()
	if err := e.Enable(ctx); err != nil {
		return r, err
	}
	ds, hash, err := e.daemonSetHash(ctx, "", cfg.Timeout)
	if err != nil {
		return r, err
	}
	if mu := ds.Spec.UpdateStrategy.RollingUpdate; mu != nil && mu.MaxUnavailable != nil {
		r.MaxUnavailable = mu.MaxUnavailable.String()
	}
	lastReady, err := agents.wait(ctx, hash, cfg.Nodes, cfg.Timeout)
	if err != nil {
		return r, err
	}
	r.AgentsReady = lastReady.Sub(t0)
	running, err := e.waitPhase(ctx, v1alpha1.PhaseRunning, cfg.Timeout)
	if err != nil {
		return r, err
	}
	r.ReadyToPhase = running.Sub(lastReady)
	if err := e.WaitWebhook(ctx); err != nil {
		return r, err
	}

	for _, rate := range cfg.Rates {
		row, err := e.webhookAtRate(ctx, cfg, rate, &r.PodsCreated)
		r.Webhook = append(r.Webhook, row)
		if err != nil {
			return r, err
		}
	}
	if st, err := ReadProc(e.WebhookPID()); err == nil {
		r.WebhookRSS, r.WebhookHWM = st.RSS, st.HWM
	}
	if cfg.WebhookOnly {
		return r, nil
	}

	if rest := cfg.Pods - r.PodsCreated; rest > 0 {
		e.logf("creating %d more pods at %d/s", rest, cfg.FillRate)
		t0 = time.Now()
		res := CreatePods(ctx, e.Client, AppNamespace, "fill", rest, cfg.FillRate, cfg.Nodes)
		r.PodsCreated += res.Created
		r.FillFailed = res.Failed
		r.FillTime = time.Since(t0)
	}
	e.logf("waiting for kwok to run the %d pods", r.PodsCreated)
	deadline := time.Now().Add(cfg.Timeout)
	for {
		total, ready, _, err := PodSummary(ctx, e.Client, AppNamespace, "")
		if err != nil {
			return r, err
		}
		r.PodsRunning = ready
		if ready >= total || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Second)
	}

	e.logf("steady state for %v", cfg.Steady)
	before, err := e.APIMetrics(ctx)
	if err != nil {
		return r, err
	}
	c0, err := ReadProc(e.ControllerPID())
	if err != nil {
		return r, err
	}
	from := time.Now()
	time.Sleep(cfg.Steady)
	// The window holds at least one node heartbeat, else "no apply at
	// steady state" would prove nothing: at the 5-minute heartbeat period
	// a short window may see none (at the small run's 1 s, see
	// heartbeatDelay); bounded at ten windows.
	for {
		if r.Steady, _, err = e.apiWindow(ctx, before, from); err != nil {
			return r, err
		}
		if r.Steady.Requests["PATCH nodes status"] > 0 || time.Since(from) > 10*cfg.Steady {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	c1, err := ReadProc(e.ControllerPID())
	if err != nil {
		return r, err
	}
	r.ControllerIdle = CPUShare(c0, c1)
	if r.Steady, before, err = e.apiWindow(ctx, before, from); err != nil {
		return r, err
	}

	e.logf("changing a setting (logLevel) and timing the rollout")
	from = time.Now()
	if err := e.SetLogLevel(ctx, "debug"); err != nil {
		return r, err
	}
	_, newHash, err := e.daemonSetHash(ctx, hash, cfg.Timeout)
	if err != nil {
		return r, err
	}
	allNew, err := agents.wait(ctx, newHash, cfg.Nodes, cfg.Timeout)
	if err != nil {
		return r, err
	}
	r.RolloutNodes = allNew.Sub(from)
	running, err = e.waitPhase(ctx, v1alpha1.PhaseRunning, cfg.Timeout)
	if err != nil {
		return r, err
	}
	r.RolloutRunning = running.Sub(from)
	c2, err := ReadProc(e.ControllerPID())
	if err != nil {
		return r, err
	}
	r.ControllerRoll = CPUShare(c1, c2)
	r.ControllerRSS, r.ControllerHWM = c2.RSS, c2.HWM
	if r.Rollout, _, err = e.apiWindow(ctx, before, from); err != nil {
		return r, err
	}

	e.logf("webhook down: creating %d pods", cfg.DownPods)
	if note := e.StopWebhook(); note != "" {
		return r, fmt.Errorf("stopping the webhook: %s", note)
	}
	r.Down = CreatePods(ctx, e.Client, AppNamespace, "down", cfg.DownPods, 50, cfg.Nodes)
	r.DownP50, r.DownP99 = Quantile(r.Down.Latency, 0.5), Quantile(r.Down.Latency, 0.99)
	if dead := e.Exited(); len(dead) > 0 {
		return r, fmt.Errorf("died during the run: %s", strings.Join(dead, "; "))
	}
	return r, nil
}

// webhookAtRate creates pods at rate with the webhook, then as many
// without its configuration, and puts the configuration back.
func (e *Env) webhookAtRate(ctx context.Context, cfg Config, rate int, created *int) (WebhookRow, error) {
	row := WebhookRow{Rate: rate}
	n := max(1, int(float64(rate)*cfg.RateDuration.Seconds()))
	e.logf("webhook: %d creates at %d/s with the webhook, then without", n, rate)
	match := map[string]string{"name": "pods.webhook.meshcni.io"}
	const hist = "apiserver_admission_webhook_admission_duration_seconds"
	before, err := e.APIMetrics(ctx)
	if err != nil {
		return row, err
	}
	d0, err := ReadProc(e.WebhookPID())
	if err != nil {
		return row, err
	}
	if row.Direct, err = e.CallWebhook(ctx, n, rate); err != nil {
		return row, err
	}
	row.P50Direct, row.P99Direct = Quantile(row.Direct.Latency, 0.5), Quantile(row.Direct.Latency, 0.99)
	if row.Direct.Failed > 0 {
		e.logf("webhook alone: %d of %d reviews failed; the first: %v", row.Direct.Failed, row.Direct.Sent, row.Direct.Err)
	}
	w0, err := ReadProc(e.WebhookPID())
	if err != nil {
		return row, err
	}
	row.DirectCPU = CPUShare(d0, w0)
	a0, err := ReadProc(e.Cluster.APIServerPID())
	if err != nil {
		return row, err
	}
	row.With = CreatePods(ctx, e.Client, AppNamespace, fmt.Sprintf("w%d", rate), n, rate, cfg.Nodes)
	w1, err := ReadProc(e.WebhookPID())
	if err != nil {
		return row, err
	}
	a1, err := ReadProc(e.Cluster.APIServerPID())
	if err != nil {
		return row, err
	}
	row.WebhookCPU, row.APIServerWith = CPUShare(w0, w1), CPUShare(a0, a1)
	after, err := e.APIMetrics(ctx)
	if err != nil {
		return row, err
	}
	d := BucketDelta(Buckets(before, hist, match), Buckets(after, hist, match))
	row.AdmitP50, row.AdmitP99 = BucketBound(d, 0.5), BucketBound(d, 0.99)
	// A create that fails (the API server's own timeout on a starved
	// machine) is a finding, counted in the row, not the end of the run.
	*created += row.With.Created
	if err := e.RemoveWebhookConfiguration(ctx); err != nil {
		return row, err
	}
	if a0, err = ReadProc(e.Cluster.APIServerPID()); err != nil {
		return row, err
	}
	row.Without = CreatePods(ctx, e.Client, AppNamespace, fmt.Sprintf("b%d", rate), n, rate, cfg.Nodes)
	if a1, err = ReadProc(e.Cluster.APIServerPID()); err != nil {
		return row, err
	}
	row.APIServerWithout = CPUShare(a0, a1)
	*created += row.Without.Created
	if err := e.RestoreWebhookConfiguration(ctx); err != nil {
		return row, err
	}
	row.P50With, row.P99With = Quantile(row.With.Latency, 0.5), Quantile(row.With.Latency, 0.99)
	row.P50Without, row.P99Without = Quantile(row.Without.Latency, 0.5), Quantile(row.Without.Latency, 0.99)
	return row, nil
}

// Markdown renders the report as docs/performance.md's "Scale" tables.
func (r *Report) Markdown() string {
	var b strings.Builder
	c := r.Config
	fmt.Fprintf(&b, "%d kwok nodes, %d app pods (%d Ready); load average %s; started %s\n\n",
		c.Nodes, r.PodsCreated, r.PodsRunning, r.Load, r.Started.UTC().Format(time.RFC3339))
	b.WriteString("| rate/s | webhook alone p50 / p99 (reviews, patched/sent) | its CPU | pod create p50 / p99 with the webhook (created, converted, failed) | without it (created, failed) | added p50 / p99 | API server's call p50 / p99 (bucket bound) | webhook CPU during creates | API server CPU with / without |\n")
	b.WriteString("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, w := range r.Webhook {
		failed := ""
		if w.Direct.Failed > 0 {
			failed = fmt.Sprintf(", %d failed", w.Direct.Failed)
		}
		fmt.Fprintf(&b, "| %d | %s / %s (%d/%d%s) | %.3f cores | %s / %s (%d, %d, %d) | %s / %s (%d, %d) | %s / %s | ≤ %s / ≤ %s | %.3f cores | %.2f / %.2f cores |\n",
			w.Rate, ms(w.P50Direct), ms(w.P99Direct), w.Direct.Patched, w.Direct.Sent, failed, w.DirectCPU,
			ms(w.P50With), ms(w.P99With), w.With.Created, w.With.Converted, w.With.Failed,
			ms(w.P50Without), ms(w.P99Without), w.Without.Created, w.Without.Failed,
			msSigned(w.P50With-w.P50Without), msSigned(w.P99With-w.P99Without),
			bound(w.AdmitP50), bound(w.AdmitP99), w.WebhookCPU, w.APIServerWith, w.APIServerWithout)
	}
	fmt.Fprintf(&b, "\n| measure | value |\n| --- | ---: |\n")
	row := func(k, format string, args ...any) {
		fmt.Fprintf(&b, "| %s | "+format+" |\n", append([]any{k}, args...)...)
	}
	row("webhook memory (VmRSS / VmHWM)", "%s / %s", mib(r.WebhookRSS), mib(r.WebhookHWM))
	if c.WebhookOnly {
		return b.String()
	}
	row("webhook down: pods created / kept istio-init / failed", "%d of %d / %d / %d", r.Down.Created, c.DownPods, r.Down.Created-r.Down.Converted, r.Down.Failed)
	row("webhook down: create p50 / p99", "%s / %s", ms(r.DownP50), ms(r.DownP99))
	row("nodes registered → Ready (kwok)", "%s", secs(r.NodesReady))
	row("MeshCNI created → every agent Ready", "%s", secs(r.AgentsReady))
	row("last agent Ready → phase Running", "%s", secs(r.ReadyToPhase))
	row("settings change → every node's agent Ready with it (maxUnavailable "+r.MaxUnavailable+")", "%s", secs(r.RolloutNodes))
	row("settings change → phase Running", "%s", secs(r.RolloutRunning))
	row("controller VmRSS / VmHWM (after the rollout)", "%s / %s", mib(r.ControllerRSS), mib(r.ControllerHWM))
	row("replicas restarted after they exited (leader / webhook)", "%d / %d", r.Restarts[0], r.Restarts[1])
	row("controller CPU, steady / during the rollout", "%.3f / %.3f cores", r.ControllerIdle, r.ControllerRoll)
	if r.FillTime > 0 {
		row("app pods created at the fill rate", "%d/s asked, %s, %d failed", c.FillRate, secs(r.FillTime), r.FillFailed)
	}
	for _, w := range []struct {
		name string
		w    APIWindow
	}{{"steady state", r.Steady}, {"rollout", r.Rollout}} {
		total := 0.0
		for _, v := range w.w.Requests {
			total += v
		}
		watches := 0.0
		for _, v := range w.w.Watches {
			watches += v
		}
		perNode := 0.0
		if c.Nodes > 0 && w.w.Seconds > 0 {
			perNode = total / w.w.Seconds / float64(c.Nodes)
		}
		row("API requests, "+w.name, "%.0f in %.0f s = %.1f/s, %.4f/s per node; top: %s", total, w.w.Seconds, total/math.Max(w.w.Seconds, 1e-9), perNode, top(w.w.Requests, 5))
		row("API watches open, "+w.name, "%.0f (%s)", watches, top(w.w.Watches, 4))
	}
	return b.String()
}

func top(m map[string]float64, n int) string {
	type kv struct {
		k string
		v float64
	}
	var l []kv
	for k, v := range m {
		l = append(l, kv{strings.TrimSpace(k), v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v || l[i].v == l[j].v && l[i].k < l[j].k })
	var parts []string
	for i, e := range l {
		if i == n {
			break
		}
		parts = append(parts, fmt.Sprintf("%s %.0f", e.k, e.v))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
func msSigned(d time.Duration) string {
	return fmt.Sprintf("%+.1f ms", float64(d)/1e6)
}
func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }
func mib(b uint64) string         { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }
func bound(s float64) string {
	switch {
	case math.IsNaN(s):
		return "–"
	case math.IsInf(s, 1):
		return "∞"
	}
	return fmt.Sprintf("%g ms", s*1000)
}

// loadavg is the machine's 1, 5 and 15 minute load averages (2 cores,
// shared with other work: the figures are only as good as this).
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
