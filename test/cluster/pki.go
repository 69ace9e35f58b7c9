package cluster

import (
	"crypto/ecdsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/meshcni/meshcni/test/kubeharness"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// pki is the cluster's CA and the files it signs, under dir.
type pki struct {
	dir string
	ca  *kubeharness.CA
}

func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	ca, err := kubeharness.NewCA("meshcni-cluster-ca", 48*time.Hour)
	if err != nil {
		return nil, err
	}
	p := &pki{dir: dir, ca: ca}
	if err := p.writePair("ca", ca.DER, ca.Key); err != nil {
		return nil, err
	}
	// The service account signing pair.
	pub, key, err := kubeharness.ServiceAccountKeys()
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.path("sa.pub"), pub, 0o600); err != nil {
		return nil, err
	}
	return p, os.WriteFile(p.path("sa.key"), key, 0o600)
}

func (p *pki) path(name string) string { return filepath.Join(p.dir, name) }

// issue signs a certificate for cn/orgs, a server one when hosts are given,
// and writes NAME.crt and NAME.key.
func (p *pki) issue(name, cn string, orgs []string, hosts ...string) error {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: orgs},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if len(hosts) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, key, err := p.ca.Issue(tmpl)
	if err != nil {
		return fmt.Errorf("issue %s: %w", name, err)
	}
	return p.writePair(name, der, key)
}

func (p *pki) writePair(name string, der []byte, key *ecdsa.PrivateKey) error {
	if err := os.WriteFile(p.path(name+".crt"), kubeharness.PEM("CERTIFICATE", der), 0o600); err != nil {
		return err
	}
	b, err := kubeharness.KeyPEM(key)
	if err != nil {
		return err
	}
	return os.WriteFile(p.path(name+".key"), b, 0o600)
}

// kubeconfig issues a client certificate for cn/orgs and writes a
// kubeconfig that uses it against server, as NAME.kubeconfig.
func (p *pki) kubeconfig(name, server, cn string, orgs ...string) (string, error) {
	if err := p.issue(name, cn, orgs); err != nil {
		return "", err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["cluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: p.path("ca.crt")}
	cfg.AuthInfos["user"] = &clientcmdapi.AuthInfo{ClientCertificate: p.path(name + ".crt"), ClientKey: p.path(name + ".key")}
	cfg.Contexts["cluster"] = &clientcmdapi.Context{Cluster: "cluster", AuthInfo: "user"}
	cfg.CurrentContext = "cluster"
	path := p.path(name + ".kubeconfig")
	return path, clientcmd.WriteToFile(*cfg, path)
}
