package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/console"
	"github.com/meshcni/meshcni/internal/webhook"
)

// ServerOptions configure what every replica serves, leader or not.
type ServerOptions struct {
	// Namespace is the release namespace: the Service's, the Secret's, and
	// the one always excluded.
	Namespace string
	// Service is the controller's Service: its names are the certificate's.
	Service string
	// Secret holds the CA and the serving certificate.
	Secret string
	// WebhookConfiguration is the MutatingWebhookConfiguration whose
	// caBundle the leader keeps.
	WebhookConfiguration string
	// DNSNames override the Service's names in the certificate (tests that
	// call the webhook by URL).
	DNSNames []string
	Log      *slog.Logger
}

// Server is what every replica serves: the injection webhook, following
// the MeshCNI resource live, and the console, both over HTTPS with the
// certificate the Secret holds.
type Server struct {
	opts    ServerOptions
	log     *slog.Logger
	Webhook *webhook.Handler
	Certs   *webhook.Certs
	console http.Handler
	meshInf cache.SharedIndexInformer
	factory dynamicinformer.DynamicSharedInformerFactory
	synced  atomic.Bool
}

// NewServer builds a Server from cfg (the controller's own identity; the
// console acts only with each caller's).
func NewServer(cfg *rest.Config, o ServerOptions) (*Server, error) {
	if o.Namespace == "" || o.Service == "" || o.Secret == "" || o.WebhookConfiguration == "" {
		return nil, errors.New("server: namespace, service, secret and webhook configuration are required")
	}
	s := &Server{opts: o, log: o.Log, Webhook: &webhook.Handler{Log: o.Log}}
	if s.log == nil {
		s.log = slog.Default()
	}
	kcfg := rest.CopyConfig(cfg)
	kcfg.Timeout = 10 * time.Second
	kube, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		return nil, err
	}
	s.Certs = &webhook.Certs{Client: kube, Namespace: o.Namespace, Service: o.Service, Secret: o.Secret,
		WebhookConfiguration: o.WebhookConfiguration, DNSNames: o.DNSNames, Log: s.log}
	if s.console, err = console.New(console.Options{Config: cfg, Namespace: o.Namespace, Log: s.log}); err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	s.factory = dynamicinformer.NewFilteredDynamicSharedInformerFactory(dyn, 0, "", func(lo *metav1.ListOptions) {
		lo.FieldSelector = "metadata.name=" + v1alpha1.Name
	})
	s.meshInf = s.factory.ForResource(v1alpha1.GroupVersionResource).Informer()
	update := func(any) { s.updatePolicy() }
	if _, err := s.meshInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    update,
		UpdateFunc: func(_, obj any) { update(obj) },
		DeleteFunc: update,
	}); err != nil {
		return nil, err
	}
	return s, nil
}

// updatePolicy gives the webhook the policy of the MeshCNI in the cache.
func (s *Server) updatePolicy() {
	var mc *v1alpha1.MeshCNI
	if obj, ok, _ := s.meshInf.GetStore().GetByKey(v1alpha1.Name); ok {
		u, _ := obj.(*unstructured.Unstructured)
		mc = &v1alpha1.MeshCNI{}
		if u == nil || runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, mc) != nil {
			// The schema makes this unreachable; if not, doing nothing is
			// what a webhook that is down does.
			s.log.Error("webhook: undecodable MeshCNI, leaving pods alone")
			mc = nil
		}
	}
	p := WebhookPolicy(mc, s.opts.Namespace)
	if old := s.Webhook.Policy(); old.Enabled != p.Enabled || fmt.Sprint(old.Excluded) != fmt.Sprint(p.Excluded) {
		s.log.Info("webhook policy", "enabled", p.Enabled, "exclude_namespaces", p.Excluded)
	}
	s.Webhook.SetPolicy(p)
}

// Ready says why the replica cannot answer yet, or nil.
func (s *Server) Ready() error {
	switch {
	case !s.synced.Load():
		return errors.New("the MeshCNI informer has not synced")
	case !s.Certs.Ready():
		return fmt.Errorf("no serving certificate in secret %s/%s yet", s.opts.Namespace, s.opts.Secret)
	}
	return nil
}

// Serve serves the webhook (/mutate) on webhookLn and the console on
// consoleLn (either may be nil) until ctx ends. The leader writes the
// certificate (MaintainCerts); this replica serves what the Secret holds.
func (s *Server) Serve(ctx context.Context, webhookLn, consoleLn net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if err := s.Certs.Watch(ctx); err != nil {
		return err
	}
	s.factory.Start(ctx.Done())
	defer s.factory.Shutdown()
	go func() {
		if cache.WaitForCacheSync(ctx.Done(), s.meshInf.HasSynced) {
			s.updatePolicy() // no MeshCNI at all: no event, the zero policy
			s.synced.Store(true)
		}
	}()
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: s.Certs.GetCertificate}
	errLog := slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)
	var servers []*http.Server
	errc := make(chan error, 2)
	serve := func(ln net.Listener, srv *http.Server) {
		servers = append(servers, srv)
		go func() { errc <- srv.ServeTLS(ln, "", "") }()
	}
	if webhookLn != nil {
		mux := http.NewServeMux()
		mux.Handle("/mutate", s.Webhook)
		serve(webhookLn, &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second, // the API server's own call times out sooner
			WriteTimeout:      10 * time.Second,
			IdleTimeout:       90 * time.Second,
			MaxHeaderBytes:    64 << 10,
			TLSConfig:         tlsConfig.Clone(),
			ErrorLog:          errLog,
		})
	}
	if consoleLn != nil {
		serve(consoleLn, &http.Server{
			Handler:           s.console,
			ReadHeaderTimeout: 10 * time.Second,
			// No WriteTimeout: the page's state stream stays open; the API
			// server's proxy and the browser end it.
			IdleTimeout:    90 * time.Second,
			MaxHeaderBytes: 64 << 10,
			TLSConfig:      tlsConfig.Clone(),
			ErrorLog:       errLog,
		})
	}
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer scancel()
	for _, srv := range servers {
		if srv.Shutdown(sctx) != nil {
			_ = srv.Close() // open event streams
		}
	}
	return err
}

// MaintainCerts writes the certificate and the CA bundle (the leader's
// job) until ctx ends.
func (s *Server) MaintainCerts(ctx context.Context, interval time.Duration) {
	s.Certs.Maintain(ctx, interval)
}
