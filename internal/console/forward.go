package console

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"

	"k8s.io/client-go/rest"
)

// ServiceProxyURL is the API server's proxy to a Service's port:
// https://API/api/v1/namespaces/NS/services/https:NAME:PORT/proxy/.
func ServiceProxyURL(cfg *rest.Config, namespace, service, port string) (*url.URL, error) {
	base, err := url.Parse(cfg.Host)
	if err != nil || base.Host == "" {
		return nil, fmt.Errorf("the kubeconfig's server %q is not a URL", cfg.Host)
	}
	if base.Scheme == "" {
		base.Scheme = "https"
	}
	base.Path = strings.TrimSuffix(base.Path, "/") + fmt.Sprintf("/api/v1/namespaces/%s/services/%s/proxy/", url.PathEscape(namespace), url.PathEscape(service+":"+port))
	return base, nil
}

// NewForwarder is the browser's side of the console: a reverse proxy on
// loopback that sends each request to target (the service proxy URL, or the
// console itself) with the user's kubeconfig credentials, and copies the
// bearer token those credentials put in Authorization into TokenHeader,
// which reaches the console through the service proxy. listen is the
// host:port the browser uses: other Host headers are refused (a DNS
// rebinding page cannot borrow the user's credentials), and so are writes
// from another Origin.
func NewForwarder(target *url.URL, cfg *rest.Config, listen string) (http.Handler, error) {
	cfg = rest.CopyConfig(cfg)
	// Innermost wrapper: it sees the request after every credential
	// wrapper (static token, token file, exec plug-in, auth provider) set
	// Authorization.
	prev := cfg.WrapTransport
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper {
		rt = copyToken{rt}
		if prev != nil {
			rt = prev(rt)
		}
		return rt
	}
	rt, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, err
	}
	base := strings.TrimSuffix(target.Path, "/")
	proxy := &httputil.ReverseProxy{
		Transport: rt,
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = target.Scheme
			pr.Out.URL.Host = target.Host
			pr.Out.URL.Path = base + pr.In.URL.Path
			pr.Out.URL.RawPath = ""
			pr.Out.Host = target.Host
			// Only the kubeconfig's credentials travel, never the browser's.
			for _, h := range []string{"Authorization", TokenHeader, "Cookie", "Impersonate-User", "Impersonate-Group", "Impersonate-Uid"} {
				pr.Out.Header.Del(h)
			}
			for k := range pr.Out.Header {
				if strings.HasPrefix(k, "Impersonate-Extra-") {
					pr.Out.Header.Del(k)
				}
			}
		},
		// The state stream must reach the page as each event is written.
		FlushInterval: -1,
	}
	return Guard(listen, proxy), nil
}

// Guard lets through only requests addressed to listen (the loopback
// host:port a local console serves on), and writes only from that origin,
// so that no other web page can use the user's credentials through it:
// not by DNS rebinding (a foreign Host) nor by posting across origins.
func Guard(listen string, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !sameHost(r.Host, listen) {
			http.Error(w, "meshcnictl console answers only to "+listen, http.StatusMisdirectedRequest)
			return
		}
		if o := r.Header.Get("Origin"); o != "" && r.Method != http.MethodGet && r.Method != http.MethodHead {
			if u, err := url.Parse(o); err != nil || !sameHost(u.Host, listen) {
				http.Error(w, "cross-origin request refused", http.StatusForbidden)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// sameHost compares host:port pairs, taking "localhost" for the loopback
// address the forwarder listens on.
func sameHost(got, listen string) bool {
	if got == listen {
		return true
	}
	gh, gp, err1 := net.SplitHostPort(got)
	lh, lp, err2 := net.SplitHostPort(listen)
	if err1 != nil || err2 != nil || gp != lp {
		return false
	}
	loop := func(h string) bool { ip := net.ParseIP(h); return h == "localhost" || (ip != nil && ip.IsLoopback()) }
	return gh == lh || (loop(gh) && loop(lh))
}

// copyToken copies a bearer Authorization into TokenHeader, which the API
// server's service proxy passes on (it removes Authorization).
type copyToken struct{ next http.RoundTripper }

func (c copyToken) RoundTrip(r *http.Request) (*http.Response, error) {
	if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
		r = r.Clone(r.Context())
		r.Header.Set(TokenHeader, a)
	}
	return c.next.RoundTrip(r)
}
