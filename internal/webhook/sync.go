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
	"k8s.io/client-go/kubernetes"
)

// Certs keeps the serving certificate in the Secret (shared by every
// replica: the Secret is the truth, a replica that loses a write race
// takes the winner's) and the CA bundle in the webhook configuration.
type Certs struct {
	Client                     kubernetes.Interface
	Namespace, Secret, Service string
	WebhookConfiguration       string
	// DNSNames the certificate is for; nil: the Service's names. A
	// webhook called by URL whose host is one of them is kept too.
	DNSNames      []string
	Log           *slog.Logger
	Now           func() time.Time
	current       atomic.Pointer[tls.Certificate]
	bundlePatched atomic.Bool
}

// GetCertificate serves the current certificate (tls.Config hook), so a
// rotation needs no restart.
func (c *Certs) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if cert := c.current.Load(); cert != nil {
		return cert, nil
	}
	return nil, fmt.Errorf("no serving certificate yet")
}

// Ready reports whether a certificate is loaded and its CA is in the
// webhook configuration.
func (c *Certs) Ready() bool { return c.current.Load() != nil && c.bundlePatched.Load() }

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
					Labels: map[string]string{"app.kubernetes.io/part-of": "meshcni", "app.kubernetes.io/component": "webhook"}},
				Type: corev1.SecretTypeTLS,
				Data: next,
			}
			_, err = secrets.Create(ctx, sec, metav1.CreateOptions{})
		} else {
			sec = sec.DeepCopy()
			sec.Data = next
			_, err = secrets.Update(ctx, sec, metav1.UpdateOptions{}) // resourceVersion: a concurrent writer wins
		}
		if (apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err)) && attempts > 1 {
			return c.sync(ctx, attempts-1) // another replica stored one: use it
		}
		if err != nil {
			return fmt.Errorf("storing the certificate in secret %s/%s: %w", c.Namespace, c.Secret, err)
		}
		c.log().Info("serving certificate stored", "secret", c.Secret)
	}
	cert, err := next.TLS()
	if err != nil {
		return err
	}
	c.current.Store(cert)
	if err := c.patchBundle(ctx, next.CABundle()); err != nil {
		return err
	}
	c.bundlePatched.Store(true)
	return nil
}

// patchBundle sets caBundle on every webhook of the configuration that
// calls our Service, with a JSON Patch naming exactly those fields (the
// chart's apply owns the rest).
func (c *Certs) patchBundle(ctx context.Context, bundle []byte) error {
	api := c.Client.AdmissionregistrationV1().MutatingWebhookConfigurations()
	mwc, err := api.Get(ctx, c.WebhookConfiguration, metav1.GetOptions{})
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
	if _, err := api.Patch(ctx, c.WebhookConfiguration, types.JSONPatchType, raw, metav1.PatchOptions{FieldManager: "meshcni-webhook"}); err != nil {
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

// Run syncs every interval until ctx ends, logging failures (the next
// round retries; the served certificate stays until replaced).
func (c *Certs) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.Sync(ctx); err != nil {
				c.log().Error("certificate sync", "err", err)
			}
		}
	}
}

func (c *Certs) log() *slog.Logger {
	if c.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Log
}
