package podinfo

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshcni/meshcni/internal/podspec"
)

// podJSON is a pod as the API server sends it, with more than podspec.Pod
// reads.
const podJSON = `{
  "kind": "Pod", "apiVersion": "v1",
  "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1", "resourceVersion": "7",
    "annotations": {"sidecar.istio.io/status": "{}"}, "managedFields": [{"manager": "kubelet"}]},
  "spec": {"nodeName": "n1",
    "initContainers": [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
      "securityContext": {"runAsUser": 1337}}],
    "containers": [{"name": "app", "image": "shop", "env": [{"name": "A", "value": "1"},
      {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}],
    "securityContext": {"runAsGroup": 1000}},
  "status": {"phase": "Pending", "podIPs": [{"ip": "10.1.0.7"}, {"ip": "fd00::7"}]}
}`

func int64p(v int64) *int64 { return &v }

var wantPod = &podspec.Pod{
	ObjectMeta: podspec.ObjectMeta{Name: "web-0", Namespace: "shop", UID: "u-1",
		Annotations: map[string]string{"sidecar.istio.io/status": "{}"}},
	Spec: podspec.PodSpec{
		InitContainers: []podspec.Container{{Name: "proxy", RestartPolicy: "Always",
			SecurityContext: &podspec.SecurityContext{RunAsUser: int64p(1337)}}},
		Containers:      []podspec.Container{{Name: "app", Env: []podspec.EnvVar{{Name: "A", Value: "1"}, {Name: "B"}}}},
		SecurityContext: &podspec.SecurityContext{RunAsGroup: int64p(1000)},
	},
	Status: podspec.PodStatus{PodIPs: []podspec.PodIP{{IP: "10.1.0.7"}, {IP: "fd00::7"}}},
}

// status is a Status object as the API server sends with an error.
func status(code int, reason, message string) string {
	return fmt.Sprintf(`{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":%q,"reason":%q,"code":%d}`, message, reason, code)
}

// tokenKubeconfig writes a kubeconfig for srv's URL plus prefix that
// trusts caPEM and reads its token from a file beside it.
func tokenKubeconfig(t *testing.T, server string, caPEM []byte, token string) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "token"), token+"\n")
	return writeKubeconfig(t, dir, kubeconfig(
		"{server: '"+server+"', certificate-authority-data: "+base64.StdEncoding.EncodeToString(caPEM)+"}",
		"{tokenFile: token}"))
}

func newClient(t *testing.T, kubeconfig string, timeout time.Duration) *Client {
	t.Helper()
	c, err := NewClient(kubeconfig, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestGetPod(t *testing.T) {
	for _, tc := range []struct {
		name, prefix, namespace, pod, wantURI string
	}{
		{"plain", "", "shop", "web-0", "/api/v1/namespaces/shop/pods/web-0?timeout=5s"},
		{"server path prefix", "/k8s/clusters/c-1", "shop", "web-0", "/k8s/clusters/c-1/api/v1/namespaces/shop/pods/web-0?timeout=5s"},
		{"escaped", "/k8s", "shop", "web 0?#", "/k8s/api/v1/namespaces/shop/pods/web%200%3F%23?timeout=5s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newCA(t)
			reqs := make(chan *http.Request, 1)
			srv := newAPIServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reqs <- r.Clone(context.Background())
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprint(w, strings.Replace(podJSON, `"web-0"`, strconv.Quote(path.Base(r.URL.Path)), 1))
			}))
			c := newClient(t, tokenKubeconfig(t, srv.URL+tc.prefix, ca.pem, "the-token"), 5*time.Second)
			pod, err := c.GetPod(context.Background(), tc.namespace, tc.pod)
			if err != nil {
				t.Fatal(err)
			}
			want := *wantPod
			want.Name = tc.pod
			if !reflect.DeepEqual(pod, &want) {
				t.Errorf("pod:\n got %+v\nwant %+v", pod, &want)
			}
			r := <-reqs
			if r.RequestURI != tc.wantURI {
				t.Errorf("request URI %s, want %s", r.RequestURI, tc.wantURI)
			}
			for k, want := range map[string]string{"Authorization": "Bearer the-token", "Accept": "application/json", "User-Agent": "meshcni"} {
				if r.Header.Get(k) != want {
					t.Errorf("%s: %q, want %q", k, r.Header.Get(k), want)
				}
			}
		})
	}
}

func TestGetPodRefusesNamesThatChangeThePath(t *testing.T) {
	ca := newCA(t)
	var requests atomic.Int32
	srv := newAPIServer(t, ca, http.HandlerFunc(func(http.ResponseWriter, *http.Request) { requests.Add(1) }))
	c := newClient(t, tokenKubeconfig(t, srv.URL, ca.pem, "t"), 5*time.Second)
	for _, nsName := range [][2]string{{"shop", ""}, {"", "web-0"}, {"shop", "a/b"}, {"shop", ".."}, {"..", "x"}, {"shop", "%2F"}} {
		if _, err := c.GetPod(context.Background(), nsName[0], nsName[1]); err == nil || !strings.Contains(err.Error(), "invalid") {
			t.Errorf("GetPod(%q, %q): %v, want invalid", nsName[0], nsName[1], err)
		}
	}
	if n := requests.Load(); n != 0 {
		t.Errorf("%d requests sent", n)
	}
}

func TestAPIErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		code   int
		body   string
		want   APIError
		is     string // the predicate that holds
		lookup bool   // Lookup retries it
	}{
		{"not found", 404, status(404, "NotFound", `pods "web-0" not found`),
			APIError{404, "NotFound", `pods "web-0" not found`}, "NotFound", true},
		{"forbidden", 403, status(403, "Forbidden", `pods "web-0" is forbidden: User "system:serviceaccount:x:y" cannot get resource "pods"`),
			APIError{403, "Forbidden", `pods "web-0" is forbidden: User "system:serviceaccount:x:y" cannot get resource "pods"`}, "Forbidden", false},
		{"unauthorized", 401, status(401, "Unauthorized", "Unauthorized"),
			APIError{401, "Unauthorized", "Unauthorized"}, "Unauthorized", false},
		{"internal", 500, status(500, "InternalError", "etcdserver: request timed out"),
			APIError{500, "InternalError", "etcdserver: request timed out"}, "", true},
		{"not a Status", 502, "<html><body>502 Bad Gateway</body></html>\n",
			APIError{Code: 502, Message: "<html><body>502 Bad Gateway</body></html>"}, "", true},
		{"JSON, not a Status", 404, `{"error":"no route"}`,
			APIError{Code: 404, Message: `{"error":"no route"}`}, "NotFound", true},
		{"empty", 401, "", APIError{Code: 401, Message: "Unauthorized"}, "Unauthorized", false},
		{"long", 503, strings.Repeat("x", 5000), APIError{Code: 503, Message: strings.Repeat("x", 200) + "..."}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newCA(t)
			var requests atomic.Int32
			srv := newAPIServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				w.WriteHeader(tc.code)
				fmt.Fprint(w, tc.body)
			}))
			c := newClient(t, tokenKubeconfig(t, srv.URL, ca.pem, "t"), 5*time.Second)
			_, err := c.GetPod(context.Background(), "shop", "web-0")
			var ae *APIError
			if !errors.As(err, &ae) || *ae != tc.want {
				t.Fatalf("GetPod: %#v, want %#v", err, &tc.want)
			}
			for name, is := range map[string]func(error) bool{"NotFound": IsNotFound, "Forbidden": IsForbidden, "Unauthorized": IsUnauthorized} {
				if is(err) != (name == tc.is) {
					t.Errorf("Is%s(%v) = %v", name, err, is(err))
				}
			}

			requests.Store(0)
			_, err = Lookup(context.Background(), c, "shop", "web-0", "", Retry{Attempts: 3, Interval: time.Millisecond})
			want := int32(1)
			if tc.lookup {
				want = 3
			}
			if n := requests.Load(); err == nil || n != want {
				t.Errorf("Lookup: %v after %d requests, want an error after %d", err, n, want)
			}
		})
	}
}

func TestLookupRetriesNotFound(t *testing.T) {
	ca := newCA(t)
	var requests atomic.Int32
	srv := newAPIServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		if requests.Add(1) < 3 {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, status(404, "NotFound", `pods "web-0" not found`))
			return
		}
		fmt.Fprint(w, podJSON)
	}))
	c := newClient(t, tokenKubeconfig(t, srv.URL, ca.pem, "t"), 5*time.Second)
	pod, err := Lookup(context.Background(), c, "shop", "web-0", "u-1", Retry{Attempts: 5, Interval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if pod.UID != "u-1" || requests.Load() != 3 {
		t.Errorf("pod %s after %d requests, want u-1 after 3", pod.UID, requests.Load())
	}
}

func TestTimeoutBoundsAHungServer(t *testing.T) {
	ca := newCA(t)
	srv := newAPIServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	c := newClient(t, tokenKubeconfig(t, srv.URL, ca.pem, "t"), 200*time.Millisecond)
	start := time.Now()
	_, err := c.GetPod(context.Background(), "shop", "web-0")
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("GetPod: %v, want a timeout", err)
	}
	var ae *APIError
	if errors.As(err, &ae) {
		t.Errorf("a timeout is an APIError: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
	if err := c.Ready(context.Background()); err == nil {
		t.Error("Ready: no error from a hung server")
	}
}

func TestTLS(t *testing.T) {
	ca, otherCA := newCA(t), newCA(t)
	cert, key := ca.clientCert(t, "system:node:n1")
	b64 := base64.StdEncoding.EncodeToString
	var clientCN atomic.Value
	clientCN.Store("")
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) > 0 {
			clientCN.Store(r.TLS.PeerCertificates[0].Subject.CommonName)
		}
		fmt.Fprint(w, "ok")
	})
	byIP := newAPIServer(t, ca, ok)
	byName := newAPIServer(t, ca, ok, "api.meshcni.test")

	for _, tc := range []struct {
		name, server, cluster, user string
		wantErr                     string
		wantCN                      string
	}{
		{name: "the cluster's CA", server: byIP.URL, cluster: "certificate-authority-data: " + b64(ca.pem)},
		{name: "another CA", server: byIP.URL, cluster: "certificate-authority-data: " + b64(otherCA.pem), wantErr: "certificate signed by unknown authority"},
		{name: "system roots", server: byIP.URL, wantErr: "certificate signed by unknown authority"},
		{name: "insecure", server: byIP.URL, cluster: "insecure-skip-tls-verify: true"},
		{name: "name not in the certificate", server: byName.URL, cluster: "certificate-authority-data: " + b64(ca.pem), wantErr: "127.0.0.1"},
		{name: "tls-server-name", server: byName.URL, cluster: "certificate-authority-data: " + b64(ca.pem) + ", tls-server-name: api.meshcni.test"},
		{name: "client certificate", server: byIP.URL, cluster: "certificate-authority-data: " + b64(ca.pem),
			user: "client-certificate: client.pem, client-key: client-key.pem", wantCN: "system:node:n1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, filepath.Join(dir, "client.pem"), string(cert))
			writeFile(t, filepath.Join(dir, "client-key.pem"), string(key))
			clientCN.Store("")
			c := newClient(t, writeKubeconfig(t, dir, kubeconfig("{server: '"+tc.server+"', "+tc.cluster+"}", "{"+tc.user+"}")), 5*time.Second)
			err := c.Ready(context.Background())
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("Ready: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("Ready: %v, want %q", err, tc.wantErr)
			}
			if got := clientCN.Load(); got != tc.wantCN {
				t.Errorf("client certificate %q, want %q", got, tc.wantCN)
			}
		})
	}
}

func TestReady(t *testing.T) {
	ca := newCA(t)
	var uri atomic.Value
	var failing atomic.Bool
	srv := newAPIServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		uri.Store(r.RequestURI)
		if failing.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprint(w, "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed\n")
			return
		}
		fmt.Fprint(w, "ok")
	}))
	c := newClient(t, tokenKubeconfig(t, srv.URL+"/k8s/clusters/c-1/", ca.pem, "t"), 5*time.Second)
	if err := c.Ready(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := uri.Load(); got != "/k8s/clusters/c-1/readyz?timeout=5s" {
		t.Errorf("request URI %s", got)
	}
	failing.Store(true)
	err := c.Ready(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != 500 || !strings.Contains(ae.Message, "[-]etcd failed") {
		t.Errorf("Ready: %v, want the API's 500 and its checks", err)
	}
}

func TestBadAnswers(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"too large", `{"metadata":{"name":"` + strings.Repeat("x", maxBody) + `"}}`, "larger than 4 MiB"},
		{"not JSON", "<html>login</html>", "decode pod shop/web-0"},
		{"another pod", strings.Replace(podJSON, `"web-0"`, `"impostor"`, 1), `asked for shop/web-0, got "impostor"`},
		{"not a pod", `{"kind":"List","apiVersion":"v1","items":[]}`, `asked for shop/web-0, got ""`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newCA(t)
			srv := newAPIServer(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprint(w, tc.body)
			}))
			c := newClient(t, tokenKubeconfig(t, srv.URL, ca.pem, "t"), 5*time.Second)
			_, err := c.GetPod(context.Background(), "shop", "web-0")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("GetPod: %v, want %q", err, tc.want)
			}
			if tc.name != "too large" && !errors.Is(err, ErrNotThePod) {
				t.Errorf("GetPod: %v, want ErrNotThePod", err)
			}
		})
	}
}
