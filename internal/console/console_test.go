package console_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"k8s.io/client-go/rest"

	"github.com/meshcni/meshcni/internal/console"
	"github.com/meshcni/meshcni/internal/ctl"
)

// unreachable is an API server nobody answers at: a test that reaches it
// fails with 502, so a 4xx proves the handler refused before any API call.
var unreachable = &rest.Config{Host: "https://127.0.0.1:1"}

func newHandler(t *testing.T) http.Handler {
	t.Helper()
	h, err := console.New(console.Options{Config: unreachable, Namespace: "meshcni-system"})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func do(h http.Handler, method, path, body string, hdr map[string]string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestNewNeedsConfigAndNamespace(t *testing.T) {
	if _, err := console.New(console.Options{Namespace: "x"}); err == nil {
		t.Error("New without a rest.Config succeeded")
	}
	if _, err := console.New(console.Options{Config: unreachable}); err == nil {
		t.Error("New without the agents' namespace succeeded")
	}
}

func TestThePageIsServedWithItsOwnOriginOnly(t *testing.T) {
	h := newHandler(t)
	for path, want := range map[string]string{"/": "Enable the mesh CNI plug-in", "/app.js": "EventSource", "/app.css": ".switch"} {
		w := do(h, http.MethodGet, path, "", nil)
		if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), want) {
			t.Errorf("GET %s: %d, body lacks %q", path, w.Code, want)
		}
		if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
	}
	// No external asset: every src and href is relative.
	page := do(h, http.MethodGet, "/", "", nil).Body.String()
	for _, bad := range []string{"http://", "https://", `src="/`, `href="/`} {
		if strings.Contains(page, bad) {
			t.Errorf("the page contains %q: it must load nothing from elsewhere and use relative URLs (service proxy)", bad)
		}
	}
}

func TestRequestsWithoutATokenAreRefused(t *testing.T) {
	h := newHandler(t)
	forged := map[string]string{
		"Impersonate-User": "system:admin", "Impersonate-Group": "system:masters",
		"X-Remote-User": "system:admin", "X-Remote-Group": "system:masters",
		"Authorization": "Basic YWRtaW46YWRtaW4=", "X-Meshcni-Console": "1", "Content-Type": "application/json",
	}
	for _, tc := range []struct{ method, path string }{
		{http.MethodGet, "/api/state"}, {http.MethodGet, "/api/events"}, {http.MethodPost, "/api/settings"},
	} {
		w := do(h, tc.method, tc.path, `{"enabled":true,"excludeNamespaces":[]}`, forged)
		if w.Code != http.StatusUnauthorized || !strings.Contains(w.Body.String(), "meshcnictl console") {
			t.Errorf("%s %s without a bearer token: %d %s", tc.method, tc.path, w.Code, w.Body)
		}
	}
}

func TestWritesAreCheckedBeforeAnyAPICall(t *testing.T) {
	h := newHandler(t)
	auth := map[string]string{"Authorization": "Bearer tok", "X-Meshcni-Console": "1", "Content-Type": "application/json"}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range auth {
			m[a] = b
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name string
		hdr  map[string]string
		body string
		code int
		msg  string
	}{
		{"no CSRF header", with("X-Meshcni-Console", ""), `{"enabled":true,"excludeNamespaces":[]}`, 403, "X-Meshcni-Console"},
		{"a form post", with("Content-Type", "application/x-www-form-urlencoded"), `enabled=true`, 415, "application/json"},
		{"not JSON", auth, `{`, 400, "bad settings"},
		{"an unknown field", auth, `{"enabled":true,"excludeNamespaces":[],"image":"evil"}`, 400, "unknown field"},
		{"excludes missing", auth, `{"enabled":true}`, 400, "excludeNamespaces is required"},
		{"a bad namespace name", auth, `{"enabled":true,"excludeNamespaces":["Kube_System"]}`, 400, "Kube_System"},
		{"a namespace twice", auth, `{"enabled":true,"excludeNamespaces":["a","a"]}`, 400, "twice"},
		{"a huge body", auth, `{"enabled":true,"excludeNamespaces":["` + strings.Repeat("a", 70<<10) + `"]}`, 400, "bad settings"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := do(h, http.MethodPost, "/api/settings", tc.body, tc.hdr)
			if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.msg) {
				t.Errorf("got %d %s, want %d with %q", w.Code, w.Body, tc.code, tc.msg)
			}
		})
	}
}

func TestTheHashAnnotationIsTheChartsOne(t *testing.T) {
	if console.ConfigHashAnnotation != ctl.ConfigHashAnnotation {
		t.Errorf("console reads %q, the chart writes %q", console.ConfigHashAnnotation, ctl.ConfigHashAnnotation)
	}
}

func TestServiceProxyURL(t *testing.T) {
	for host, want := range map[string]string{
		"https://10.0.0.1:6443":         "https://10.0.0.1:6443/api/v1/namespaces/meshcni-system/services/https:meshcni-controller:console/proxy/",
		"https://lb.example/k8s/":       "https://lb.example/k8s/api/v1/namespaces/meshcni-system/services/https:meshcni-controller:console/proxy/",
		"https://rancher.example/k8s/c": "https://rancher.example/k8s/c/api/v1/namespaces/meshcni-system/services/https:meshcni-controller:console/proxy/",
	} {
		u, err := console.ServiceProxyURL(&rest.Config{Host: host}, "meshcni-system", "https:meshcni-controller", "console")
		if err != nil || u.String() != want {
			t.Errorf("%s: got %v %v, want %s", host, u, err, want)
		}
	}
	if _, err := console.ServiceProxyURL(&rest.Config{Host: "::"}, "a", "b", "c"); err == nil {
		t.Error("a server that is not a URL was accepted")
	}
}

// recorder is the console's side: it records what the forwarder sent.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Clone(req.Context()))
	r.mu.Unlock()
	io.WriteString(w, "ok")
}

func (r *recorder) last() *http.Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.reqs[len(r.reqs)-1]
}

func TestForwarder(t *testing.T) {
	rec := &recorder{}
	backend := httptest.NewServer(rec)
	defer backend.Close()
	target, _ := url.Parse(backend.URL + "/api/v1/namespaces/meshcni-system/services/https:meshcni-controller:console/proxy/")
	srv := httptest.NewUnstartedServer(nil)
	listen := srv.Listener.Addr().String()
	fwd, err := console.NewForwarder(target, &rest.Config{Host: backend.URL, BearerToken: "user-token"}, listen)
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = fwd
	srv.Start()
	defer srv.Close()

	send := func(method, host, path string, hdr map[string]string) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader("{}"))
		req.Host = host
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	// The browser's own credentials and identity claims never travel; the
	// kubeconfig's token does, in both headers.
	code := send(http.MethodGet, listen, "/api/state", map[string]string{
		"Authorization": "Bearer browser-token", "X-Meshcni-Authorization": "Bearer browser-token",
		"Impersonate-User": "system:admin", "Impersonate-Extra-Scopes": "all", "Cookie": "a=b",
	})
	if code != http.StatusOK {
		t.Fatalf("GET through the forwarder: %d", code)
	}
	got := rec.last()
	if got.URL.Path != target.Path+"api/state" {
		t.Errorf("forwarded to %s, want %sapi/state", got.URL.Path, target.Path)
	}
	for h, want := range map[string]string{
		"Authorization": "Bearer user-token", console.TokenHeader: "Bearer user-token",
		"Impersonate-User": "", "Impersonate-Extra-Scopes": "", "Cookie": "",
	} {
		if v := got.Header.Get(h); v != want {
			t.Errorf("forwarded %s = %q, want %q", h, v, want)
		}
	}

	// Through "localhost" too, which is the same loopback listener.
	_, port, _ := strings.Cut(listen, ":")
	if code := send(http.MethodGet, "localhost:"+port, "/", nil); code != http.StatusOK {
		t.Errorf("GET with Host localhost:%s: %d", port, code)
	}
	n := len(rec.reqs)
	// DNS rebinding: a page of evil.example resolved to 127.0.0.1.
	if code := send(http.MethodGet, "evil.example:"+port, "/api/state", nil); code != http.StatusMisdirectedRequest {
		t.Errorf("GET with a foreign Host: %d, want 421", code)
	}
	// CSRF: another origin's page posting to the loopback port.
	if code := send(http.MethodPost, listen, "/api/settings", map[string]string{"Origin": "https://evil.example"}); code != http.StatusForbidden {
		t.Errorf("POST from another Origin: %d, want 403", code)
	}
	if len(rec.reqs) != n {
		t.Errorf("refused requests reached the console")
	}
	if code := send(http.MethodPost, listen, "/api/settings", map[string]string{"Origin": "http://" + listen}); code != http.StatusOK {
		t.Errorf("POST from the page's own origin: %d", code)
	}
}
