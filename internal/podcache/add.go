package podcache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

// addPath is where the plug-in hands an ADD to the agent.
const addPath = "/v1/add"

// AddRequest is an ADD the plug-in hands to the agent: its CNI
// invocation, with the pod's netns as a file descriptor (SCM_RIGHTS) on
// the request's first byte. The agent programs the netns it received,
// never a path, so it needs no view of the runtime's mounts.
type AddRequest struct {
	ContainerID string `json:"containerID"`
	// Netns is the runtime's path of the netns, for messages only.
	Netns  string `json:"netns"`
	IfName string `json:"ifName"`
	Args   string `json:"args"`
	Path   string `json:"path"`
	// Config is the plug-in's stdin: its entry with prevResult.
	Config json.RawMessage `json:"config"`
}

// AddResult is the agent's answer.
type AddResult struct {
	// Done: the agent ran the ADD and logged its decision; Error, when
	// set, is the CNI error the ADD fails with.
	Done  bool         `json:"done,omitempty"`
	Error *types.Error `json:"error,omitempty"`
	// Miss: the agent did not run the ADD because its watch cannot answer
	// for the pod (not synced, not found, another UID); the plug-in runs
	// it itself and asks the API.
	Miss string `json:"miss,omitempty"`
}

// ErrAddUnsupported: the agent at the socket does not take ADDs (an
// older agent); its pod lookup may still answer.
var ErrAddUnsupported = errors.New("pod cache: the agent does not take ADDs")

// Add hands an ADD to the agent with the netns open at netnsFD (which
// stays the caller's to close). An error means the agent did not answer
// (ErrAddUnsupported, no socket, timeout): it may or may not have run
// the ADD, which is idempotent.
func (c *Client) Add(ctx context.Context, req *AddRequest, netnsFD int) (*AddResult, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://agent"+addPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, answer, err := c.exchange(ctx, hr, unix.UnixRights(netnsFD))
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("pod cache: hand the ADD to the agent: %w", err)
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusBadRequest, http.StatusMethodNotAllowed:
		// An agent from before ADDs were handed over answers every path
		// but a pod lookup with one of these.
		if !strings.Contains(resp.Header.Get("Content-Type"), "application/json") {
			return nil, fmt.Errorf("%w (%s)", ErrAddUnsupported, resp.Status)
		}
		fallthrough
	default:
		return nil, fmt.Errorf("pod cache: ADD: %s: %s", resp.Status, strings.TrimSpace(string(answer)))
	}
	res := &AddResult{}
	if err := json.Unmarshal(answer, res); err != nil {
		return nil, fmt.Errorf("pod cache: decode the ADD's result: %w", err)
	}
	if res.Done == (res.Miss != "") {
		return nil, fmt.Errorf("pod cache: the agent's ADD result is neither done nor a miss: %s", answer)
	}
	return res, nil
}

// AddFunc runs an ADD in the agent. It owns netnsFD and closes it.
type AddFunc func(ctx context.Context, req *AddRequest, netnsFD int) *AddResult

func (h *Handler) serveAdd(w http.ResponseWriter, r *http.Request) {
	fd, err := takeFD(r.Context())
	if err != nil {
		jsonError(w, err.Error(), http.StatusBadRequest)
		return
	}
	req := &AddRequest{}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(req); err != nil {
		_ = unix.Close(fd)
		jsonError(w, "decode the ADD request: "+err.Error(), http.StatusBadRequest)
		return
	}
	res := h.Add(r.Context(), req, fd)
	b, err := json.Marshal(res)
	if err != nil {
		jsonError(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// jsonError answers with a JSON error body, so that the client can tell
// this agent's refusals from an older agent's 404.
func jsonError(w http.ResponseWriter, msg string, code int) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	b, _ := json.Marshal(map[string]string{"error": msg})
	_, _ = w.Write(b)
}

// Net.Conn from FDListener, found in a request's context.
type connKey struct{}

// ConnContext is the http.Server ConnContext that lets the handler take
// the file descriptors sent on the connection (see FDListener).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

func takeFD(ctx context.Context) (int, error) {
	c, ok := ctx.Value(connKey{}).(*fdConn)
	if !ok {
		return -1, errors.New("the server does not take file descriptors")
	}
	return c.take()
}
