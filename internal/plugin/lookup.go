package plugin

import (
	"context"

	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/internal/podspec"
)

// PodCache is the agent's watch of the node's pods (podcache.Client).
type PodCache interface {
	Pod(ctx context.Context, namespace, name, uid string) (*podspec.Pod, error)
}

// Where a pod came from, in the decision line's pod_source.
const (
	sourceCache = "cache"
	sourceAPI   = "api"
)

func (p *Plugin) cacheFor(socket string) PodCache {
	if p.Cache != nil {
		return p.Cache(socket)
	}
	return podcache.NewClient(socket)
}

// lookup finds t's pod. With podCacheSocket set and the sandbox's UID
// known, it asks the agent's cache first and takes only a pod with that
// UID: no API request, no kubeconfig read. Every other outcome (not
// found, another UID, not synced, no socket, timeout) is a miss, and the
// API decides, through the meshcni-lookup helper, with the usual
// retries; so the cache can save a request but never change a decision
// the API would make, and never lets a pod start uncaptured because it
// did not know it.
func (p *Plugin) lookup(ctx context.Context, t *target) (*podspec.Pod, error) {
	ns, name, uid := string(t.args.K8S_POD_NAMESPACE), string(t.args.K8S_POD_NAME), string(t.args.K8S_POD_UID)
	if t.conf.PodCacheSocket != "" {
		pod, miss := p.fromCache(ctx, t.conf.PodCacheSocket, ns, name, uid)
		if pod != nil {
			t.source = sourceCache
			return pod, nil
		}
		t.cacheMiss = miss
	}
	t.source = sourceAPI
	api, err := p.api()
	if err != nil {
		return nil, err
	}
	return api.Pod(ctx, apiRequest(t.conf, t.args))
}

// fromCache returns the cached pod, or nil and why not.
func (p *Plugin) fromCache(ctx context.Context, socket, ns, name, uid string) (*podspec.Pod, string) {
	if uid == "" {
		// Without the sandbox's UID a cached pod could be an older one of
		// that name; only the API can tell.
		return nil, "no K8S_POD_UID"
	}
	ctx, cancel := context.WithTimeout(ctx, podCacheTimeout)
	defer cancel()
	pod, err := p.cacheFor(socket).Pod(ctx, ns, name, uid)
	switch {
	case err != nil:
		return nil, err.Error()
	case pod == nil || pod.Namespace != ns || pod.Name != name || pod.UID != uid:
		return nil, "the cache answered with another pod"
	}
	return pod, ""
}
