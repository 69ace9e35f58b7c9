// Package podcache lets the plug-in read a pod from the agent's watch of
// its node's pods instead of the API server. The agent serves HTTP/1.1 on
// a Unix socket (Handler); the plug-in asks once per ADD (Client) and, on
// any answer but a pod with the sandbox's UID, falls back to the API.
//
// The protocol, one request per connection:
//
//	GET /v1/pods/{namespace}/{name}?uid={uid}
//
//	200  the pod: podspec.Pod, JSON (the API's keys, only the fields the
//	     plug-in reads)
//	404  not on this node as far as the watch knows
//	409  the watch holds another pod (another UID) under that name
//	503  the watch has not synced yet
//	400  malformed request
//
// The package imports no client-go and no k8s.io/api: the plug-in links
// it. The watch itself is the agent's (Store).
package podcache

import (
	"errors"
	"net/url"
	"strings"
)

const pathPrefix = "/v1/pods/"

// Misses the client reports; anything else (no socket, timeout) is a
// plain error. All of them mean: ask the API.
var (
	ErrNotFound  = errors.New("pod cache: pod not on this node's watch")
	ErrStale     = errors.New("pod cache: the watch holds another pod under this name")
	ErrNotSynced = errors.New("pod cache: the agent's watch has not synced yet")
)

// requestPath is the URL path and query of a lookup.
func requestPath(namespace, name, uid string) string {
	return pathPrefix + url.PathEscape(namespace) + "/" + url.PathEscape(name) + "?uid=" + url.QueryEscape(uid)
}

// parsePath splits a request path into namespace and name.
func parsePath(p string) (namespace, name string, ok bool) {
	rest, found := strings.CutPrefix(p, pathPrefix)
	if !found {
		return "", "", false
	}
	namespace, name, found = strings.Cut(rest, "/")
	if !found || namespace == "" || name == "" || strings.Contains(name, "/") {
		return "", "", false
	}
	return namespace, name, true
}
