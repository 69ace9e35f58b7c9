package podcache

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/meshcni/meshcni/internal/podspec"
)

// Store is the agent's watch of its node's pods.
type Store interface {
	// Pod returns the entry the watch holds under namespace/name, or
	// nil. The caller must not modify it.
	Pod(namespace, name string) *Entry
	// Synced reports whether the watch has listed the node's pods once.
	Synced() bool
}

// Entry is a pod as a Store holds it: meshcni's view and the view's
// JSON, encoded once, when the watch delivered the pod. A lookup is on
// the path of the pod's start and the pod is new then, so encoding it
// at the lookup would put the JSON work on that path every time.
type Entry struct {
	Pod  *podspec.Pod
	json []byte
}

// NewEntry encodes pod for a Store.
func NewEntry(pod *podspec.Pod) (*Entry, error) {
	b, err := json.Marshal(pod)
	if err != nil {
		return nil, fmt.Errorf("encode pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return &Entry{Pod: pod, json: b}, nil
}

// Results of a lookup: the answer's "result", and what a Handler reports
// to Observe.
const (
	ResultHit        = "hit"
	ResultNotFound   = "not_found"
	ResultStale      = "stale"
	ResultNotSynced  = "not_synced"
	ResultBadRequest = "bad_request"
)

// DefaultWait is how long the handler waits for the watch to show a pod
// it does not hold yet: the runtime can ask a few milliseconds before the
// agent's watch delivers the pod's binding.
const DefaultWait = 100 * time.Millisecond

// Handler answers lookups from a Store.
type Handler struct {
	Store Store
	// Wait bounds the wait for a missing pod, or one whose UID is not
	// the requested one; zero means DefaultWait, negative no wait.
	Wait time.Duration
	// Observe, if set, is called once per request with its result. A
	// connection that sends no request (closed, or not within
	// readTimeout) is not one.
	Observe func(result string)
}

const (
	pollEvery = 5 * time.Millisecond
	// readTimeout bounds the wait for the request line, writeTimeout
	// the writing of the answer.
	readTimeout  = time.Second
	writeTimeout = 5 * time.Second
)

// Serve answers the connections l accepts, each on a goroutine of its
// own, until l is closed.
//
// To stop it, close l. Serve then cuts short the requests waiting for
// the watch (they get the answer the watch gives at that moment), waits
// for every connection in flight to be answered and closed, and returns
// nil: once it has returned, no goroutine of it is left. That takes at
// most the request's read timeout (1 s) plus the answer's write timeout
// (5 s), in practice microseconds.
//
// Accept errors that mean a lack of resources (EMFILE, ENFILE, ENOBUFS,
// ENOMEM) are retried after a pause, as net/http's server does; any other
// ends Serve, which returns it once the connections in flight are done.
func (h *Handler) Serve(l net.Listener) error {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	var pause time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			if outOfResources(err) {
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				time.Sleep(pause)
				continue
			}
			return fmt.Errorf("pod cache: accept: %w", err)
		}
		pause = 0
		wg.Go(func() { h.serveConn(ctx, c) })
	}
}

func outOfResources(err error) bool {
	for _, errno := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, errno) {
			return true
		}
	}
	return false
}

// serveConn reads one request from c, answers it and closes c. The
// waits for the watch end with ctx.
func (h *Handler) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(readTimeout))
	var result string
	var entry *Entry
	var msg string
	line, err := bufio.NewReaderSize(c, maxRequest).ReadSlice('\n')
	switch {
	case err == nil || errors.Is(err, io.EOF) && len(line) > 0:
		result, entry, msg = h.lookup(ctx, line)
	case errors.Is(err, bufio.ErrBufferFull):
		result, msg = ResultBadRequest, fmt.Sprintf("request line longer than %d bytes", maxRequest)
	default:
		return // no request: the peer left, or was too slow
	}
	if h.Observe != nil { // first: a client that has its answer finds it counted
		h.Observe(result)
	}
	_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
	_, _ = c.Write(answerLine(result, entry, msg))
}

const usage = `want one line {"namespace":…,"name":…,"uid":…}, namespace and name not empty and without "/"`

// lookup answers the request line: the result, the entry for a hit, a
// message for anything else.
func (h *Handler) lookup(ctx context.Context, line []byte) (string, *Entry, string) {
	var req request
	if err := json.Unmarshal(line, &req); err != nil {
		return ResultBadRequest, nil, fmt.Sprintf("decode request: %v; %s", err, usage)
	}
	if req.Namespace == "" || req.Name == "" || strings.Contains(req.Namespace, "/") || strings.Contains(req.Name, "/") {
		return ResultBadRequest, nil, fmt.Sprintf("namespace %q, name %q: %s", req.Namespace, req.Name, usage)
	}
	if !h.Store.Synced() {
		return ResultNotSynced, nil, ErrNotSynced.Error()
	}
	wait := h.Wait
	if wait == 0 {
		wait = DefaultWait
	}
	deadline := time.Now().Add(wait)
	for {
		e := h.Store.Pod(req.Namespace, req.Name)
		if e != nil && (req.UID == "" || e.Pod.UID == req.UID) {
			return ResultHit, e, ""
		}
		if time.Now().Before(deadline) && sleep(ctx, pollEvery) {
			continue
		}
		if e != nil {
			return ResultStale, nil, fmt.Sprintf("%v: it has UID %s, not %s", ErrStale, e.Pod.UID, req.UID)
		}
		return ResultNotFound, nil, ErrNotFound.Error()
	}
}

// sleep waits d unless ctx ends first; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// answerLine encodes an answer, newline included: a hit if e is not nil,
// the entry's JSON spliced in as it is.
func answerLine(result string, e *Entry, msg string) []byte {
	if e != nil {
		const head, tail = `{"result":"` + ResultHit + `","pod":`, "}\n"
		return append(append(append(make([]byte, 0, len(head)+len(e.json)+len(tail)), head...), e.json...), tail...)
	}
	line, _ := json.Marshal(answer{Result: result, Error: msg}) // strings only: cannot fail
	return append(line, '\n')
}
