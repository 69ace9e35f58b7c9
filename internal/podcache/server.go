package podcache

import (
	"context"
	"encoding/json"
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

// Handler answers lookups from a Store.
type Handler struct {
	Store Store
	// Wait bounds the wait for a missing pod, or one whose UID is not
	// the requested one; zero means DefaultWait, negative no wait.
	Wait time.Duration
	// Observe, if set, is called once per request with its result.
	Observe func(result string)
}

const pollEvery = 5 * time.Millisecond

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
	uid := r.URL.Query().Get("uid")
	if !h.Store.Synced() {
		http.Error(w, ErrNotSynced.Error(), http.StatusServiceUnavailable)
		return ResultNotSynced
	}
	wait := h.Wait
	if wait == 0 {
		wait = DefaultWait
	}
	deadline := time.Now().Add(wait)
	for {
		pod := h.Store.Pod(namespace, name)
		if pod != nil && (uid == "" || pod.UID == uid) {
			if err := writePod(w, pod); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
			return ResultHit
		}
		if time.Now().Before(deadline) && sleep(r.Context(), pollEvery) {
			continue
		}
		if pod != nil {
			http.Error(w, fmt.Sprintf("%v: it has UID %s, not %s", ErrStale, pod.UID, uid), http.StatusConflict)
			return ResultStale
		}
		http.Error(w, ErrNotFound.Error(), http.StatusNotFound)
		return ResultNotFound
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
