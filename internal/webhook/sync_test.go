package webhook

import (
	"bytes"
	"context"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// Fast check of the Secret and caBundle bookkeeping; test/webhook runs
// the same against a real API server.
func TestSyncStoresAndPatches(t *testing.T) {
	ctx := context.Background()
	svc := func(name string) admissionregistrationv1.WebhookClientConfig {
		return admissionregistrationv1.WebhookClientConfig{Service: &admissionregistrationv1.ServiceReference{Namespace: "meshcni-system", Name: name}}
	}
	client := fake.NewClientset(&admissionregistrationv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: "meshcni-webhook"},
		Webhooks: []admissionregistrationv1.MutatingWebhook{
			{Name: "other.example.com", ClientConfig: svc("other")},
			{Name: "pods.meshcni.io", ClientConfig: svc("meshcni-webhook")},
		},
	})
	c := &Certs{Client: client, Namespace: "meshcni-system", Service: "meshcni-webhook", Secret: "tls", WebhookConfiguration: "meshcni-webhook"}
	if c.Ready() {
		t.Fatal("ready before a sync")
	}
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	sec, err := client.CoreV1().Secrets("meshcni-system").Get(ctx, "tls", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mwc, _ := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "meshcni-webhook", metav1.GetOptions{})
	if !bytes.Equal(mwc.Webhooks[1].ClientConfig.CABundle, Bundle(sec.Data).CABundle()) || mwc.Webhooks[0].ClientConfig.CABundle != nil {
		t.Fatalf("caBundle not on exactly our webhook: %+v", mwc.Webhooks)
	}
	if !c.Ready() {
		t.Fatal("not ready after a sync")
	}
	// A second replica takes the stored certificate, writes nothing.
	c2 := &Certs{Client: client, Namespace: "meshcni-system", Service: "meshcni-webhook", Secret: "tls", WebhookConfiguration: "meshcni-webhook"}
	client.ClearActions()
	if err := c2.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range client.Actions() {
		if a.GetVerb() != "get" {
			t.Errorf("second replica wrote: %s %s", a.GetVerb(), a.GetResource().Resource)
		}
	}
	got1, _ := c.GetCertificate(nil)
	got2, _ := c2.GetCertificate(nil)
	if !bytes.Equal(got1.Certificate[0], got2.Certificate[0]) {
		t.Fatal("replicas serve different certificates")
	}
	// Time passes: the serving certificate is renewed and served.
	c.Now = func() time.Time { return time.Now().Add(CertValidity) }
	if err := c.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got3, _ := c.GetCertificate(nil)
	if bytes.Equal(got1.Certificate[0], got3.Certificate[0]) {
		t.Fatal("not renewed")
	}
}

// Without the webhook configuration (the chart's webhook.enabled=false)
// the certificate is still stored and served: the console needs it.
func TestSyncWithoutWebhookConfiguration(t *testing.T) {
	client := fake.NewClientset()
	c := &Certs{Client: client, Namespace: "meshcni-system", Service: "meshcni-controller", Secret: "tls", WebhookConfiguration: "meshcni-webhook"}
	if err := c.Sync(context.Background()); err != nil {
		t.Fatalf("sync without a webhook configuration: %v", err)
	}
	if !c.Ready() {
		t.Fatal("not ready")
	}
}

// A replica loads only a whole bundle; a broken one keeps the served
// certificate.
func TestLoadKeepsTheServedCertificate(t *testing.T) {
	b, _, err := Plan(nil, DNSNames("meshcni-controller", "meshcni-system"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c := &Certs{Namespace: "meshcni-system", Secret: "tls"}
	if err := c.Load(b); err != nil {
		t.Fatal(err)
	}
	good, _ := c.GetCertificate(nil)
	if err := c.Load(Bundle{KeyCert: b[KeyCert]}); err == nil {
		t.Fatal("a bundle without its key loaded")
	}
	if got, _ := c.GetCertificate(nil); got != good {
		t.Fatal("a failed load replaced the served certificate")
	}
}
