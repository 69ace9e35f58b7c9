//go:build integration || scale

package scale

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/charts"
	"github.com/meshcni/meshcni/internal/chart"
	"github.com/meshcni/meshcni/internal/controller"
	"github.com/meshcni/meshcni/test/daemon"
	"github.com/meshcni/meshcni/test/kubeharness"
)

// Namespace is the release namespace: the controller's, the webhook's and
// the node side's.
const Namespace = chart.DefaultNamespace

// webhookHost is the name in the webhook's certificate (the controller's
// --service and --namespace), which the API server resolves to 127.0.0.1
// in its own mount namespace (see apiserverWrapper).
const webhookHost = "meshcni-controller." + Namespace + ".svc"

// Options size the environment.
type Options struct {
	// Repo is the meshcni checkout whose cmd/ binaries run.
	Repo string
	// Progress gets one line per step; nil: discarded.
	Progress io.Writer
	// NodeHeartbeat is how often, on average, kwok updates each node's
	// status as a kubelet would; 0: 5 minutes (the kubelet's default).
	NodeHeartbeat time.Duration
}

// Env is one running environment. Everything it starts is a process it
// stops by PID in Stop, and everything it writes is under Dir, which Stop
// removes.
type Env struct {
	Cluster *kubeharness.Cluster
	// Client has no client-side rate limit: the load generators pace
	// themselves.
	Client kubernetes.Interface
	Config *rest.Config
	Dyn    dynamic.Interface
	// Dir holds the built binaries, kubeconfigs, kwok's config and the
	// processes' logs.
	Dir string

	opts        Options
	bin         map[string]string // name → path
	kcm, sched  *daemon.Proc
	kwok        *daemon.Proc
	controller  *replica
	webhook     *replica
	webhookPort int
	// controllerLimit is the chart's memory limit of a controller
	// replica, in bytes (startController).
	controllerLimit int64
	// mwc is the MutatingWebhookConfiguration as installed (with the CA
	// bundle once the webhook patched it), to restore after a baseline.
	mwc *admissionregistrationv1.MutatingWebhookConfiguration
}

func (e *Env) logf(format string, args ...any) {
	if e.opts.Progress != nil {
		fmt.Fprintf(e.opts.Progress, "%s scale: "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
}

// Start brings everything up: the API server, kube-controller-manager,
// kube-scheduler, kwok, and meshcni's controller and webhook installed
// from the chart (the MeshCNI resource is not created yet: Enable does
// that). On error everything started is stopped.
func Start(ctx context.Context, opts Options) (_ *Env, err error) {
	dir, err := os.MkdirTemp("", "meshcni-scale-")
	if err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, opts: opts, bin: map[string]string{}}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\n%s", err, e.LogTail(20))
			e.Stop()
		}
	}()
	if err := LoadIstioTemplate(opts.Repo); err != nil {
		return e, err
	}
	cacheBin := filepath.Join(cacheDir(), "bin")
	for _, name := range []string{"kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok"} {
		p := filepath.Join(cacheBin, name)
		if _, err := os.Stat(p); err != nil {
			return e, fmt.Errorf("%s not found in %s: run hack/install-deps.sh and hack/build-kube.sh cluster", name, cacheBin)
		}
		e.bin[name] = p
	}
	e.logf("building meshcni-controller")
	if err := e.build(ctx); err != nil {
		return e, err
	}
	wrapDir, err := e.apiserverWrapper()
	if err != nil {
		return e, err
	}
	e.logf("starting kube-apiserver and etcd")
	e.Cluster, err = kubeharness.Start(ctx, kubeharness.Options{BinDir: wrapDir, TempDir: dir, ExtraAPIServerArgs: []string{
		// The load generators create thousands of pods a second at most;
		// the defaults (400/200) would queue them, which is not what a
		// webhook's latency should be measured against.
		"--max-requests-inflight=2000", "--max-mutating-requests-inflight=1000",
	}})
	if err != nil {
		return e, err
	}
	e.Config = rest.CopyConfig(e.Cluster.Config)
	e.Config.QPS, e.Config.Burst = -1, 0
	if e.Client, err = kubernetes.NewForConfig(e.Config); err != nil {
		return e, err
	}
	if e.Dyn, err = dynamic.NewForConfig(e.Config); err != nil {
		return e, err
	}
	if err := e.startKube(); err != nil {
		return e, err
	}
	if err := e.install(ctx); err != nil {
		return e, err
	}
	if err := e.StartController(ctx); err != nil {
		return e, err
	}
	if err := e.StartWebhook(ctx); err != nil {
		return e, err
	}
	return e, nil
}

func cacheDir() string {
	if d := os.Getenv("MESHCNI_CACHE"); d != "" {
		return d
	}
	return kubeharness.DefaultCacheDir
}

// build compiles meshcni-controller from the tree, with go's
// defaults, so that the build cache of the suite's own compiles serves
// them.
func (e *Env) build(ctx context.Context) error {
	out := filepath.Join(e.Dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out+"/", "./cmd/meshcni-controller")
	cmd.Dir = e.opts.Repo
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, b)
	}
	e.bin["meshcni-controller"] = filepath.Join(out, "meshcni-controller")
	return nil
}

// apiserverWrapper returns a directory with etcd and a kube-apiserver that
// runs the real one in a private mount namespace whose /etc/hosts also
// names webhookHost as 127.0.0.1: the API server calls the webhook by its
// Service's name, as in a cluster, and the webhook's own certificate is
// for that name, while nothing on the host changes. The wrapper execs in
// place (unshare without --fork, then sh's exec), so the PID the harness
// stops is the API server's.
func (e *Env) apiserverWrapper() (string, error) {
	dir := filepath.Join(e.Dir, "apiserver-wrapper")
	if err := os.Mkdir(dir, 0o700); err != nil {
		return "", err
	}
	hosts := filepath.Join(dir, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n::1 localhost\n127.0.0.1 "+webhookHost+"\n"), 0o644); err != nil {
		return "", err
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return "", err
	}
	script := fmt.Sprintf("#!/bin/sh\nexec %s --mount --propagation private /bin/sh -c 'mount --bind %s /etc/hosts && exec \"$0\" \"$@\"' %s \"$@\"\n",
		unshare, hosts, e.bin["kube-apiserver"])
	if err := os.WriteFile(filepath.Join(dir, "kube-apiserver"), []byte(script), 0o755); err != nil {
		return "", err
	}
	return dir, os.Symlink(e.bin["etcd"], filepath.Join(dir, "etcd"))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (e *Env) start(name string, argv ...string) (*daemon.Proc, error) {
	return daemon.Start(name, filepath.Join(e.Dir, name+".log"), argv...)
}

// startController runs a meshcni-controller replica as the chart's pod
// runs it: in its container it reads its memory limit from its cgroup
// and sets GOMEMLIMIT to a share of it (controller.MemLimitRatio); these
// processes run in no such cgroup, so they are given that GOMEMLIMIT.
func (e *Env) startController(name string, argv ...string) (*replica, error) {
	if e.controllerLimit <= 0 {
		return nil, errors.New("the chart's controller memory limit is unknown (install first)")
	}
	env := []string{"GOMEMLIMIT=" + strconv.FormatInt(e.controllerGoMemLimit(), 10)}
	return startReplica(name, filepath.Join(e.Dir, name+".log"), env, argv...)
}

// controllerGoMemLimit is the GOMEMLIMIT, in bytes, a controller replica
// gets from its container's limit.
func (e *Env) controllerGoMemLimit() int64 {
	return int64(float64(e.controllerLimit) * controller.MemLimitRatio)
}

// noteControllerLimit keeps the memory limit of the chart's controller
// Deployment (its one container's resources.limits.memory).
func (e *Env) noteControllerLimit(d *unstructured.Unstructured) error {
	containers, _, err := unstructured.NestedSlice(d.Object, "spec", "template", "spec", "containers")
	if err != nil || len(containers) != 1 {
		return fmt.Errorf("deployment %s: want one container (%v)", d.GetName(), err)
	}
	c, _ := containers[0].(map[string]any)
	limit, _, err := unstructured.NestedString(c, "resources", "limits", "memory")
	if err != nil || limit == "" {
		return fmt.Errorf("deployment %s: no memory limit (%v)", d.GetName(), err)
	}
	q, err := resource.ParseQuantity(limit)
	if err != nil {
		return fmt.Errorf("deployment %s: memory limit: %w", d.GetName(), err)
	}
	e.controllerLimit = q.Value()
	return nil
}

// startKube runs kube-controller-manager (only the DaemonSet controller:
// it creates and rolls the agent pods), kube-scheduler (it binds them) and
// kwok (it plays the kubelets of the nodes annotated for it).
func (e *Env) startKube() error {
	admin := e.Cluster.AdminKubeconfig
	ports := make([]int, 3)
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return err
		}
		ports[i] = p
	}
	var err error
	e.logf("starting kube-controller-manager, kube-scheduler and kwok")
	e.kcm, err = e.start("kube-controller-manager", e.bin["kube-controller-manager"],
		"--kubeconfig="+admin, "--authentication-kubeconfig="+admin, "--authorization-kubeconfig="+admin,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports[0]), "--leader-elect=false",
		"--controllers=daemonset", "--use-service-account-credentials=false",
		// As a large cluster's: the defaults (20 QPS) would make the
		// DaemonSet controller the bottleneck of a 2,000-node rollout.
		"--kube-api-qps=200", "--kube-api-burst=400", "--concurrent-daemonset-syncs=2",
		"--profiling=false", "--v=1")
	if err != nil {
		return err
	}
	e.sched, err = e.start("kube-scheduler", e.bin["kube-scheduler"],
		"--kubeconfig="+admin, "--authentication-kubeconfig="+admin, "--authorization-kubeconfig="+admin,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(ports[1]), "--leader-elect=false",
		"--kube-api-qps=200", "--kube-api-burst=400", "--profiling=false", "--v=1")
	if err != nil {
		return err
	}
	stages := filepath.Join(e.Dir, "kwok.yaml")
	hb := e.opts.NodeHeartbeat
	if hb == 0 {
		hb = 5 * time.Minute
	}
	if err := os.WriteFile(stages, []byte(kwokStages+kwokHeartbeat(hb)), 0o644); err != nil {
		return err
	}
	e.kwok, err = e.start("kwok", e.bin["kwok"],
		"--kubeconfig="+admin, "--config="+stages,
		"--manage-all-nodes=false", "--manage-nodes-with-annotation-selector="+kwokAnnotation+"=fake",
		"--server-address=127.0.0.1:"+strconv.Itoa(ports[2]),
		"--node-lease-duration-seconds=0")
	return err
}

// install applies the CRD and the chart's controller release (RBAC,
// service accounts, webhook configuration, policies), without its
// Deployments: their containers are the processes StartController and
// StartWebhook run. The webhook configuration calls webhookHost by URL
// instead of through a Service (nothing here routes Services).
func (e *Env) install(ctx context.Context) error {
	e.logf("installing the chart's objects")
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(e.Client.Discovery()))
	crd := &unstructured.Unstructured{}
	data, err := charts.FS.ReadFile("meshcni/" + chart.CRDFile)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, &crd.Object); err != nil {
		return err
	}
	m, err := chart.Render(nil, Namespace, "meshcni")
	if err != nil {
		return err
	}
	// helm install --create-namespace: the chart does not render it.
	if err := EnsureNamespace(ctx, e.Client, Namespace); err != nil {
		return err
	}
	objs := append([]*unstructured.Unstructured{crd}, m.Objects...)
	for _, obj := range objs {
		switch obj.GetKind() {
		case "Deployment":
			if err := e.noteControllerLimit(obj); err != nil {
				return err
			}
			continue
		case "Service":
			continue
		case "MutatingWebhookConfiguration":
			if err := toURL(obj, e); err != nil {
				return err
			}
		}
		gvk := obj.GroupVersionKind()
		var mapping, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		for i := 0; err != nil && i < 100; i++ { // a CRD just applied takes a moment to be served
			mapper.Reset()
			time.Sleep(100 * time.Millisecond)
			mapping, err = mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", gvk, err)
		}
		var rc dynamic.ResourceInterface = e.Dyn.Resource(mapping.Resource)
		if obj.GetNamespace() != "" {
			rc = e.Dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace())
		}
		if _, err := rc.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "helm", Force: true}); err != nil {
			return fmt.Errorf("apply %s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
	}
	// The MeshCNI resource is served once the CRD is established.
	for i := 0; ; i++ {
		_, err := e.Dyn.Resource(v1alpha1.GroupVersionResource).List(ctx, metav1.ListOptions{})
		if err == nil {
			return nil
		}
		if i == 200 {
			return fmt.Errorf("MeshCNI not served: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// toURL points the chart's webhook at https://webhookHost:port/path.
func toURL(obj *unstructured.Unstructured, e *Env) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	e.webhookPort = port
	hooks, _, _ := unstructured.NestedSlice(obj.Object, "webhooks")
	for _, h := range hooks {
		hm := h.(map[string]any)
		path, _, _ := unstructured.NestedString(hm, "clientConfig", "service", "path")
		if err := unstructured.SetNestedMap(hm, map[string]any{"url": fmt.Sprintf("https://%s:%d%s", webhookHost, port, path)}, "clientConfig"); err != nil {
			return err
		}
	}
	return unstructured.SetNestedSlice(obj.Object, hooks, "webhooks")
}

// serviceAccountKubeconfig writes a kubeconfig with a token of the
// chart's service account name: the process runs with exactly the chart's
// rights.
func (e *Env) serviceAccountKubeconfig(ctx context.Context, name string) (string, error) {
	token, err := e.Cluster.IssueToken(ctx, Namespace, name, 12*time.Hour)
	if err != nil {
		return "", err
	}
	path := filepath.Join(e.Dir, name+".kubeconfig")
	return path, e.Cluster.WriteTokenKubeconfig(path, token)
}

// StartController runs the chart's first meshcni-controller replica, the
// one that takes the lease and reconciles (and keeps the certificate). It
// serves no webhook here, so that the webhook's figures and its "down"
// step are those of the second replica alone (StartWebhook).
func (e *Env) StartController(ctx context.Context) error {
	kc, err := e.serviceAccountKubeconfig(ctx, "meshcni-controller")
	if err != nil {
		return err
	}
	e.logf("starting meshcni-controller (leader)")
	e.controller, err = e.startController("meshcni-controller", e.bin["meshcni-controller"],
		"--kubeconfig="+kc, "--namespace="+Namespace, "--agent-image=ghcr.io/meshcni/meshcni-agent:0.1.0",
		"--health-addr=", "--webhook-addr=", "--console-addr=", "--leader-elect=true", "--log-level=info")
	if err != nil {
		return err
	}
	return e.waitLeader(ctx)
}

// waitLeader waits until a replica holds the controller's Lease, so that
// the second replica (the webhook) starts as a standby.
func (e *Env) waitLeader(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		l, err := e.Client.CoordinationV1().Leases(Namespace).Get(ctx, controller.LeaseName, metav1.GetOptions{})
		if err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != "" {
			return nil
		}
		if e.controller.Exited() {
			return fmt.Errorf("meshcni-controller exited: %s", e.controller.Tail(20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no meshcni-controller holds the lease %s (last: %v)", controller.LeaseName, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// WebhookArgv is how the webhook runs: the chart's second
// meshcni-controller replica, a standby while the first leads, which
// serves the webhook on the port the webhook configuration calls.
func (e *Env) WebhookArgv(kubeconfig string) []string {
	return []string{e.bin["meshcni-controller"],
		"--kubeconfig=" + kubeconfig, "--namespace=" + Namespace, "--agent-image=ghcr.io/meshcni/meshcni-agent:0.1.0",
		"--webhook-addr=127.0.0.1:" + strconv.Itoa(e.webhookPort), "--console-addr=", "--health-addr=",
		"--leader-elect=true", "--log-level=info"}
}

// StartWebhook runs the webhook (the standby replica).
func (e *Env) StartWebhook(ctx context.Context) error {
	kc, err := e.serviceAccountKubeconfig(ctx, "meshcni-controller")
	if err != nil {
		return err
	}
	e.logf("starting meshcni-controller (standby, the webhook)")
	e.webhook, err = e.startController("meshcni-controller-standby", e.WebhookArgv(kc)...)
	return err
}

// WaitWebhook waits until the API server calls the webhook: a dry-run
// create of an Istio-injected pod comes back converted. The webhook
// converts only while the MeshCNI resource is enabled, so this follows
// Enable.
func (e *Env) WaitWebhook(ctx context.Context) error {
	if err := EnsureNamespace(ctx, e.Client, AppNamespace); err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		p := IstioPod(AppNamespace, "probe", "")
		got, err := e.Client.CoreV1().Pods(AppNamespace).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && Converted(got) {
			break
		}
		if e.webhook.Exited() {
			return fmt.Errorf("meshcni-controller (standby, the webhook) exited: %s", e.webhook.Tail(20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the API server does not call the webhook (last: %v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var err error
	e.mwc, err = e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "meshcni-webhook", metav1.GetOptions{})
	return err
}

// StopWebhook stops the webhook process (its configuration stays).
func (e *Env) StopWebhook() string {
	note := e.webhook.Stop(10 * time.Second)
	e.webhook = nil
	return note
}

// WebhookPID is the webhook's process ID (0 when stopped).
func (e *Env) WebhookPID() int {
	if e.webhook == nil {
		return 0
	}
	return e.webhook.PID()
}

// ControllerPID is meshcni-controller's process ID.
func (e *Env) ControllerPID() int { return e.controller.PID() }

// Restarts counts the times each replica (the leader, the webhook) was
// started again after it exited.
func (e *Env) Restarts() (controller, webhook int) {
	if e.controller != nil {
		controller = e.controller.Restarts()
	}
	if e.webhook != nil {
		webhook = e.webhook.Restarts()
	}
	return controller, webhook
}

// RemoveWebhookConfiguration deletes the webhook configuration (for a
// baseline without the webhook) and waits until the API server stops
// calling it; RestoreWebhookConfiguration puts it back as it was.
func (e *Env) RemoveWebhookConfiguration(ctx context.Context) error {
	err := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(ctx, e.mwc.Name, metav1.DeleteOptions{})
	if err != nil {
		return err
	}
	return e.waitConverted(ctx, false)
}

// RestoreWebhookConfiguration re-creates the configuration removed by
// RemoveWebhookConfiguration and waits until the API server calls it.
func (e *Env) RestoreWebhookConfiguration(ctx context.Context) error {
	m := e.mwc.DeepCopy()
	m.ResourceVersion, m.UID, m.CreationTimestamp, m.ManagedFields = "", "", metav1.Time{}, nil
	if _, err := e.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, m, metav1.CreateOptions{}); err != nil {
		return err
	}
	return e.waitConverted(ctx, true)
}

func (e *Env) waitConverted(ctx context.Context, want bool) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		p := IstioPod(AppNamespace, "probe", "")
		got, err := e.Client.CoreV1().Pods(AppNamespace).Create(ctx, p, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err == nil && Converted(got) == want {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("webhook called: want %v (last error %v)", want, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops every process by PID (the webhook and controller first, the
// API server last) and removes Dir. It returns notes on processes that had
// to be killed or had died early.
func (e *Env) Stop() []string {
	var notes []string
	for _, r := range []*replica{e.webhook, e.controller} {
		if r == nil {
			continue
		}
		if n := r.Stop(10 * time.Second); n != "" {
			notes = append(notes, n)
		}
	}
	for _, p := range []*daemon.Proc{e.kwok, e.sched, e.kcm} {
		if p == nil {
			continue
		}
		if n := p.Stop(10 * time.Second); n != "" {
			notes = append(notes, n)
		}
	}
	e.webhook, e.controller, e.kwok, e.sched, e.kcm = nil, nil, nil, nil, nil
	if e.Cluster != nil {
		if err := e.Cluster.Stop(); err != nil {
			notes = append(notes, "kubeharness: "+err.Error())
		}
	}
	if err := os.RemoveAll(e.Dir); err != nil {
		notes = append(notes, err.Error())
	}
	return notes
}

// LogTail is the last n lines of every process's log, for failures.
func (e *Env) LogTail(n int) string {
	var b strings.Builder
	for _, p := range []*daemon.Proc{e.kcm, e.sched, e.kwok} {
		if p != nil {
			fmt.Fprintf(&b, "--- %s ---\n%s\n", p.Name, p.Tail(n))
		}
	}
	for _, r := range []*replica{e.controller, e.webhook} {
		if r != nil {
			fmt.Fprintf(&b, "--- %s ---\n%s\n", r.name, r.Tail(n))
		}
	}
	if e.Cluster != nil {
		b.WriteString(e.Cluster.LogTail(n))
	}
	return b.String()
}

// Exited names the processes that have died.
func (e *Env) Exited() []string {
	var out []string
	for _, p := range []*daemon.Proc{e.kcm, e.sched, e.kwok} {
		if p != nil && p.Exited() {
			out = append(out, p.Name+": "+p.Tail(5))
		}
	}
	for _, r := range []*replica{e.controller, e.webhook} {
		if r != nil && r.Exited() {
			out = append(out, r.name+": "+r.Tail(5))
		}
	}
	return out
}

// EnsureNamespace creates a namespace if missing.
func EnsureNamespace(ctx context.Context, c kubernetes.Interface, name string) error {
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// NodeName is the name of simulated node i.
func NodeName(i int) string { return fmt.Sprintf("kwok-node-%05d", i) }

// AddNodes registers nodes [from, to) for kwok to play, with conc
// creates in flight.
func (e *Env) AddNodes(ctx context.Context, from, to, conc int) error {
	return parallel(ctx, from, to, conc, func(i int) error {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name:        NodeName(i),
			Annotations: map[string]string{kwokAnnotation: "fake"},
			Labels:      map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": NodeName(i), "type": "kwok"},
		}}
		n.Status.Capacity = corev1.ResourceList{corev1.ResourcePods: resource.MustParse("1M"), corev1.ResourceCPU: resource.MustParse("1k"), corev1.ResourceMemory: resource.MustParse("1Ti")}
		n.Status.Allocatable = n.Status.Capacity
		_, err := e.Client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil
		}
		return err
	})
}

// WaitNodesReady waits until n nodes are Ready (kwok's stage).
func (e *Env) WaitNodesReady(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		l, err := e.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return err
		}
		ready := 0
		for _, node := range l.Items {
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
					ready++
				}
			}
		}
		if ready >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d nodes ready after %v", ready, n, timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// parallel runs f(i) for i in [from, to) with conc in flight, and returns
// the first error (after the rest stop being started).
func parallel(ctx context.Context, from, to, conc int, f func(int) error) error {
	sem := make(chan struct{}, conc)
	errc := make(chan error, 1)
	done := make(chan struct{})
	var firstErr error
	go func() {
		for err := range errc {
			if firstErr == nil {
				firstErr = err
			}
		}
		close(done)
	}()
	for i := from; i < to && ctx.Err() == nil; i++ {
		sem <- struct{}{}
		if len(errc) > 0 {
			<-sem
			break
		}
		go func(i int) {
			defer func() { <-sem }()
			if err := f(i); err != nil {
				select {
				case errc <- err:
				default:
				}
			}
		}(i)
	}
	for range conc {
		sem <- struct{}{}
	}
	close(errc)
	<-done
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// MeshCNI returns the MeshCNI resource.
func (e *Env) MeshCNI(ctx context.Context) (*v1alpha1.MeshCNI, error) {
	u, err := e.Dyn.Resource(v1alpha1.GroupVersionResource).Get(ctx, v1alpha1.Name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	mc := &v1alpha1.MeshCNI{}
	return mc, runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, mc)
}

// Enable creates the MeshCNI resource with the chart's defaults.
func (e *Env) Enable(ctx context.Context) error {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.SchemeGroupVersion.String(), "kind": v1alpha1.Kind,
		"metadata": map[string]any{"name": v1alpha1.Name},
		"spec":     map[string]any{"enabled": true},
	}}
	_, err := e.Dyn.Resource(v1alpha1.GroupVersionResource).Create(ctx, u, metav1.CreateOptions{})
	return err
}

// SetLogLevel changes a setting the agents run with (their ConfigMap's
// hash moves, so the DaemonSet rolls).
func (e *Env) SetLogLevel(ctx context.Context, level string) error {
	patch := fmt.Appendf(nil, `{"spec":{"logLevel":%q}}`, level)
	_, err := e.Dyn.Resource(v1alpha1.GroupVersionResource).Patch(ctx, v1alpha1.Name, "application/merge-patch+json", patch, metav1.PatchOptions{})
	return err
}

// APIMetrics scrapes the API server's /metrics.
func (e *Env) APIMetrics(ctx context.Context) ([]Sample, error) {
	body, err := e.Client.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	return ParseMetrics(string(body))
}

// ReadProc reads a process's CPU time and memory from /proc.
func ReadProc(pid int) (ProcStat, error) {
	if pid == 0 {
		return ProcStat{}, errors.New("no process")
	}
	now := time.Now()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcStat{}, err
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcStat{}, err
	}
	// USER_HZ is 100 on every Linux ABI Go supports.
	cpu, err := ParseProcStat(string(stat), 100)
	if err != nil {
		return ProcStat{}, err
	}
	rss, hwm, err := ParseProcStatus(string(status))
	if err != nil {
		return ProcStat{}, err
	}
	return ProcStat{CPU: cpu, RSS: rss, HWM: hwm, Taken: now}, nil
}
