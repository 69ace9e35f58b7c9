package webhook

import (
	"crypto/x509"
	"testing"
	"time"
)

func verify(t *testing.T, b Bundle, names []string, at time.Time) {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b.CABundle()) {
		t.Fatal("CA bundle has no certificate")
	}
	leaf, err := parseCert(b[KeyCert])
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: n, Roots: pool, CurrentTime: at}); err != nil {
			t.Fatalf("%s at %v: %v", n, at, err)
		}
	}
	if _, err := b.TLS(); err != nil {
		t.Fatal(err)
	}
}

func TestPlanLifecycle(t *testing.T) {
	names := DNSNames("meshcni-webhook", "meshcni-system")
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b, changed, err := Plan(nil, names, t0)
	if err != nil || !changed {
		t.Fatalf("first plan: changed %v, %v", changed, err)
	}
	verify(t, b, names, t0)

	if b2, changed, _ := Plan(b, names, t0.Add(24*time.Hour)); changed || !b2.Equal(b) {
		t.Fatal("a good bundle was renewed")
	}
	// Two thirds into the serving certificate's life: a new one, same CA.
	at := t0.Add(CertValidity * 2 / 3).Add(time.Hour)
	b3, changed, _ := Plan(b, names, at)
	if !changed || string(b3[KeyCert]) == string(b[KeyCert]) || string(b3[KeyCACert]) != string(b[KeyCACert]) {
		t.Fatal("serving certificate not renewed alone")
	}
	verify(t, b3, names, at)

	// Another Service name: a new serving certificate.
	if b4, changed, _ := Plan(b, DNSNames("other", "ns"), t0); !changed || string(b4[KeyCACert]) != string(b[KeyCACert]) {
		t.Fatal("serving certificate not reissued for new names")
	}

	// Near the CA's end: a new CA, the old one still in the bundle, and
	// a serving certificate from the new CA.
	at = t0.Add(CAValidity - CertValidity + time.Hour)
	b5, changed, _ := Plan(b3, names, at)
	if !changed || string(b5[KeyCACert]) == string(b3[KeyCACert]) || string(b5[KeyPreviousCA]) != string(b3[KeyCACert]) {
		t.Fatal("CA not renewed with the old one kept")
	}
	verify(t, b5, names, at)
	old, _ := parseCert(b3[KeyCert])
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(b5.CABundle())
	if _, err := old.Verify(x509.VerifyOptions{DNSName: names[0], Roots: pool, CurrentTime: t0.Add(CertValidity*2/3 + 2*time.Hour)}); err != nil {
		t.Fatalf("a certificate from the old CA is no longer trusted: %v", err)
	}
	// After the old CA expired it leaves the bundle.
	b6, changed, _ := Plan(b5, names, t0.Add(CAValidity+time.Hour))
	if !changed || b6[KeyPreviousCA] != nil {
		t.Fatal("expired previous CA kept")
	}
}

func TestPlanRepairsDamage(t *testing.T) {
	names := DNSNames("s", "ns")
	now := time.Now()
	b, _, _ := Plan(nil, names, now)
	for key, bad := range map[string][]byte{KeyCert: []byte("x"), KeyKey: b[KeyCAKey], KeyCAKey: []byte("-----BEGIN EC PRIVATE KEY-----\n-----END EC PRIVATE KEY-----\n")} {
		d := Bundle{}
		for k, v := range b {
			d[k] = v
		}
		d[key] = bad
		next, changed, err := Plan(d, names, now)
		if err != nil || !changed {
			t.Fatalf("%s damaged: changed %v, %v", key, changed, err)
		}
		verify(t, next, names, now)
	}
}
