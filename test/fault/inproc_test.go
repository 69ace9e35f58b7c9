//go:build integration

package fault

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
	k8stypes "k8s.io/apimachinery/pkg/types"

	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/plugin"
	"github.com/meshcni/meshcni/internal/podinfo"
	"github.com/meshcni/meshcni/internal/podspec"
	"github.com/meshcni/meshcni/test/testbed"
)

// The in-process plug-in: real netfilter.Applier in real netns, pods from
// memory (the API has its own faults, in api_test.go).

// memPods serves pods from a map.
type memPods struct {
	mu    sync.Mutex
	pods  map[string]*corev1.Pod
	calls atomic.Int64
}

func (m *memPods) GetPod(_ context.Context, namespace, name string) (*podspec.Pod, error) {
	m.calls.Add(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.pods[namespace+"/"+name]; ok {
		return podspec.Of(p)
	}
	return nil, &podinfo.APIError{Code: http.StatusNotFound, Reason: "NotFound", Message: `pods "` + name + `" not found`}
}

func (m *memPods) Ready(context.Context) error { return nil }

func (m *memPods) add(p *corev1.Pod) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pods[p.Namespace+"/"+p.Name] = p
}

// richMeshPod captures DNS and drops INVALID packets, so that its rules
// span three tables (mangle, nat, raw): a legacy restore commits them one
// by one, which is what a failure half-way can leave behind.
func richMeshPod(namespace, name string) *corev1.Pod {
	p := testbed.MeshPod(namespace, name, 9080)
	p.UID = k8stypes.UID("uid-" + name)
	// ISTIO_DUAL_STACK: a dual-stack pod gets IPv6 rules only with it,
	// as with Istio, and the faults need both families.
	p.Spec.Containers[1].Env = []corev1.EnvVar{{Name: "ISTIO_META_DNS_CAPTURE", Value: "true"}, {Name: "INVALID_DROP", Value: "true"},
		{Name: "ISTIO_DUAL_STACK", Value: "true"}}
	return p
}

// inproc is a plug-in with a real Applier.
type inproc struct {
	p       *plugin.Plugin
	pods    *memPods
	lockDir string
	log     *bytes.Buffer

	mu  sync.Mutex
	ran map[string][]string // netns ID -> commands run there
}

func (ip *inproc) record(netnsID, name string) {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	ip.ran[netnsID] = append(ip.ran[netnsID], name)
}

// commands returns what ran where, and forgets it.
func (ip *inproc) commands() map[string][]string {
	ip.mu.Lock()
	defer ip.mu.Unlock()
	r := ip.ran
	ip.ran = map[string][]string{}
	return r
}

// newInproc builds the plug-in over backend b; run (nil: the real
// binaries) is always behind the guard.
func newInproc(t testing.TB, b netfilter.Backend, run netfilter.Runner) *inproc {
	t.Helper()
	if run == nil {
		run = netfilter.ExecRunner
	}
	ip := &inproc{pods: &memPods{pods: map[string]*corev1.Pod{}}, lockDir: t.TempDir(), log: &bytes.Buffer{}, ran: map[string][]string{}}
	ip.p = &plugin.Plugin{
		Rules: netfilter.New(netfilter.Options{Backend: b, LockDir: ip.lockDir, Run: guard(run, ip.record)}),
		API:   podinfo.Local{New: func(string, time.Duration) (podinfo.API, error) { return ip.pods, nil }},
		LogTo: slog.New(slog.NewJSONHandler(ip.log, nil)),
	}
	return ip
}

// args are a runtime's CNI arguments for pod in the netns at path.
func (ip *inproc) args(t testing.TB, pod *corev1.Pod, path string, ipv6 bool) *skel.CmdArgs {
	return &skel.CmdArgs{
		ContainerID: "c-" + pod.Name, Netns: path, IfName: "eth0",
		Args:      k8sArgs(pod.Namespace, pod.Name, string(pod.UID)),
		StdinData: netconf(t, path, ipv6, map[string]any{"lockDir": ip.lockDir}),
	}
}

// add runs ADD; a failure comes back as the CNI error it would print.
func (ip *inproc) add(a *skel.CmdArgs) (*types.Error, error) {
	_, err := captureStdout(func() error { return ip.p.CmdAdd(a) })
	return cniError(err)
}

func (ip *inproc) check(a *skel.CmdArgs) (*types.Error, error) { return cniError(ip.p.CmdCheck(a)) }

func (ip *inproc) del(a *skel.CmdArgs) (*types.Error, error) { return cniError(ip.p.CmdDel(a)) }

// cniError splits a command's result: a CNI error, or something else
// (which the plug-in must never return).
func cniError(err error) (*types.Error, error) {
	if err == nil {
		return nil, nil
	}
	if te, ok := err.(*types.Error); ok {
		return te, nil
	}
	return nil, fmt.Errorf("not a CNI error (skel would print code 999 with no advice): %T %v", err, err)
}

var backends = []netfilter.Backend{netfilter.Legacy, netfilter.NFT, netfilter.Nftables}

// newInprocNetlink is the plug-in as production builds it for the
// nftables backend: no Runner, so a new pod's tables are written over
// netlink in process. No exec guard can wrap that; the Applier's own
// refusal of the caller's netns (netns.CheckTarget) and the test's
// netns paths are what keep it off the host.
func newInprocNetlink(t testing.TB) *inproc {
	t.Helper()
	ip := &inproc{pods: &memPods{pods: map[string]*corev1.Pod{}}, lockDir: t.TempDir(), log: &bytes.Buffer{}, ran: map[string][]string{}}
	ip.p = &plugin.Plugin{
		Rules: netfilter.New(netfilter.Options{Backend: netfilter.Nftables, LockDir: ip.lockDir}),
		API:   podinfo.Local{New: func(string, time.Duration) (podinfo.API, error) { return ip.pods, nil }},
		LogTo: slog.New(slog.NewJSONHandler(ip.log, nil)),
	}
	return ip
}
