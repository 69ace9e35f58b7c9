package kubeharness

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// pki holds the generated material for one cluster, PEM-encoded.
type pki struct {
	caCert, caKey        []byte
	servingCert, servKey []byte
	adminCert, adminKey  []byte
	saPublic, saPrivate  []byte
}

// AdminUser is the user name of the admin client certificate; its group is
// system:masters.
const AdminUser = "meshcni-admin"

func newPKI() (*pki, error) {
	ca, err := NewCA("meshcni-kubeharness-ca", 10*365*24*time.Hour)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	p := &pki{caCert: PEM("CERTIFICATE", ca.DER)}
	if p.caKey, err = KeyPEM(ca.Key); err != nil {
		return nil, err
	}
	serving := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	if p.servingCert, p.servKey, err = issuePEM(ca, serving); err != nil {
		return nil, fmt.Errorf("issue serving certificate: %w", err)
	}
	admin := &x509.Certificate{
		Subject:     pkix.Name{CommonName: AdminUser, Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if p.adminCert, p.adminKey, err = issuePEM(ca, admin); err != nil {
		return nil, fmt.Errorf("issue admin certificate: %w", err)
	}
	if p.saPublic, p.saPrivate, err = ServiceAccountKeys(); err != nil {
		return nil, err
	}
	return p, nil
}

// issuePEM signs tmpl with ca and returns the certificate and its new key.
func issuePEM(ca *CA, tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	der, key, err := ca.Issue(tmpl)
	if err != nil {
		return nil, nil, err
	}
	if keyPEM, err = KeyPEM(key); err != nil {
		return nil, nil, err
	}
	return PEM("CERTIFICATE", der), keyPEM, nil
}

// write puts every file the API server reads into dir and returns their paths.
func (p *pki) write(dir string) (map[string]string, error) {
	files := map[string][]byte{
		"ca.crt":      p.caCert,
		"ca.key":      p.caKey,
		"serving.crt": p.servingCert,
		"serving.key": p.servKey,
		"admin.crt":   p.adminCert,
		"admin.key":   p.adminKey,
		"sa.pub":      p.saPublic,
		"sa.key":      p.saPrivate,
	}
	paths := make(map[string]string, len(files))
	for name, data := range files {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return nil, err
		}
		paths[name] = path
	}
	return paths, nil
}
