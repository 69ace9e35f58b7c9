// Package podcache lets the plug-in read a pod from the agent's watch of
// its node's pods instead of the API server. The agent serves it on a
// Unix socket (Handler); the plug-in asks once per ADD (Client) and, on
// any answer but a pod with the sandbox's UID, falls back to the API.
//
// The protocol, one request per connection: the client writes one JSON
// object on one line, the agent answers one JSON object on one line and
// closes the connection.
//
//	→ {"namespace":"bookinfo","name":"reviews","uid":"8c1f…"}
//	← {"result":"hit","pod":{"metadata":{…},"spec":{…},"status":{…}}}
//	← {"result":"stale","error":"pod cache: … it has UID 77e0…, not 8c1f…"}
//
// result is one of:
//
//	hit          pod is the pod: podspec.Pod, JSON (the API's keys, only
//	             the fields the plug-in reads)
//	not_found    not on this node as far as the watch knows
//	stale        the watch holds another pod (another UID) under that name
//	not_synced   the watch has not synced yet
//	bad_request  malformed request: not one JSON object on a line of at
//	             most 4 KiB, an empty namespace or name, or a "/" in one
//
// A missing or empty uid matches any UID. Every answer but a hit carries
// a human-readable "error"; the client takes any result it does not know
// (from a newer agent) as no answer. By hand:
//
//	echo '{"namespace":"bookinfo","name":"reviews"}' | socat - UNIX-CONNECT:/var/run/meshcni/pods.sock
//
// Why not HTTP, as this protocol was first: the plug-in is a new process
// for every pod, and linking net/http (which brings crypto/tls) cost
// start-up time on every plug-in exec (docs/performance.md), for a
// question that needs none of HTTP. Neither side of this package may
// import net/http: the plug-in links the package.
//
// The package imports no client-go and no k8s.io/api either, for the
// same reason. The watch itself is the agent's (Store).
package podcache

import (
	"errors"

	"github.com/meshcni/meshcni/internal/podspec"
)

// Misses the client reports; anything else (no socket, timeout) is a
// plain error. All of them mean: ask the API.
var (
	ErrNotFound  = errors.New("pod cache: pod not on this node's watch")
	ErrStale     = errors.New("pod cache: the watch holds another pod under this name")
	ErrNotSynced = errors.New("pod cache: the agent's watch has not synced yet")
)

// request is the client's line.
type request struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
}

// answer is the agent's line. The handler writes a hit's pod as it
// encodes alone (see writeAnswer); the client decodes the whole line in
// one pass.
type answer struct {
	Result string       `json:"result"`
	Pod    *podspec.Pod `json:"pod,omitempty"`
	Error  string       `json:"error,omitempty"`
}

const (
	// maxRequest bounds the request line: a namespace (63 bytes), a name
	// (253) and a UID (36) with their keys take under 400.
	maxRequest = 4 << 10
	// maxBody bounds the answer line (the API server's own limit on an
	// object is 1.5 MiB in etcd).
	maxBody = 4 << 20
)
