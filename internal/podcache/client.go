package podcache

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/meshcni/meshcni/internal/podspec"
)

// maxBody bounds a pod answer (the API server's own limit on an object
// is 1.5 MiB in etcd).
const maxBody = 4 << 20

// Client asks the agent's socket. A plug-in process asks once, so each
// question is one HTTP/1.1 exchange on its own connection, written and
// read with net/http's Request.Write and ReadResponse: an http.Transport
// would add connection pooling and two goroutines per connection, which
// cost a fresh process more than the question itself.
type Client struct {
	path string
}

// NewClient returns a client for the socket at path. Bound each call with
// its context: the plug-in must fall back to the API quickly.
func NewClient(path string) *Client { return &Client{path: path} }

// do sends req on a new connection and returns the answer's status, type
// and body (at most maxBody).
func (c *Client) do(ctx context.Context, req *http.Request) (*http.Response, []byte, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := req.Write(conn); err != nil {
		return nil, nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, nil, fmt.Errorf("read answer: %w", err)
	}
	return resp, body, nil
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
	resp, body, err := c.do(ctx, req)
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("pod cache: %w", err)
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
