package webhook

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Options are meshcni-webhook's flags.
type Options struct {
	Addr                 string
	Namespace            string
	Service              string
	Secret               string
	WebhookConfiguration string
	ExcludeNamespaces    []string
	Kubeconfig           string
	RotateInterval       time.Duration
	LogLevel             string
}

// NewCommand is meshcni-webhook's root command.
func NewCommand(logOut io.Writer) *cobra.Command {
	o := Options{}
	cmd := &cobra.Command{
		Use:           "meshcni-webhook",
		Short:         "meshcni's admission webhook: converts Istio's istio-init to CNI mode in captured namespaces, back in excluded ones",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !cmd.Flags().Changed("exclude-namespaces") {
				if v := os.Getenv("MESHCNI_EXCLUDE_NAMESPACES"); v != "" {
					o.ExcludeNamespaces = strings.Split(v, ",")
				}
			}
			return o.Run(cmd.Context(), logOut)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Addr, "listen", ":9443", "HTTPS address serving /mutate, /healthz, /readyz and /metrics")
	f.StringVar(&o.Namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the webhook's Service and Secret (default $POD_NAMESPACE)")
	f.StringVar(&o.Service, "service", "meshcni-webhook", "the Service the API server calls (names the certificate)")
	f.StringVar(&o.Secret, "secret", "meshcni-webhook-tls", "Secret holding the CA and serving certificate")
	f.StringVar(&o.WebhookConfiguration, "webhook-configuration", "meshcni-webhook", "MutatingWebhookConfiguration whose caBundle is kept")
	f.StringSliceVar(&o.ExcludeNamespaces, "exclude-namespaces", nil, "namespaces meshcni never captures, as the agent's (default $MESHCNI_EXCLUDE_NAMESPACES)")
	f.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig (default: in-cluster)")
	f.DurationVar(&o.RotateInterval, "rotate-interval", time.Hour, "how often the certificates are checked and renewed")
	f.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	return cmd
}

// Validate checks the options before anything starts.
func (o *Options) Validate() error {
	var errs []error
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace (or $POD_NAMESPACE) is required"))
	}
	if o.RotateInterval < time.Second {
		errs = append(errs, fmt.Errorf("--rotate-interval %v: at least 1s", o.RotateInterval))
	}
	for _, ns := range o.ExcludeNamespaces {
		if strings.TrimSpace(ns) == "" {
			errs = append(errs, errors.New("--exclude-namespaces: empty name"))
		}
	}
	return errors.Join(errs...)
}

// Run serves until ctx ends.
func (o *Options) Run(ctx context.Context, logOut io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return fmt.Errorf("--log-level %q: %v", o.LogLevel, err)
	}
	if err := o.Validate(); err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(logOut, &slog.HandlerOptions{Level: level}))
	var cfg *rest.Config
	var err error
	if o.Kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	cfg.Timeout = 10 * time.Second
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	certs := &Certs{Client: client, Namespace: o.Namespace, Service: o.Service, Secret: o.Secret,
		WebhookConfiguration: o.WebhookConfiguration, Log: log}
	ln, err := net.Listen("tcp", o.Addr)
	if err != nil {
		return err
	}
	log.Info("starting", "listen", ln.Addr().String(), "exclude_namespaces", o.ExcludeNamespaces)
	return Serve(ctx, ln, &Handler{Excluded: o.ExcludeNamespaces, Log: log}, certs, o.RotateInterval, log)
}

// Serve syncs the certificates (retrying until the first sync succeeds;
// until then /readyz fails and the API server's calls fail, which
// failurePolicy Ignore turns into unmutated pods), then serves TLS on ln.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, certs *Certs, interval time.Duration, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/mutate", h)
	mux.Handle("/metrics", promhttp.Handler())
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !certs.Ready() {
			http.Error(w, "no certificate in the webhook configuration yet", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second, // the API server's own call times out sooner
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate},
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		backoff := time.Second
		for {
			err := certs.Sync(ctx)
			if err == nil {
				log.Info("certificates ready")
				break
			}
			log.Error("certificate sync", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
		certs.Run(ctx, interval)
	}()
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	}
}
