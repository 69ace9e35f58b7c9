package controller

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// LeaseName is the leader-election Lease in the controller's namespace.
const LeaseName = "meshcni-controller"

// CommandOptions are meshcni-controller's flags (meshcni-webhook's folded
// in).
type CommandOptions struct {
	Kubeconfig           string
	Namespace            string
	AgentImage           string
	HealthAddr           string
	WebhookAddr          string
	ConsoleAddr          string
	Service              string
	Secret               string
	WebhookConfiguration string
	RotateInterval       time.Duration
	LogLevel             string
	LeaderElect          bool
	// DNSNames override the Service's names in the certificate (tests).
	DNSNames []string
	// WebhookListener and ConsoleListener, when set, are used instead of
	// the addresses (tests, which need the port before the start).
	WebhookListener, ConsoleListener net.Listener
}

// NewCommand is meshcni-controller's command line.
func NewCommand(stderr io.Writer) *cobra.Command {
	o := &CommandOptions{}
	cmd := &cobra.Command{
		Use:           "meshcni-controller",
		Short:         "Keep the meshcni agents in line with the MeshCNI resource, report their rollout, serve the injection webhook and the console",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.Run(cmd.Context(), stderr)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	f.StringVar(&o.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the release namespace: the node side, the lease, the Service and the certificate's Secret (default $POD_NAMESPACE)")
	f.StringVar(&o.AgentImage, "agent-image", os.Getenv("MESHCNI_AGENT_IMAGE"), "agent image when the MeshCNI's spec.image is empty (default $MESHCNI_AGENT_IMAGE)")
	f.StringVar(&o.HealthAddr, "health-addr", ":8081", "serves /healthz, /readyz and /metrics over HTTP; empty: off")
	f.StringVar(&o.WebhookAddr, "webhook-addr", ":9443", "serves the injection webhook (/mutate) over HTTPS; empty: off")
	f.StringVar(&o.ConsoleAddr, "console-addr", ":9444", "serves the console over HTTPS; empty: off")
	f.StringVar(&o.Service, "service", "meshcni-controller", "the controller's Service, which the API server calls (names the certificate)")
	f.StringVar(&o.Secret, "secret", "meshcni-controller-tls", "Secret holding the CA and the serving certificate")
	f.StringVar(&o.WebhookConfiguration, "webhook-configuration", "meshcni-webhook", "MutatingWebhookConfiguration whose caBundle the leader keeps")
	f.DurationVar(&o.RotateInterval, "rotate-interval", time.Hour, "how often the leader checks and renews the certificates")
	f.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&o.LeaderElect, "leader-elect", true, "reconcile and write the certificate only while holding the Lease "+LeaseName+" (for more than one replica); every replica serves")
	return cmd
}

// Validate checks the options before anything starts.
func (o *CommandOptions) Validate() error {
	var errs []error
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace (or $POD_NAMESPACE) is required"))
	}
	if o.RotateInterval < time.Second {
		errs = append(errs, fmt.Errorf("--rotate-interval %v: at least 1s", o.RotateInterval))
	}
	for flag, v := range map[string]string{"--service": o.Service, "--secret": o.Secret, "--webhook-configuration": o.WebhookConfiguration} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", flag))
		}
	}
	return errors.Join(errs...)
}

// Run is the whole controller until ctx ends: every replica serves the
// webhook, the console and its health; the leader reconciles and keeps
// the certificate.
func (o *CommandOptions) Run(ctx context.Context, stderr io.Writer) error {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return fmt.Errorf("--log-level %q: %w", o.LogLevel, err)
	}
	if err := o.Validate(); err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	tuneGC(log)
	cfg, err := restConfig(o.Kubeconfig)
	if err != nil {
		return err
	}
	c, err := New(cfg, Options{Namespace: o.Namespace, DefaultImage: o.AgentImage, Log: log})
	if err != nil {
		return err
	}
	srv, err := NewServer(cfg, ServerOptions{Namespace: o.Namespace, Service: o.Service, Secret: o.Secret,
		WebhookConfiguration: o.WebhookConfiguration, DNSNames: o.DNSNames, Log: log})
	if err != nil {
		return err
	}
	webhookLn, err := listen(o.WebhookListener, o.WebhookAddr, "--webhook-addr")
	if err != nil {
		return err
	}
	consoleLn, err := listen(o.ConsoleListener, o.ConsoleAddr, "--console-addr")
	if err != nil {
		if webhookLn != nil {
			webhookLn.Close()
		}
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if o.HealthAddr != "" {
		if err := serveHealth(ctx, o.HealthAddr, srv.Ready); err != nil {
			return err
		}
	}
	served := make(chan error, 1)
	go func() {
		served <- srv.Serve(ctx, webhookLn, consoleLn)
		cancel() // a replica that cannot serve stops leading too, and exits
	}()
	lead := func(ctx context.Context) error {
		go srv.MaintainCerts(ctx, o.RotateInterval)
		return c.Run(ctx)
	}
	if !o.LeaderElect {
		err = lead(ctx)
	} else {
		err = RunAsLeader(ctx, cfg, o.Namespace, log, lead)
	}
	cancel()
	if serr := <-served; err == nil {
		err = serr
	}
	return err
}

func listen(ln net.Listener, addr, flag string) (net.Listener, error) {
	if ln != nil || addr == "" {
		return ln, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", flag, addr, err)
	}
	return l, nil
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config: %w (outside a pod pass --kubeconfig)", err)
	}
	return cfg, nil
}

// serveHealth answers while the process runs: /healthz (liveness: a
// standby replica is healthy too), /readyz (ready says whether this
// replica can answer the webhook and the console: the Service sends them
// only to ready replicas) and /metrics (the default Prometheus registry).
func serveHealth(ctx context.Context, addr string, ready func() error) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--health-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.Handle("/metrics", promhttp.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return nil
}

// RunAsLeader runs run while this process holds the Lease; it returns
// when ctx ends, or with an error when leadership is lost (the pod
// restarts and stands by, rather than two leaders acting at once).
func RunAsLeader(ctx context.Context, cfg *rest.Config, namespace string, log *slog.Logger, run func(context.Context) error) error {
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	id, err := os.Hostname()
	if err != nil {
		return err
	}
	id += "_" + time.Now().Format("150405.000000")
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: LeaseName},
		Client:     kube.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	// RunOrDie starts OnStartedLeading in a goroutine and returns without
	// waiting for it: wait here, so that run has ended when we return.
	var leading atomic.Bool
	ran := make(chan error, 1)
	lost := false
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		ReleaseOnCancel: true,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				leading.Store(true)
				log.Info("leading", "identity", id)
				ran <- run(ctx)
			},
			OnStoppedLeading: func() {
				if ctx.Err() == nil {
					lost = true
				}
			},
		},
	})
	if leading.Load() {
		if err := <-ran; err != nil {
			return err
		}
	}
	if lost {
		return errors.New("lost the leader lease " + namespace + "/" + LeaseName)
	}
	return nil
}
