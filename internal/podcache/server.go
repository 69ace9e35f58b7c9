package podcache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/meshcni/meshcni/internal/podspec"
)

// Store is the agent's watch of its node's pods.
type Store interface {
	// Pod returns the pod the watch holds under namespace/name, or nil.
	// The caller must not modify it.
	Pod(namespace, name string) *podspec.Pod
	// Synced reports whether the watch has listed the node's pods once.
	Synced() bool
}

// Results a Handler reports to Observe.
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

// Handler answers lookups from a Store and, with Add, runs the ADDs the
// plug-in hands over.
type Handler struct {
	Store Store
	// Wait bounds the wait for a missing pod, or one whose UID is not
	// the requested one; zero means DefaultWait, negative no wait.
	Wait time.Duration
	// Observe, if set, is called once per lookup with its result.
	Observe func(result string)
	// Add, if set, serves POST /v1/add; the server must then accept
	// through FDListener with ConnContext. Without it the plug-in is told
	// that this agent takes no ADDs.
	Add AddFunc
}

const pollEvery = 5 * time.Millisecond

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == addPath && h.Add != nil {
		if r.Method != http.MethodPost {
			jsonError(w, "want POST "+addPath, http.StatusMethodNotAllowed)
			return
		}
		h.serveAdd(w, r)
		return
	}
	result := h.serve(w, r)
	if h.Observe != nil {
		h.Observe(result)
	}
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) string {
	namespace, name, ok := parsePath(r.URL.Path)
	if r.Method != http.MethodGet || !ok {
		http.Error(w, "want GET "+pathPrefix+"{namespace}/{name}?uid={uid}", http.StatusBadRequest)
		return ResultBadRequest
	}
	pod, err := Await(r.Context(), h.Store, namespace, name, r.URL.Query().Get("uid"), h.Wait)
	switch {
	case err == nil:
		if err := writePod(w, pod); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	case errors.Is(err, ErrNotSynced):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
	case errors.Is(err, ErrStale):
		http.Error(w, err.Error(), http.StatusConflict)
	default:
		http.Error(w, err.Error(), http.StatusNotFound)
	}
	return Result(err)
}

// Result names a lookup's outcome for metrics: ResultHit for nil, else
// the miss.
func Result(err error) string {
	switch {
	case err == nil:
		return ResultHit
	case errors.Is(err, ErrNotSynced):
		return ResultNotSynced
	case errors.Is(err, ErrStale):
		return ResultStale
	}
	return ResultNotFound
}

// Await returns the pod the store holds under namespace/name with UID
// uid ("" = any), waiting up to wait (zero: DefaultWait; negative: not
// at all) for the watch to show it. Otherwise it returns ErrNotSynced,
// ErrStale (another UID) or ErrNotFound.
func Await(ctx context.Context, store Store, namespace, name, uid string, wait time.Duration) (*podspec.Pod, error) {
	if !store.Synced() {
		return nil, ErrNotSynced
	}
	if wait == 0 {
		wait = DefaultWait
	}
	deadline := time.Now().Add(wait)
	for {
		pod := store.Pod(namespace, name)
		if pod != nil && (uid == "" || pod.UID == uid) {
			return pod, nil
		}
		if time.Now().Before(deadline) && sleep(ctx, pollEvery) {
			continue
		}
		if pod != nil {
			return nil, fmt.Errorf("%w: it has UID %s, not %s", ErrStale, pod.UID, uid)
		}
		return nil, ErrNotFound
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

func writePod(w http.ResponseWriter, pod *podspec.Pod) error {
	body, err := json.Marshal(pod)
	if err != nil {
		return fmt.Errorf("encode pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
	return nil
}
