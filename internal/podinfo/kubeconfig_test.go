package podinfo

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// The names the differential test gets: the name needs escaping.
const (
	diffNamespace = "meshcni-system"
	diffPod       = "web 0?x#y"
	diffTimeout   = 3 * time.Second
)

// sent is what a client sends for a kubeconfig: the URLs of a GET of the
// pod and of /readyz, its Authorization, and its TLS settings.
type sent struct {
	podURL, readyURL   string
	authorization      string
	roots              *x509.CertPool
	insecure           bool
	serverName         string
	clientCert         []byte
	disableCompression bool
}

func (s sent) diff(t *testing.T, want sent) {
	t.Helper()
	if s.podURL != want.podURL || s.readyURL != want.readyURL {
		t.Errorf("URLs: got %s and %s, client-go %s and %s", s.podURL, s.readyURL, want.podURL, want.readyURL)
	}
	if s.authorization != want.authorization {
		t.Errorf("Authorization: got %q, client-go %q", s.authorization, want.authorization)
	}
	if (s.roots == nil) != (want.roots == nil) || (s.roots != nil && !s.roots.Equal(want.roots)) {
		t.Errorf("root CAs differ from client-go's (nil: got %v, client-go %v)", s.roots == nil, want.roots == nil)
	}
	if s.insecure != want.insecure || s.serverName != want.serverName || s.disableCompression != want.disableCompression {
		t.Errorf("insecure, server name, no compression: got %v %q %v, client-go %v %q %v",
			s.insecure, s.serverName, s.disableCompression, want.insecure, want.serverName, want.disableCompression)
	}
	if !bytes.Equal(s.clientCert, want.clientCert) {
		t.Errorf("client certificate differs from client-go's (got %d bytes, client-go %d)", len(s.clientCert), len(want.clientCert))
	}
}

// recorder answers every request with the pod asked for, empty (or "ok"
// for /readyz), and keeps what was sent.
type recorder struct {
	urls          []string
	authorization string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.urls = append(r.urls, req.URL.String())
	r.authorization = req.Header.Get("Authorization")
	// The pod asked for: .../namespaces/{namespace}/pods/{name}.
	dir, name := path.Split(req.URL.Path)
	namespace := path.Base(path.Dir(path.Dir(dir)))
	body := fmt.Sprintf(`{"kind":"Pod","apiVersion":"v1","metadata":{"name":%q,"namespace":%q}}`, name, namespace)
	if strings.HasSuffix(req.URL.Path, "/readyz") {
		body = "ok"
	}
	return &http.Response{
		StatusCode: http.StatusOK,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       io.NopCloser(strings.NewReader(body)),
		Request:    req,
	}, nil
}

func (r *recorder) sent(tc *tls.Config) sent {
	s := sent{authorization: r.authorization}
	if len(r.urls) == 2 {
		s.podURL, s.readyURL = r.urls[0], r.urls[1]
	}
	if tc == nil {
		return s
	}
	s.roots, s.insecure, s.serverName = tc.RootCAs, tc.InsecureSkipVerify, tc.ServerName
	if tc.GetClientCertificate != nil {
		if c, err := tc.GetClientCertificate(&tls.CertificateRequestInfo{}); err == nil && len(c.Certificate) > 0 {
			s.clientCert = c.Certificate[0]
		}
	}
	return s
}

// clientGoSends is what client-go, as the plug-in used it, sends for the
// kubeconfig at path; an error is one from building its client.
func clientGoSends(path string) (sent, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return sent{}, err
	}
	cfg.Timeout = diffTimeout
	tc, err := rest.TLSConfigFor(cfg)
	if err != nil {
		return sent{}, err
	}
	rec := &recorder{}
	cfg.WrapTransport = func(http.RoundTripper) http.RoundTripper { return rec }
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return sent{}, err
	}
	ctx := context.Background()
	if _, err := cs.CoreV1().Pods(diffNamespace).Get(ctx, diffPod, metav1.GetOptions{}); err != nil {
		return sent{}, err
	}
	if _, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx); err != nil {
		return sent{}, err
	}
	s := rec.sent(tc)
	s.disableCompression = cfg.DisableCompression
	return s, nil
}

// meshcniSends is the same for Client.
func meshcniSends(path string) (sent, error) {
	c, err := NewClient(path, diffTimeout)
	if err != nil {
		return sent{}, err
	}
	tr := c.http.Transport.(*http.Transport)
	rec := &recorder{}
	c.http.Transport = rec
	ctx := context.Background()
	if _, err := c.GetPod(ctx, diffNamespace, diffPod); err != nil {
		return sent{}, err
	}
	if err := c.Ready(ctx); err != nil {
		return sent{}, err
	}
	s := rec.sent(tr.TLSClientConfig)
	s.disableCompression = tr.DisableCompression
	return s, nil
}

// written is a kubeconfig as clientcmd.Write writes it: the shape of the
// one the meshcni agent writes (install.WriteKubeconfig) and of those of
// test/kubeharness, whose admin kubeconfig has a client certificate.
func written(t *testing.T, server string, caData []byte, user *clientcmdapi.AuthInfo) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caData}
	cfg.AuthInfos["meshcni"] = user
	cfg.Contexts["meshcni"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "meshcni"}
	cfg.CurrentContext = "meshcni"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

// TestKubeconfigLikeClientcmd reads kubeconfigs with Client and with
// client-go and compares what each would send.
func TestKubeconfigLikeClientcmd(t *testing.T) {
	ca := newCA(t)
	otherCA := newCA(t)
	cert, key := ca.clientCert(t, "system:node:n1")
	b64 := base64.StdEncoding.EncodeToString
	caData, certData, keyData := b64(ca.pem), b64(cert), b64(key)

	const server = "https://api.meshcni.test:6443"
	token := func(more string) string {
		return kubeconfig("{server: "+server+", certificate-authority-data: "+caData+"}", more)
	}
	cluster := func(more string) string { return kubeconfig("{server: "+server+more+"}", "{token: t0}") }

	cases := []struct {
		name, kubeconfig string
	}{
		{"agent's", written(t, server, ca.pem, &clientcmdapi.AuthInfo{Token: "agent-token"})},
		{"kubeharness admin", written(t, "https://127.0.0.1:34567", ca.pem, &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key})},
		{"token", token("{token: t0}")},
		{"tokenFile relative", token("{tokenFile: secrets/token}")},
		{"tokenFile absolute", token("{tokenFile: $DIR/secrets/token}")},
		{"token and tokenFile: the file wins", token("{token: t0, tokenFile: secrets/token}")},
		{"token and a missing tokenFile", token("{token: t0, tokenFile: secrets/missing}")},
		{"token and an empty tokenFile", token("{token: t0, tokenFile: secrets/empty}")},
		{"CA file relative", cluster(", certificate-authority: pki/ca.pem")},
		{"CA file absolute", cluster(", certificate-authority: $DIR/pki/ca.pem")},
		{"no CA: system roots", cluster("")},
		{"insecure", cluster(", insecure-skip-tls-verify: true")},
		{"tls-server-name", cluster(", certificate-authority-data: " + caData + ", tls-server-name: kubernetes.default.svc")},
		{"disable-compression", cluster(", disable-compression: true")},
		{"client cert files", token("{client-certificate: pki/client.pem, client-key: $DIR/pki/client-key.pem}")},
		{"client cert data", token("{client-certificate-data: " + certData + ", client-key-data: " + keyData + "}")},
		{"client cert and token", token("{client-certificate-data: " + certData + ", client-key-data: " + keyData + ", token: t0}")},
		{"client key alone is ignored", token("{client-key: pki/client-key.pem, token: t0}")},
		{"basic auth", token("{username: admin, password: s3cret}")},
		{"username only", token("{username: admin}")},
		{"password only sends nothing", token("{password: s3cret}")},
		{"server path prefix", kubeconfig("{server: "+server+"/k8s/clusters/c-1}", "{token: t0}")},
		{"server path prefix, slash and query", kubeconfig("{server: '"+server+"/k8s/clusters/c-1/?x=y#f'}", "{token: t0}")},
		{"server with slash", kubeconfig("{server: "+server+"/}", "{token: t0}")},
		{"server query", kubeconfig("{server: '"+server+"?x=y'}", "{token: t0}")},
		{"plain http sends no credentials", kubeconfig("{server: 'http://127.0.0.1:8080'}", "{token: t0, tokenFile: secrets/missing}")},
		{"user missing: anonymous", `
clusters: [{name: c, cluster: {server: ` + server + `}}]
contexts: [{name: x, context: {cluster: c, user: nobody}}]
current-context: x
`},
		{"context without user", `
clusters: [{name: c, cluster: {server: ` + server + `}}]
contexts: [{name: x, context: {cluster: c}}]
current-context: x
`},
		{"current-context picks one of several", `
apiVersion: v1
kind: Config
preferences: {colors: true}
clusters:
- name: prod
  cluster: {server: 'https://prod:6443', certificate-authority-data: ` + b64(otherCA.pem) + `}
- name: kind
  cluster:
    server: https://127.0.0.1:44321/prefix
    certificate-authority: pki/ca.pem
    extensions:
    - name: client.authentication.k8s.io/exec
      extension: {audience: x}
users:
- name: oidc
  user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: kubelogin, interactiveMode: Never}}
- name: plugin
  user: {tokenFile: secrets/token}
contexts:
- name: prod
  context: {cluster: prod, user: oidc, namespace: default}
- name: kind
  context: {cluster: kind, user: plugin, namespace: meshcni-system}
current-context: kind
`},
		{"JSON, no apiVersion or kind, unknown fields", `{"current-context": "x", "future": 1,
"clusters": [{"name": "c", "cluster": {"server": "` + server + `", "certificate-authority-data": "` + caData + `", "future": true}}],
"users": [{"name": "u", "user": {"token": "t0"}}],
"contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "pki", "ca.pem"), string(ca.pem))
			writeFile(t, filepath.Join(dir, "pki", "client.pem"), string(cert))
			writeFile(t, filepath.Join(dir, "pki", "client-key.pem"), string(key))
			writeFile(t, filepath.Join(dir, "secrets", "token"), "file-token\n")
			writeFile(t, filepath.Join(dir, "secrets", "empty"), "")
			path := writeKubeconfig(t, dir, tc.kubeconfig)

			want, err := clientGoSends(path)
			if err != nil {
				t.Fatalf("client-go: %v", err)
			}
			if want.podURL == "" {
				t.Fatal("client-go sent nothing")
			}
			got, err := meshcniSends(path)
			if err != nil {
				t.Fatalf("NewClient: %v", err)
			}
			got.diff(t, want)
		})
	}
}

// TestKubeconfigErrors: kubeconfigs client-go refuses too, and those the
// plug-in refuses on purpose. Every error names the file and the field.
func TestKubeconfigErrors(t *testing.T) {
	ca := newCA(t)
	cert, key := ca.clientCert(t, "u")
	b64 := base64.StdEncoding.EncodeToString
	caData := b64(ca.pem)
	const server = "https://api.meshcni.test:6443"
	user := func(u string) string { return kubeconfig("{server: "+server+"}", u) }
	cluster := func(c string) string { return kubeconfig(c, "{token: t0}") }

	cases := []struct {
		name, kubeconfig string // "" writes no file
		want             string
		// clientGoTakes marks what the plug-in refuses on purpose:
		// clientcmd takes it.
		clientGoTakes bool
	}{
		{name: "missing file", want: "no such file"},
		{name: "empty file", kubeconfig: "\n", want: "empty"},
		{name: "bad YAML", kubeconfig: "clusters:\n\t- name: c\n", want: "yaml"},
		{name: "not a mapping", kubeconfig: "- a\n- b\n", want: "cannot unmarshal"},
		{name: "apiVersion v2", kubeconfig: strings.Replace(user("{token: t0}"), "apiVersion: v1", "apiVersion: v2", 1), want: `apiVersion "v2"`},
		{name: "kind", kubeconfig: strings.Replace(user("{token: t0}"), "kind: Config", "kind: Pod", 1), want: `kind "Pod"`},
		{name: "no current-context", kubeconfig: strings.Replace(user("{token: t0}"), "current-context: x", "", 1), want: "current-context is not set"},
		{name: "current-context missing", kubeconfig: strings.Replace(user("{token: t0}"), "current-context: x", "current-context: other", 1), want: `current-context "other"`},
		{name: "cluster missing", kubeconfig: strings.Replace(user("{token: t0}"), "{cluster: c,", "{cluster: gone,", 1), want: `cluster "gone"`},
		{name: "two clusters alike", kubeconfig: user("{token: t0}") + "clusters: [{name: c, cluster: {server: 'https://a'}}, {name: c, cluster: {server: 'https://b'}}]\n", want: `two clusters are named "c"`},
		{name: "no server", kubeconfig: cluster("{certificate-authority-data: " + caData + "}"), want: `cluster "c" has no server`},
		{name: "CA file missing", kubeconfig: cluster("{server: " + server + ", certificate-authority: missing.pem}"), want: "certificate-authority: open"},
		{name: "CA file and data", kubeconfig: cluster("{server: " + server + ", certificate-authority: $DIR/ca.pem, certificate-authority-data: " + caData + "}"), want: "certificate-authority and certificate-authority-data are both set"},
		{name: "CA not PEM", kubeconfig: cluster("{server: " + server + ", certificate-authority-data: " + b64([]byte("not a cert")) + "}"), want: "no PEM certificate"},
		{name: "CA data not base64", kubeconfig: cluster("{server: " + server + ", certificate-authority-data: '!!'}"), want: "base64"},
		{name: "insecure and CA", kubeconfig: cluster("{server: " + server + ", insecure-skip-tls-verify: true, certificate-authority-data: " + caData + "}"), want: "insecure-skip-tls-verify"},
		{name: "client cert without key", kubeconfig: user("{client-certificate-data: " + b64(cert) + "}"), want: "client-key"},
		{name: "client cert file and data", kubeconfig: user("{client-certificate: $DIR/cert.pem, client-certificate-data: " + b64(cert) + ", client-key-data: " + b64(key) + "}"), want: "client-certificate and client-certificate-data"},
		{name: "client key of another cert", kubeconfig: user("{client-certificate-data: " + b64(cert) + ", client-key-data: " + b64(ca.pem) + "}"), want: "client-key"},
		{name: "token and basic auth", kubeconfig: user("{token: t0, username: admin, password: p}"), want: "username/password"},
		{name: "tokenFile and username", kubeconfig: user("{tokenFile: $DIR/token, username: admin}"), want: "username/password"},
		{name: "tokenFile missing", kubeconfig: user("{tokenFile: missing}"), want: "tokenFile"},
		{name: "tokenFile empty", kubeconfig: user("{tokenFile: $DIR/empty}"), want: "tokenFile"},
		{name: "impersonation without as", kubeconfig: user("{token: t0, as-uid: '42'}"), want: "impersonation"},

		{name: "exec", kubeconfig: user("{exec: {apiVersion: client.authentication.k8s.io/v1, command: no-such-credential-plugin, interactiveMode: Never}}"), want: "exec credential plugins are not supported by the meshcni plug-in; use token", clientGoTakes: true},
		{name: "auth-provider", kubeconfig: user("{auth-provider: {name: oidc, config: {idp-issuer-url: 'https://idp'}}}"), want: "auth-provider is not supported by the meshcni plug-in; use token", clientGoTakes: true},
		{name: "as", kubeconfig: user("{token: t0, as: admin, as-groups: [system:masters]}"), want: "impersonation (as, as-uid, as-groups, as-user-extra) is not supported by the meshcni plug-in; grant this user", clientGoTakes: true},
		{name: "proxy-url", kubeconfig: cluster("{server: " + server + ", proxy-url: 'http://proxy:3128'}"), want: "proxy-url is not supported by the meshcni plug-in; set server", clientGoTakes: true},
		{name: "server without scheme", kubeconfig: cluster("{server: '10.0.0.1:6443'}"), want: "not an https:// URL", clientGoTakes: true},
		{name: "server ftp", kubeconfig: cluster("{server: 'ftp://10.0.0.1'}"), want: "not an https:// URL", clientGoTakes: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "ca.pem"), string(ca.pem))
			writeFile(t, filepath.Join(dir, "cert.pem"), string(cert))
			writeFile(t, filepath.Join(dir, "token"), "t1")
			writeFile(t, filepath.Join(dir, "empty"), "")
			path := filepath.Join(dir, "kubeconfig")
			if tc.kubeconfig != "" {
				path = writeKubeconfig(t, dir, tc.kubeconfig)
			}

			_, err := NewClient(path, time.Second)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewClient: %v; want an error naming %s and saying %q", err, path, tc.want)
			}
			if tc.clientGoTakes {
				// Building the config is enough: client-go would run exec
				// plugins and auth providers only when it sends.
				if _, err := clientcmd.BuildConfigFromFlags("", path); err != nil {
					t.Errorf("clientcmd refuses it too (%v): not a case of the plug-in's own", err)
				}
			} else if _, err := clientGoSends(path); err == nil {
				t.Error("client-go takes it; the plug-in should too")
			}
		})
	}
}

// TestKubeconfigPathRelativeToWorkingDir: a relative kubeconfig path and
// the relative paths in it resolve as in clientcmd.
func TestKubeconfigPathRelativeToWorkingDir(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "conf", "ca.pem"), string(ca.pem))
	writeFile(t, filepath.Join(dir, "conf", "token"), "file-token")
	writeKubeconfig(t, filepath.Join(dir, "conf"), kubeconfig("{server: 'https://h', certificate-authority: ca.pem}", "{tokenFile: token}"))
	t.Chdir(dir)
	want, err := clientGoSends("conf/kubeconfig")
	if err != nil {
		t.Fatal(err)
	}
	got, err := meshcniSends("conf/kubeconfig")
	if err != nil {
		t.Fatal(err)
	}
	got.diff(t, want)
	if got.authorization != "Bearer file-token" {
		t.Errorf("Authorization %q, want the tokenFile's", got.authorization)
	}
	if _, err := os.Stat(filepath.Join(dir, "ca.pem")); err == nil {
		t.Fatal("test set-up: ca.pem must not be in the working directory")
	}
}
