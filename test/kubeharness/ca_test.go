package kubeharness

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"testing"
	"time"
)

func TestCAIssue(t *testing.T) {
	ca, err := NewCA("test-ca", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Cert)
	for i, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		der, key, err := ca.Issue(&x509.Certificate{
			Subject:     pkix.Name{CommonName: "leaf"},
			ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames:    []string{"localhost"},
		})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		if cert.SerialNumber.Int64() != int64(i+2) {
			t.Errorf("serial = %s, want %d (the CA is 1)", cert.SerialNumber, i+2)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("leaf %d does not verify against the CA: %v", i, err)
		}
		b, err := KeyPEM(key)
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != "EC PRIVATE KEY" {
			t.Fatalf("KeyPEM = %q", b)
		}
		if k, err := x509.ParseECPrivateKey(blk.Bytes); err != nil || !k.PublicKey.Equal(cert.PublicKey) {
			t.Errorf("the key does not match the certificate: %v", err)
		}
	}
	pub, priv, err := ServiceAccountKeys()
	if err != nil {
		t.Fatal(err)
	}
	pb, _ := pem.Decode(pub)
	kb, _ := pem.Decode(priv)
	if pb == nil || pb.Type != "PUBLIC KEY" || kb == nil || kb.Type != "EC PRIVATE KEY" {
		t.Fatalf("service account keys: %q %q", pub, priv)
	}
}
