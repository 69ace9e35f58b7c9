package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/meshcni/meshcni/internal/netns"
)

// DefaultRuntimeEndpoints are tried in order, as crictl does, plus k3s's.
var DefaultRuntimeEndpoints = []string{
	"unix:///run/containerd/containerd.sock",
	"unix:///run/crio/crio.sock",
	"unix:///var/run/cri-dockerd.sock",
	"unix:///run/k3s/containerd/containerd.sock",
}

// sandboxNetNS asks the container runtime (CRI runtime.v1) for the pod's
// ready sandbox and returns its netns: the path in the sandbox's runtime
// spec, else /proc/<sandbox pid>/ns/net.
func sandboxNetNS(ctx context.Context, endpoint string, pod *corev1.Pod, procRoot string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", fmt.Errorf("CRI %s: %w", endpoint, err)
	}
	defer conn.Close()
	rs := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rs.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(pod.UID)},
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return "", fmt.Errorf("CRI %s: list sandboxes: %w", endpoint, err)
	}
	if len(list.Items) == 0 {
		return "", fmt.Errorf("CRI %s: no ready sandbox of pod %s/%s (uid %s): run verify on its node, %s", endpoint, pod.Namespace, pod.Name, pod.UID, pod.Spec.NodeName)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].CreatedAt > list.Items[j].CreatedAt })
	id := list.Items[0].Id
	st, err := rs.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return "", fmt.Errorf("CRI %s: status of sandbox %s: %w", endpoint, id, err)
	}
	var info struct {
		Pid         int `json:"pid"`
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string } `json:"namespaces"`
			} `json:"linux"`
		} `json:"runtimeSpec"`
	}
	if raw := st.Info["info"]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &info); err != nil {
			return "", fmt.Errorf("CRI %s: sandbox %s: unreadable verbose info: %w", endpoint, id, err)
		}
	}
	for _, n := range info.RuntimeSpec.Linux.Namespaces {
		if n.Type == "network" && n.Path != "" {
			if _, err := os.Stat(n.Path); err == nil {
				return n.Path, nil
			}
		}
	}
	if info.Pid > 0 {
		return filepath.Join(procRoot, strconv.Itoa(info.Pid), "ns", "net"), nil
	}
	return "", fmt.Errorf("CRI %s: sandbox %s reports neither a netns path nor a pid; pass --netns", endpoint, id)
}

// podIPs returns the pod's addresses from its status.
func podIPs(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	if len(out) == 0 && pod.Status.PodIP != "" {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// netnsByIP looks at every named netns (dirs) and every process's netns
// under procRoot for one that holds one of ips, skipping the host's.
// More than one match is an error: the caller must pass --netns.
func netnsByIP(procRoot string, dirs []string, ips []netip.Addr) (string, error) {
	if len(ips) == 0 {
		return "", errors.New("the pod has no IP in its status yet, so its netns cannot be found by address; pass --netns")
	}
	seen := map[string]bool{}
	for _, id := range hostNetNSIDs(procRoot) {
		seen[id] = true
	}
	var candidates []string
	for _, d := range dirs {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			candidates = append(candidates, filepath.Join(d, e.Name()))
		}
	}
	procs, _ := os.ReadDir(procRoot)
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			candidates = append(candidates, filepath.Join(procRoot, e.Name(), "ns", "net"))
		}
	}
	var found []string
	for _, c := range candidates {
		id, err := netns.ID(c)
		if err != nil || seen[id] {
			continue
		}
		seen[id] = true
		var has bool
		if err := netns.Do(c, func() error {
			has = holdsAny(ips)
			return nil
		}); err == nil && has {
			found = append(found, c)
		}
	}
	switch len(found) {
	case 0:
		return "", fmt.Errorf("no network namespace on this node holds %v", ips)
	case 1:
		return found[0], nil
	}
	return "", fmt.Errorf("%d network namespaces hold %v (%s): pass --netns", len(found), ips, strings.Join(found, ", "))
}

// holdsAny reports whether the current netns has one of ips on a link.
func holdsAny(ips []netip.Addr) bool {
	addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		got, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		for _, ip := range ips {
			if got.Unmap() == ip.Unmap() {
				return true
			}
		}
	}
	return false
}

// hostNetNSIDs identifies the node's own netns: init's and, where init's
// cannot be read (a sandbox, a user namespace), our own, since verify runs
// in the node's netns. Neither is ever a pod's.
func hostNetNSIDs(procRoot string) []string {
	var ids []string
	for _, p := range []string{filepath.Join(procRoot, "1", "ns", "net"), filepath.Join(procRoot, "self", "ns", "net")} {
		if id, err := netns.ID(p); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}
