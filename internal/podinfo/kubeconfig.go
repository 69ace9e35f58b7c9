package podinfo

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/internal/trust"
)

// apiConfig is what a kubeconfig tells the plug-in: where the API server
// is and how to talk to it.
type apiConfig struct {
	// server is the cluster's server URL, path prefix included.
	server *url.URL
	// tls is nil for an http:// server.
	tls *tls.Config
	// authorization is the Authorization header; "" sends none.
	authorization      string
	disableCompression bool
}

// kubeconfigFile is the part of a kubeconfig (clientcmd/api/v1) the
// plug-in reads. Fields it cannot honour are read only to refuse them.
type kubeconfigFile struct {
	APIVersion     string         `json:"apiVersion"`
	Kind           string         `json:"kind"`
	CurrentContext string         `json:"current-context"`
	Contexts       []namedContext `json:"contexts"`
	Clusters       []namedCluster `json:"clusters"`
	Users          []namedUser    `json:"users"`
}

type namedContext struct {
	Name    string `json:"name"`
	Context struct {
		Cluster string `json:"cluster"`
		User    string `json:"user"`
	} `json:"context"`
}

type namedCluster struct {
	Name    string `json:"name"`
	Cluster struct {
		Server                   string `json:"server"`
		TLSServerName            string `json:"tls-server-name"`
		InsecureSkipTLSVerify    bool   `json:"insecure-skip-tls-verify"`
		CertificateAuthority     string `json:"certificate-authority"`
		CertificateAuthorityData []byte `json:"certificate-authority-data"`
		DisableCompression       bool   `json:"disable-compression"`
		ProxyURL                 string `json:"proxy-url"`
	} `json:"cluster"`
}

type namedUser struct {
	Name string `json:"name"`
	User struct {
		ClientCertificate     string `json:"client-certificate"`
		ClientCertificateData []byte `json:"client-certificate-data"`
		ClientKey             string `json:"client-key"`
		ClientKeyData         []byte `json:"client-key-data"`
		Token                 string `json:"token"`
		TokenFile             string `json:"tokenFile"`
		Username              string `json:"username"`
		Password              string `json:"password"`

		Exec                 any                 `json:"exec"`
		AuthProvider         any                 `json:"auth-provider"`
		Impersonate          string              `json:"as"`
		ImpersonateUID       string              `json:"as-uid"`
		ImpersonateGroups    []string            `json:"as-groups"`
		ImpersonateUserExtra map[string][]string `json:"as-user-extra"`
	} `json:"user"`
}

func (c namedContext) name() string { return c.Name }
func (c namedCluster) name() string { return c.Name }
func (u namedUser) name() string    { return u.Name }

// useInstead is what to put in a kubeconfig for the plug-in.
const useInstead = "use token, tokenFile or client-certificate and client-key, as the kubeconfig the meshcni agent writes does"

// loadKubeconfig reads the kubeconfig at path. Its errors name the file.
//
// The file says which server answers for the API, and so which pods are
// captured: one that others could write or replace (a user's file, mode
// 0666, a directory others can write, as a 0777 run dir was) could point
// the plug-in at a server of theirs that answers "inject: false". Such a
// file is refused, before it is read.
func loadKubeconfig(path string) (*apiConfig, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig: %w", err)
	}
	defer f.Close()
	if err := trust.File(f, path); err != nil {
		return nil, fmt.Errorf("kubeconfig: %w; the agent writes it root-owned, 0600, in its run dir", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("read kubeconfig: %w", err)
	}
	cfg, err := parseKubeconfig(data, filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	return cfg, nil
}

// parseKubeconfig resolves the current context to its cluster and user.
// Relative file paths in them are relative to dir, as in clientcmd.
func parseKubeconfig(data []byte, dir string) (*apiConfig, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("the file is empty")
	}
	var f kubeconfigFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, err
	}
	if (f.APIVersion != "" && f.APIVersion != "v1") || (f.Kind != "" && f.Kind != "Config") {
		return nil, fmt.Errorf("apiVersion %q kind %q is not a v1 Config", f.APIVersion, f.Kind)
	}
	if f.CurrentContext == "" {
		return nil, errors.New("current-context is not set")
	}
	ctx, ok, err := find(f.Contexts, "context", f.CurrentContext)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("current-context %q is not in contexts", f.CurrentContext)
	}
	c, ok, err := find(f.Clusters, "cluster", ctx.Context.Cluster)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("context %q: cluster %q is not in clusters", ctx.Name, ctx.Context.Cluster)
	}
	// A context without its user sends no credentials, as with clientcmd;
	// the API then answers 401 or 403, which the plug-in reports.
	u, _, err := find(f.Users, "user", ctx.Context.User)
	if err != nil {
		return nil, err
	}
	if err := unsupported(c, u); err != nil {
		return nil, err
	}
	server, err := serverURL(c)
	if err != nil {
		return nil, err
	}
	cfg := &apiConfig{server: server, disableCompression: c.Cluster.DisableCompression}
	if server.Scheme == "http" {
		// clientcmd reads no credentials or TLS settings for a plain-HTTP
		// server: nothing would protect them on the wire.
		return cfg, nil
	}
	if cfg.tls, err = tlsConfig(c, u, dir); err != nil {
		return nil, err
	}
	if cfg.authorization, err = authorization(u, dir); err != nil {
		return nil, err
	}
	return cfg, nil
}

// find returns the entry of a kubeconfig list with the given name.
// Like clientcmd, it refuses a list that holds a name twice.
func find[E interface{ name() string }](list []E, kind, name string) (found E, ok bool, err error) {
	seen := make(map[string]bool, len(list))
	for _, e := range list {
		if seen[e.name()] {
			return found, false, fmt.Errorf("two %ss are named %q", kind, e.name())
		}
		seen[e.name()] = true
		if e.name() == name {
			found, ok = e, true
		}
	}
	return found, ok, nil
}

// unsupported refuses what client-go would honour and the plug-in does
// not: it runs once per pod start, without a terminal, and talks to the
// API as one identity.
func unsupported(c namedCluster, u namedUser) error {
	switch {
	case c.Cluster.ProxyURL != "":
		return fmt.Errorf("cluster %q: proxy-url is not supported by the meshcni plug-in; set server to an address the node reaches directly", c.Name)
	case u.User.Exec != nil:
		return fmt.Errorf("user %q: exec credential plugins are not supported by the meshcni plug-in; %s", u.Name, useInstead)
	case u.User.AuthProvider != nil:
		return fmt.Errorf("user %q: auth-provider is not supported by the meshcni plug-in; %s", u.Name, useInstead)
	case u.User.Impersonate != "" || u.User.ImpersonateUID != "" || len(u.User.ImpersonateGroups) > 0 || len(u.User.ImpersonateUserExtra) > 0:
		return fmt.Errorf("user %q: impersonation (as, as-uid, as-groups, as-user-extra) is not supported by the meshcni plug-in; grant this user get on pods instead", u.Name)
	}
	return nil
}

// serverURL parses the cluster's server, keeping its path: a proxy in
// front of the API (https://h/k8s/clusters/c1) serves it under a prefix.
// clientcmd would take a bare host:port and speak plain HTTP to it
// without credentials; the plug-in asks for the scheme instead.
func serverURL(c namedCluster) (*url.URL, error) {
	if c.Cluster.Server == "" {
		return nil, fmt.Errorf("cluster %q has no server", c.Name)
	}
	u, err := url.Parse(c.Cluster.Server)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, fmt.Errorf("cluster %q: server %q is not an https:// URL", c.Name, c.Cluster.Server)
	}
	// client-go drops them too: every request sets its own query.
	u.RawQuery, u.Fragment, u.RawFragment = "", "", ""
	return u, nil
}

// tlsConfig is client-go's TLS configuration (transport.TLSConfigFor)
// for the cluster and user.
func tlsConfig(c namedCluster, u namedUser, dir string) (*tls.Config, error) {
	cl := c.Cluster
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: cl.InsecureSkipTLSVerify,
		ServerName:         cl.TLSServerName,
	}
	ca, err := fileOrData(dir, "certificate-authority", cl.CertificateAuthority, cl.CertificateAuthorityData)
	if err != nil {
		return nil, fmt.Errorf("cluster %q: %w", c.Name, err)
	}
	if cl.InsecureSkipTLSVerify && (cl.CertificateAuthority != "" || len(cl.CertificateAuthorityData) > 0) {
		return nil, fmt.Errorf("cluster %q: insecure-skip-tls-verify and a certificate-authority are both set; keep one", c.Name)
	}
	// An empty CA means the system's roots, as in client-go.
	if len(ca) > 0 {
		conf.RootCAs = x509.NewCertPool()
		if !conf.RootCAs.AppendCertsFromPEM(ca) {
			return nil, fmt.Errorf("cluster %q: certificate-authority holds no PEM certificate", c.Name)
		}
	}

	cert, err := fileOrData(dir, "client-certificate", u.User.ClientCertificate, u.User.ClientCertificateData)
	if err != nil {
		return nil, fmt.Errorf("user %q: %w", u.Name, err)
	}
	if u.User.ClientCertificate == "" && len(u.User.ClientCertificateData) == 0 {
		return conf, nil
	}
	key, err := fileOrData(dir, "client-key", u.User.ClientKey, u.User.ClientKeyData)
	if err != nil {
		return nil, fmt.Errorf("user %q: %w", u.Name, err)
	}
	if u.User.ClientKey == "" && len(u.User.ClientKeyData) == 0 {
		return nil, fmt.Errorf("user %q: client-certificate needs client-key or client-key-data", u.Name)
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("user %q: client-certificate and client-key: %w", u.Name, err)
	}
	// Like client-go, send the certificate whatever CAs the server names
	// in its request; tls.Config.Certificates would then send none.
	conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	return conf, nil
}

// fileOrData returns the bytes of field: its file, read relative to dir,
// or its -data. clientcmd refuses both at once.
func fileOrData(dir, field, file string, data []byte) ([]byte, error) {
	if file == "" {
		return data, nil
	}
	if len(data) > 0 {
		return nil, fmt.Errorf("%s and %s-data are both set; keep one", field, field)
	}
	b, err := os.ReadFile(resolve(dir, file))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return b, nil
}

// authorization returns the user's Authorization header: a bearer token
// or basic auth, never both (client-go refuses both).
func authorization(u namedUser, dir string) (string, error) {
	token, err := bearerToken(u, dir)
	if err != nil {
		return "", err
	}
	basic := u.User.Username != "" || u.User.Password != ""
	switch {
	case token != "" && basic:
		return "", fmt.Errorf("user %q: a token and username/password are both set; keep one", u.Name)
	case token != "":
		return "Bearer " + token, nil
	case u.User.Username != "":
		// client-go sends basic auth only with a username.
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(u.User.Username+":"+u.User.Password)), nil
	}
	return "", nil
}

// bearerToken is the user's token. When tokenFile is set, client-go sends
// the file's content and falls back to token only if the file cannot be
// read; it caches the file for a minute. The plug-in lives for one ADD,
// so it reads the file once.
func bearerToken(u namedUser, dir string) (string, error) {
	if u.User.TokenFile == "" {
		return u.User.Token, nil
	}
	path := resolve(dir, u.User.TokenFile)
	b, err := os.ReadFile(path)
	if tok := strings.TrimSpace(string(b)); err == nil && tok != "" {
		return tok, nil
	}
	switch {
	case u.User.Token != "":
		return u.User.Token, nil
	case err != nil:
		return "", fmt.Errorf("user %q: tokenFile: %w", u.Name, err)
	}
	return "", fmt.Errorf("user %q: tokenFile %s is empty", u.Name, path)
}

// resolve makes a relative path in the kubeconfig relative to its
// directory, as clientcmd does.
func resolve(dir, path string) string {
	if filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}
