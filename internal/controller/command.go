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

// NewCommand is meshcni-controller's command line.
func NewCommand(stderr io.Writer) *cobra.Command {
	var (
		kubeconfig, namespace, image, healthAddr, logLevel string
		leaderElect                                        bool
	)
	cmd := &cobra.Command{
		Use:           "meshcni-controller",
		Short:         "Keep the meshcni agents in line with the MeshCNI resource and report their rollout",
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: %w", logLevel, err)
			}
			log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
			cfg, err := restConfig(kubeconfig)
			if err != nil {
				return err
			}
			c, err := New(cfg, Options{Namespace: namespace, DefaultImage: image, Log: log})
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if healthAddr != "" {
				if err := serveHealth(ctx, healthAddr); err != nil {
					return err
				}
			}
			if !leaderElect {
				return c.Run(ctx)
			}
			return RunAsLeader(ctx, cfg, namespace, log, c.Run)
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file (default: in-cluster)")
	f.StringVar(&namespace, "namespace", os.Getenv("POD_NAMESPACE"), "namespace of the node side and the lease (default $POD_NAMESPACE)")
	f.StringVar(&image, "agent-image", os.Getenv("MESHCNI_AGENT_IMAGE"), "agent image when the MeshCNI's spec.image is empty (default $MESHCNI_AGENT_IMAGE)")
	f.StringVar(&healthAddr, "health-addr", ":8081", "serves /healthz and /metrics; empty: off")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&leaderElect, "leader-elect", true, "run only while holding the Lease "+LeaseName+" (for more than one replica)")
	return cmd
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

// serveHealth answers /healthz while the process runs: liveness only, a
// standby replica is healthy too.
func serveHealth(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--health-addr %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
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
	var runErr error
	lost := false
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		ReleaseOnCancel: true,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(ctx context.Context) {
				log.Info("leading", "identity", id)
				runErr = run(ctx)
			},
			OnStoppedLeading: func() {
				if ctx.Err() == nil {
					lost = true
				}
			},
		},
	})
	if runErr != nil {
		return runErr
	}
	if lost {
		return errors.New("lost the leader lease " + namespace + "/" + LeaseName)
	}
	return nil
}
