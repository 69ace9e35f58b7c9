// Package podinfo looks pods up in the Kubernetes API for the plug-in,
// retrying the errors that go away (pod not visible yet, API briefly
// unreachable), failing at once on those that don't (RBAC, auth), and
// turning each into the CNI error that says what to fix (Local). It runs
// in the meshcni-lookup helper, which the plug-in execs when the agent's
// pod cache cannot answer (internal/apilookup).
//
// It talks to the API with net/http and reads the kubeconfig itself, not
// through client-go: the helper is a new process for every lookup, and
// linking k8s.io/client-go and k8s.io/api cost start-up time on every
// exec (docs/performance.md). All it needs is one GET of one pod, decoded from JSON into
// podspec.Pod.
//
// The kubeconfig reader takes what a client on a node uses, with
// clientcmd's meaning (kubeconfig_test.go compares the two): the current
// context's cluster (server, path prefix kept; certificate-authority or
// its -data; insecure-skip-tls-verify; tls-server-name;
// disable-compression) and user (token, tokenFile, client-certificate and
// client-key or their -data, username and password). What the plug-in
// cannot honour is an error that names the field and says what to use:
// exec and auth-provider credentials, impersonation (as, as-uid,
// as-groups, as-user-extra) and proxy-url.
package podinfo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/meshcni/meshcni/internal/podspec"
)

// Getter returns a pod by namespace and name.
type Getter interface {
	GetPod(ctx context.Context, namespace, name string) (*podspec.Pod, error)
}

// APIError is a request the API server answered with an error: the HTTP
// status, and the reason and message of the Status object it sent.
type APIError struct {
	Code    int
	Reason  string
	Message string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Reason
	}
	return fmt.Sprintf("the API server answered %d %s", e.Code, msg)
}

func hasCode(err error, codes ...int) bool {
	var ae *APIError
	return errors.As(err, &ae) && slices.Contains(codes, ae.Code)
}

// IsNotFound: the API has no pod of that name (yet).
func IsNotFound(err error) bool { return hasCode(err, http.StatusNotFound) }

// IsForbidden: RBAC denies the plug-in's identity.
func IsForbidden(err error) bool { return hasCode(err, http.StatusForbidden) }

// IsUnauthorized: the API server rejected the credentials.
func IsUnauthorized(err error) bool { return hasCode(err, http.StatusUnauthorized) }

// ErrUIDMismatch: the API holds a different pod under that name (the pod
// was deleted and recreated) and never showed the expected one in time.
var ErrUIDMismatch = errors.New("pod UID does not match the sandbox's K8S_POD_UID")

// ErrNotThePod: a 2xx answer that is not the pod asked for (not JSON, or
// another object): something other than the API server answered, or
// changed the answer on the way.
var ErrNotThePod = errors.New("the API server's answer is not the pod asked for")

// Retry bounds the lookup.
type Retry struct {
	Attempts int
	Interval time.Duration
}

// Lookup gets the pod, retrying NotFound, a stale UID and transient
// errors up to r.Attempts times. wantUID may be empty (runtime didn't pass
// it). Permanent errors (401, 403, invalid) return at once.
func Lookup(ctx context.Context, g Getter, namespace, name, wantUID string, r Retry) (*podspec.Pod, error) {
	if r.Attempts < 1 {
		r.Attempts = 1
	}
	var lastErr error
	for i := 0; i < r.Attempts; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("pod %s/%s: %w (last error: %v)", namespace, name, ctx.Err(), lastErr)
			case <-time.After(r.Interval):
			}
		}
		pod, err := g.GetPod(ctx, namespace, name)
		switch {
		case err == nil && (wantUID == "" || pod.UID == wantUID):
			return pod, nil
		case err == nil:
			lastErr = fmt.Errorf("%w: API has %s, sandbox wants %s", ErrUIDMismatch, pod.UID, wantUID)
		case permanent(err):
			return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
		default:
			lastErr = err
		}
	}
	return nil, fmt.Errorf("get pod %s/%s: gave up after %d attempts: %w", namespace, name, r.Attempts, lastErr)
}

// permanent errors do not go away by asking again: bad credentials, RBAC,
// a request the server refuses.
func permanent(err error) bool {
	return hasCode(err, http.StatusUnauthorized, http.StatusForbidden, http.StatusBadRequest,
		http.StatusUnprocessableEntity, http.StatusMethodNotAllowed)
}

// Client is the Getter over the real API.
type Client struct {
	api     *apiConfig
	http    *http.Client
	timeout time.Duration
	// query is client-go's: the timeout, so the API server gives up when
	// the client does.
	query string
}

// maxBody bounds what the plug-in reads of an answer. A pod's JSON is
// well under it: etcd stores objects of at most 1.5 MiB by default.
const maxBody = 4 << 20

// NewClient builds a client from a kubeconfig file. The timeout bounds
// every request: a hung API must not hang pod start-up.
func NewClient(kubeconfig string, timeout time.Duration) (*Client, error) {
	api, err := loadKubeconfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	c := &Client{
		api:     api,
		timeout: timeout,
		http: &http.Client{
			Transport: &http.Transport{
				// As client-go does, and so as the plug-in did before: a
				// runtime that must reach the API through a proxy says so
				// in HTTPS_PROXY, and NO_PROXY exempts addresses.
				Proxy:           http.ProxyFromEnvironment,
				TLSClientConfig: api.tls,
				// A custom TLSClientConfig turns HTTP/2 off unless asked
				// for; client-go asks too.
				ForceAttemptHTTP2:  true,
				DisableCompression: api.disableCompression,
			},
		},
	}
	if timeout > 0 {
		c.query = url.Values{"timeout": {timeout.String()}}.Encode()
	}
	return c, nil
}

// GetPod implements Getter.
func (c *Client) GetPod(ctx context.Context, namespace, name string) (*podspec.Pod, error) {
	if err := pathSegment("namespace", namespace); err != nil {
		return nil, err
	}
	if err := pathSegment("pod name", name); err != nil {
		return nil, err
	}
	body, err := c.get(ctx, "/api/v1/namespaces/"+namespace+"/pods/"+name)
	if err != nil {
		return nil, err
	}
	pod := &podspec.Pod{}
	if err := json.Unmarshal(body, pod); err != nil {
		return nil, fmt.Errorf("%w: decode pod %s/%s: %v", ErrNotThePod, namespace, name, err)
	}
	if pod.Namespace != namespace || pod.Name != name {
		return nil, fmt.Errorf("%w: asked for %s/%s, got %q in namespace %q", ErrNotThePod, namespace, name, pod.Name, pod.Namespace)
	}
	return pod, nil
}

// Ready checks that the API answers with these credentials: what STATUS
// reports. A GET of /readyz needs no RBAC beyond authentication.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.get(ctx, "/readyz")
	return err
}

// pathSegment refuses what client-go refuses in a name: values that would
// change the path rather than name an object.
func pathSegment(what, s string) error {
	if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/%") {
		return fmt.Errorf("invalid %s %q", what, s)
	}
	return nil
}

// get returns the body of a 2xx answer to a GET of p under the server's
// URL (and its path prefix). An answer that is not 2xx is an *APIError.
func (c *Client) get(ctx context.Context, p string) ([]byte, error) {
	u := *c.api.server
	// Setting Path alone lets URL.String escape it.
	u.Path, u.RawPath = path.Join(u.Path, p), ""
	u.RawQuery = c.query
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "meshcni")
	if c.api.authorization != "" {
		req.Header.Set("Authorization", c.api.authorization)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// A *url.Error: it names the method, URL and cause.
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if cerr := ctx.Err(); cerr != nil {
		// Cut off by the timeout: over HTTP/2 the body can then end as if
		// complete, so a deadline that passed is what happened.
		return nil, fmt.Errorf("GET %s: read the answer: %w", u.Redacted(), cerr)
	}
	if err != nil {
		return nil, fmt.Errorf("GET %s: read the answer: %w", u.Redacted(), err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, apiError(resp.StatusCode, body)
	}
	if len(body) > maxBody {
		return nil, fmt.Errorf("GET %s: the answer is larger than %d MiB", u.Redacted(), maxBody>>20)
	}
	return body, nil
}

// apiError reads the Status object the API server sends with an error;
// from anything else in front of it (a proxy, a load balancer) it keeps
// the start of the body.
func apiError(code int, body []byte) *APIError {
	var st struct{ Kind, Reason, Message string }
	if json.Unmarshal(body, &st) == nil && st.Kind == "Status" {
		return &APIError{Code: code, Reason: st.Reason, Message: st.Message}
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = strings.ToValidUTF8(msg[:200], "") + "..."
	}
	if msg == "" {
		msg = http.StatusText(code)
	}
	return &APIError{Code: code, Message: msg}
}
