package podcache

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/meshcni/meshcni/internal/podspec"
	"github.com/meshcni/meshcni/internal/trust"
)

// Client asks the agent's socket. A plug-in process asks once, so each
// question is one exchange on its own connection: no pooling, no
// goroutine of its own.
type Client struct {
	path string
}

// NewClient returns a client for the socket at path. Bound each call with
// its context: the plug-in must fall back to the API quickly.
func NewClient(path string) *Client { return &Client{path: path} }

// do writes req on a new connection and returns the answer's line (at
// most maxBody bytes, without its newline). The context's end closes the
// exchange.
func (c *Client) do(ctx context.Context, req []byte) ([]byte, error) {
	// Only the agent (root) may answer: a pod spec from anyone else could
	// say "inject: false" and start a mesh pod uncaptured. trust.Dial
	// checks the socket's directory and file before anything is sent,
	// and the server's SO_PEERCRED once connected.
	conn, err := trust.Dial(ctx, c.path)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(req); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(io.LimitReader(conn, maxBody)).ReadBytes('\n')
	switch {
	case err == nil:
		return line[:len(line)-1], nil
	case !errors.Is(err, io.EOF):
		return nil, fmt.Errorf("read answer: %w", err)
	case len(line) >= maxBody:
		return nil, fmt.Errorf("answer longer than %d bytes", maxBody)
	case len(line) == 0:
		return nil, errors.New("the agent closed the connection without an answer")
	default:
		return nil, fmt.Errorf("answer cut short after %d bytes", len(line))
	}
}

// Pod returns the pod namespace/name with UID uid, or an error:
// ErrNotFound, ErrStale, ErrNotSynced, or whatever kept the agent from
// answering. A pod is returned only if its namespace, name and UID are
// the ones asked for.
func (c *Client) Pod(ctx context.Context, namespace, name, uid string) (*podspec.Pod, error) {
	req, err := json.Marshal(request{Namespace: namespace, Name: name, UID: uid})
	if err != nil {
		return nil, err
	}
	line, err := c.do(ctx, append(req, '\n'))
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("pod cache: %w", err)
	}
	var a answer
	if err := json.Unmarshal(line, &a); err != nil {
		return nil, fmt.Errorf("pod cache: decode answer: %w", err)
	}
	switch a.Result {
	case ResultHit:
	case ResultNotFound:
		return nil, ErrNotFound
	case ResultStale:
		return nil, fmt.Errorf("%w%s", ErrStale, strings.TrimPrefix(a.Error, ErrStale.Error()))
	case ResultNotSynced:
		return nil, ErrNotSynced
	default:
		return nil, fmt.Errorf("pod cache: %q: %s", a.Result, a.Error)
	}
	pod := a.Pod
	if pod == nil {
		return nil, errors.New("pod cache: a hit without a pod")
	}
	if pod.Namespace != namespace || pod.Name != name || (uid != "" && pod.UID != uid) {
		return nil, fmt.Errorf("%w: asked for %s/%s %s, got %s/%s %s", ErrStale, namespace, name, uid, pod.Namespace, pod.Name, pod.UID)
	}
	return pod, nil
}
