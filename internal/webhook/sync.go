package webhook

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"sync/atomic"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Certs keeps the serving certificate in the Secret and the CA bundle in
// the webhook configuration. One replica writes (Maintain, run by the
// leader; a writer that loses a race anyway takes the winner's), every
// replica serves what the Secret holds (Watch), so a rotation reaches all
// of them without a restart.
type Certs struct {
	Client                     kubernetes.Interface
	Namespace, Secret, Service string
	WebhookConfiguration       string
	// DNSNames the certificate is for; nil: the Service's names. A
	// webhook called by URL whose host is one of them is kept too.
	DNSNames []string
	Log      *slog.Logger
	Now      func() time.Time
	current  atomic.Pointer[tls.Certificate]
}

// GetCertificate serves the current certificate (tls.Config hook), so a
// rotation needs no restart.
func (c *Certs) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if cert := c.current.Load(); cert != nil {
		return cert, nil
	}
	return nil, fmt.Errorf("no serving certificate yet")
}

// Ready reports whether a certificate is loaded. Until the writer has put
// its CA in the webhook configuration the API server's calls fail, which
// failurePolicy Ignore turns into unchanged pods: safe.
func (c *Certs) Ready() bool { return c.current.Load() != nil }

// Load serves b's certificate from now on.
func (c *Certs) Load(b Bundle) error {
	cert, err := b.TLS()
	if err != nil {
		return fmt.Errorf("secret %s/%s: %w", c.Namespace, c.Secret, err)
	}
	if old := c.current.Load(); old == nil || !bytes.Equal(old.Certificate[0], cert.Certificate[0]) {
		c.log().Info("serving certificate loaded", "secret", c.Secret)
	}
	c.current.Store(cert)
	return nil
}

// Watch serves whatever certificate the Secret holds, from an informer on
// that one Secret, until ctx ends. A deleted Secret leaves the current
// certificate in place: the writer stores a new one.
func (c *Certs) Watch(ctx context.Context) error {
	f := informers.NewSharedInformerFactoryWithOptions(c.Client, 0, informers.WithNamespace(c.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + c.Secret }))
	load := func(obj any) {
		sec, ok := obj.(*corev1.Secret)
		if !ok || sec.Name != c.Secret {
			return
		}
		if err := c.Load(Bundle(sec.Data)); err != nil {
			c.log().Error("certificate from the Secret", "err", err)
		}
	}
	if _, err := f.Core().V1().Secrets().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    load,
		UpdateFunc: func(_, obj any) { load(obj) },
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	go func() {
		<-ctx.Done()
		f.Shutdown()
	}()
	return nil
}

// Maintain is the writer: it syncs now, again on every change of the
// webhook configuration (an informer on that one object: one re-created
// or re-applied without our caBundle gets it back at once, not at the
// next interval), every interval, and after a failure with a backoff,
// until ctx ends.
func (c *Certs) Maintain(ctx context.Context, interval time.Duration) {
	kick := make(chan struct{}, 1)
	if err := c.watchConfiguration(ctx, kick); err != nil {
		c.log().Error("watching the webhook configuration", "err", err)
	}
	backoff := time.Second
	timer := time.NewTimer(0)
	defer timer.Stop()
	ready := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-kick:
		}
		wait := interval
		if err := c.Sync(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log().Error("certificate sync", "err", err)
			wait, backoff = backoff, min(2*backoff, 30*time.Second)
		} else {
			if !ready {
				c.log().Info("certificates ready")
				ready = true
			}
			backoff = time.Second
		}
		timer.Reset(wait)
	}
}

// watchConfiguration kicks a sync on every event of the webhook
// configuration. A sync that changes nothing writes nothing, so our own
// patch's event ends there.
func (c *Certs) watchConfiguration(ctx context.Context, kick chan<- struct{}) error {
	f := informers.NewSharedInformerFactoryWithOptions(c.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + c.WebhookConfiguration }))
	poke := func() {
		select {
		case kick <- struct{}{}:
		default: // one pending sync covers any number of events
		}
	}
	if _, err := f.Admissionregistration().V1().MutatingWebhookConfigurations().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
	}); err != nil {
		return err
	}
	f.Start(ctx.Done())
	go func() {
		<-ctx.Done()
		f.Shutdown()
	}()
	return nil
}

// Sync renews what needs renewing, stores it, serves it and puts the CA
// bundle in the webhook configuration.
func (c *Certs) Sync(ctx context.Context) error { return c.sync(ctx, 3) }

func (c *Certs) sync(ctx context.Context, attempts int) error {
	now := time.Now()
	if c.Now != nil {
		now = c.Now()
	}
	secrets := c.Client.CoreV1().Secrets(c.Namespace)
	sec, err := secrets.Get(ctx, c.Secret, metav1.GetOptions{})
	exists := err == nil
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("secret %s/%s: %w", c.Namespace, c.Secret, err)
	}
	var old Bundle
	if exists {
		old = Bundle(sec.Data)
	}
	next, changed, err := Plan(old, c.names(), now)
	if err != nil {
		return err
	}
	if changed {
		if !exists {
			sec = &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: c.Secret, Namespace: c.Namespace,
					Labels: map[string]string{"app.kubernetes.io/part-of": "meshcni", "app.kubernetes.io/component": "controller"}},
				Type: corev1.SecretTypeTLS,
				Data: next,
			}
			_, err = secrets.Create(ctx, sec, metav1.CreateOptions{FieldManager: FieldManager})
		} else {
			sec = sec.DeepCopy()
			sec.Data = next
			_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{FieldManager: FieldManager}) // resourceVersion: a concurrent writer wins
		}
		if (apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err)) && attempts > 1 {
			return c.sync(ctx, attempts-1) // another replica stored one: use it
		}
		if err != nil {
			return fmt.Errorf("storing the certificate in secret %s/%s: %w", c.Namespace, c.Secret, err)
		}
		c.log().Info("serving certificate stored", "secret", c.Secret)
	}
	if err := c.Load(next); err != nil {
		return err
	}
	return c.patchBundle(ctx, next.CABundle())
}

// FieldManager names the writer of the Secret and the caBundle.
const FieldManager = "meshcni-controller"

// patchBundle sets caBundle on every webhook of the configuration that
// calls our Service, with a JSON Patch naming exactly those fields (the
// chart's apply owns the rest).
func (c *Certs) patchBundle(ctx context.Context, bundle []byte) error {
	api := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	mwc, err := api.Get(ctx, c.WebhookConfiguration, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		// The chart's webhook.enabled=false: the certificate still serves
		// the console.
		c.log().Debug("no webhook configuration to patch", "name", c.WebhookConfiguration)
		return nil
	}
	if err != nil {
		return fmt.Errorf("mutating webhook configuration %s: %w", c.WebhookConfiguration, err)
	}
	var ops []map[string]any
	for i, w := range mwc.Webhooks {
		if !c.ours(w.ClientConfig) || bytes.Equal(w.ClientConfig.CABundle, bundle) {
			continue
		}
		p := fmt.Sprintf("/webhooks/%d", i)
		ops = append(ops,
			map[string]any{"op": "test", "path": p + "/name", "value": w.Name},
			map[string]any{"op": "add", "path": p + "/clientConfig/caBundle", "value": bundle})
	}
	if len(ops) == 0 {
		return nil
	}
	raw, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	if _, err := api.Patch(ctx, c.WebhookConfiguration, types.JSONPatchType, raw, metav1.PatchOptions{FieldManager: FieldManager}); err != nil {
		return fmt.Errorf("patching the CA bundle into %s: %w", c.WebhookConfiguration, err)
	}
	c.log().Info("CA bundle patched", "webhookconfiguration", c.WebhookConfiguration, "webhooks", len(ops)/2)
	return nil
}

func (c *Certs) names() []string {
	if c.DNSNames != nil {
		return c.DNSNames
	}
	return DNSNames(c.Service, c.Namespace)
}

// ours reports whether a webhook calls this server.
func (c *Certs) ours(cc admissionregistrationv1.WebhookClientConfig) bool {
	if s := cc.Service; s != nil {
		return s.Name == c.Service && s.Namespace == c.Namespace
	}
	if cc.URL == nil {
		return false
	}
	u, err := url.Parse(*cc.URL)
	return err == nil && slices.Contains(c.names(), u.Hostname())
}

func (c *Certs) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}
