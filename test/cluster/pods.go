package cluster

import (
	"context"
	"fmt"
	"sort"
	"time"

	"sigs.k8s.io/yaml"
)

// StartupTaint is the taint nodes register with until meshcni's agent is
// ready on them.
const StartupTaint = "meshcni.io/agent-not-ready"

// Tolerating returns pod tolerating the startup taint: it starts on a node
// whose agent is not ready (or absent).
func Tolerating(pod map[string]any) map[string]any {
	spec := pod["spec"].(map[string]any)
	spec["tolerations"] = []any{map[string]any{"key": StartupTaint, "operator": "Exists", "effect": "NoSchedule"}}
	return pod
}

// MeshPod is a pod as Istio's injector would leave it with the CNI doing
// the redirection and no validation init container: the app and the
// istio-proxy stand-in (UID 1337), pinned to node.
func MeshPod(ns, name, node string) map[string]any {
	return map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": ns, "labels": map[string]any{"app": name},
			"annotations": map[string]any{"sidecar.istio.io/status": `{"containers":["istio-proxy"]}`}},
		"spec": map[string]any{
			"nodeSelector":                  map[string]any{"kubernetes.io/hostname": node},
			"terminationGracePeriodSeconds": 1,
			"containers": []any{
				map[string]any{"name": "app", "image": istioRefs[1], "imagePullPolicy": "Never"},
				map[string]any{"name": "istio-proxy", "image": ProxyImage, "imagePullPolicy": "Never", "args": []any{"proxy", "sidecar"},
					"securityContext": map[string]any{"runAsUser": 1337, "runAsGroup": 1337}},
			},
		},
	}
}

// PlainPod is a one-container pod with no sidecar, pinned to node when
// node is not empty.
func PlainPod(ns, name, node string) map[string]any {
	spec := map[string]any{
		"terminationGracePeriodSeconds": 1,
		"containers":                    []any{map[string]any{"name": "app", "image": istioRefs[1], "imagePullPolicy": "Never"}},
	}
	if node != "" {
		spec["nodeSelector"] = map[string]any{"kubernetes.io/hostname": node}
	}
	return map[string]any{"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": ns, "labels": map[string]any{"app": name}}, "spec": spec}
}

// CreateAndWait creates pod and waits until it is Ready; it returns the
// time from the create to Ready as kubectl saw it.
func (c *Cluster) CreateAndWait(ctx context.Context, pod map[string]any, timeout time.Duration) (time.Duration, error) {
	b, err := yaml.Marshal(pod)
	if err != nil {
		return 0, err
	}
	meta := pod["metadata"].(map[string]any)
	ns, name := meta["namespace"].(string), meta["name"].(string)
	t0 := time.Now()
	if _, err := c.KubectlIn(ctx, b, "create", "-f", "-"); err != nil {
		return 0, err
	}
	if _, err := c.Kubectl(ctx, "-n", ns, "wait", "pod/"+name, "--for=condition=Ready", "--timeout="+timeout.String()); err != nil {
		desc, _ := c.Kubectl(ctx, "-n", ns, "describe", "pod", name)
		return 0, fmt.Errorf("%w\n%s", err, desc)
	}
	return time.Since(t0), nil
}

// CreateAllAndWait creates pods (of one namespace) at once and waits until
// all are Ready.
func (c *Cluster) CreateAllAndWait(ctx context.Context, pods []map[string]any, timeout time.Duration) error {
	var all []byte
	for _, pod := range pods {
		b, err := yaml.Marshal(pod)
		if err != nil {
			return err
		}
		all = append(append(all, "---\n"...), b...)
	}
	if _, err := c.KubectlIn(ctx, all, "create", "-f", "-"); err != nil {
		return err
	}
	ns := pods[0]["metadata"].(map[string]any)["namespace"].(string)
	args := []string{"-n", ns, "wait", "--for=condition=Ready", "--timeout=" + timeout.String()}
	for _, pod := range pods {
		args = append(args, "pod/"+pod["metadata"].(map[string]any)["name"].(string))
	}
	if _, err := c.Kubectl(ctx, args...); err != nil {
		got, _ := c.Kubectl(ctx, "get", "pods", "-A", "-o", "wide")
		return fmt.Errorf("%w\n%s", err, got)
	}
	return nil
}

// StartTimes creates count pods made by mk (alternating nodes), one at a
// time, and returns the create-to-Ready time of each, sorted.
func (c *Cluster) StartTimes(ctx context.Context, count int, mk func(i int, node string) map[string]any) ([]time.Duration, error) {
	var times []time.Duration
	for i := 0; i < count; i++ {
		d, err := c.CreateAndWait(ctx, mk(i, c.Nodes[i%len(c.Nodes)].Name), 60*time.Second)
		if err != nil {
			return nil, err
		}
		times = append(times, d)
	}
	sort.Slice(times, func(a, b int) bool { return times[a] < times[b] })
	return times, nil
}

// Median of sorted durations.
func Median(sorted []time.Duration) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[len(sorted)/2]
}
