package podcache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/meshcni/meshcni/internal/podspec"
)

// maxBody bounds a pod answer (the API server's own limit on an object
// is 1.5 MiB in etcd).
const maxBody = 4 << 20

// Client asks the agent's socket. One plug-in process asks once, so it
// keeps no connection open.
type Client struct {
	hc *http.Client
}

// NewClient returns a client for the socket at path. Bound each call with
// its context: the plug-in must fall back to the API quickly.
func NewClient(path string) *Client {
	return &Client{hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}}}
}

// Pod returns the pod namespace/name with UID uid, or an error:
// ErrNotFound, ErrStale, ErrNotSynced, or whatever kept the agent from
// answering. A pod is returned only if its namespace, name and UID are
// the ones asked for.
func (c *Client) Pod(ctx context.Context, namespace, name, uid string) (*podspec.Pod, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+requestPath(namespace, name, uid), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error // the URL is ours, not news
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("pod cache: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, fmt.Errorf("pod cache: read answer: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, ErrNotFound
	case http.StatusConflict:
		return nil, fmt.Errorf("%w%s", ErrStale, strings.TrimPrefix(strings.TrimSpace(string(body)), ErrStale.Error()))
	case http.StatusServiceUnavailable:
		return nil, ErrNotSynced
	default:
		return nil, fmt.Errorf("pod cache: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	pod := &podspec.Pod{}
	if err := json.Unmarshal(body, pod); err != nil {
		return nil, fmt.Errorf("pod cache: decode pod: %w", err)
	}
	if pod.Namespace != namespace || pod.Name != name || (uid != "" && pod.UID != uid) {
		return nil, fmt.Errorf("%w: asked for %s/%s %s, got %s/%s %s", ErrStale, namespace, name, uid, pod.Namespace, pod.Name, pod.UID)
	}
	return pod, nil
}
