package webhook

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"time"
)

// Keys of the Secret that holds the webhook's certificates.
const (
	KeyCACert     = "ca.crt"
	KeyCAKey      = "ca.key"
	KeyPreviousCA = "ca-previous.crt"
	KeyCert       = "tls.crt"
	KeyKey        = "tls.key"
)

// Lifetimes: the serving certificate is renewed when a third of its life
// is left, the CA when less than a serving certificate's life is left,
// so that a renewed CA is in the bundle long before anything it signs
// is served (the old CA stays in the bundle until it expires).
const (
	CAValidity   = 5 * 365 * 24 * time.Hour
	CertValidity = 90 * 24 * time.Hour
)

// Bundle is the Secret's content, PEM encoded.
type Bundle map[string][]byte

// Plan returns the bundle to store for serving dnsNames at now: b itself
// when it is still good (changed false), else with a new CA and/or a new
// serving certificate.
func Plan(b Bundle, dnsNames []string, now time.Time) (Bundle, bool, error) {
	next := Bundle{}
	for k, v := range b {
		next[k] = v
	}
	changed := false
	ca, caKey, err := parsePair(b[KeyCACert], b[KeyCAKey])
	if err != nil || now.After(ca.NotAfter.Add(-CertValidity)) || now.Before(ca.NotBefore) {
		if err == nil && now.Before(ca.NotAfter) {
			next[KeyPreviousCA] = b[KeyCACert] // still trusted until it expires
		} else {
			delete(next, KeyPreviousCA)
		}
		certPEM, keyPEM, cerr := newCA(now)
		if cerr != nil {
			return nil, false, cerr
		}
		next[KeyCACert], next[KeyCAKey] = certPEM, keyPEM
		if ca, caKey, err = parsePair(certPEM, keyPEM); err != nil {
			return nil, false, err
		}
		delete(next, KeyCert) // signed by the old CA: reissue
		changed = true
	}
	if prev := next[KeyPreviousCA]; prev != nil {
		if c, err := parseCert(prev); err != nil || now.After(c.NotAfter) {
			delete(next, KeyPreviousCA)
			changed = true
		}
	}
	leaf, _, err := parsePair(next[KeyCert], next[KeyKey])
	if err != nil || leaf.CheckSignatureFrom(ca) != nil || !slices.Equal(leaf.DNSNames, dnsNames) ||
		now.After(leaf.NotAfter.Add(-CertValidity/3)) || now.Before(leaf.NotBefore) {
		certPEM, keyPEM, err := newServing(ca, caKey, dnsNames, now)
		if err != nil {
			return nil, false, err
		}
		next[KeyCert], next[KeyKey] = certPEM, keyPEM
		changed = true
	}
	return next, changed, nil
}

// CABundle is what clients must trust: the CA, and the previous one while
// certificates it signed may still be served.
func (b Bundle) CABundle() []byte {
	return append(append([]byte{}, b[KeyCACert]...), b[KeyPreviousCA]...)
}

// TLS is the serving certificate.
func (b Bundle) TLS() (*tls.Certificate, error) {
	c, err := tls.X509KeyPair(b[KeyCert], b[KeyKey])
	return &c, err
}

// Equal reports whether two bundles hold the same data.
func (b Bundle) Equal(o Bundle) bool {
	if len(b) != len(o) {
		return false
	}
	for k, v := range b {
		if !bytes.Equal(v, o[k]) {
			return false
		}
	}
	return true
}

// DNSNames are the names the API server uses for the webhook's Service.
func DNSNames(service, namespace string) []string {
	return []string{service + "." + namespace + ".svc", service + "." + namespace + ".svc.cluster.local"}
}

func newCA(now time.Time) ([]byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "meshcni-controller-ca@" + now.UTC().Format(time.RFC3339)},
		NotBefore:             now.Add(-time.Hour), // clock skew between nodes
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

func newServing(ca *x509.Certificate, caKey *ecdsa.PrivateKey, dnsNames []string, now time.Time) ([]byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		DNSNames:     dnsNames,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(CertValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func encode(der []byte, key *ecdsa.PrivateKey) ([]byte, []byte, error) {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

func parseCert(p []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(p)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// parsePair reads a certificate and its EC key, checking they match.
func parsePair(certPEM, keyPEM []byte) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	c, err := parseCert(certPEM)
	if err != nil {
		return nil, nil, err
	}
	blk, _ := pem.Decode(keyPEM)
	if blk == nil {
		return nil, nil, errors.New("no PEM key")
	}
	k, err := x509.ParseECPrivateKey(blk.Bytes)
	if err != nil {
		return nil, nil, err
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&k.PublicKey) {
		return nil, nil, fmt.Errorf("key does not match the certificate")
	}
	return c, k, nil
}
