// Package apilookup is the plug-in's side of its fallback to the
// Kubernetes API: when the agent's pod cache cannot answer, the plug-in
// runs the meshcni-lookup helper (cmd/meshcni-lookup, installed next to
// it) with a Request on stdin and reads the pod, or a CNI error, from its
// stdout.
//
// The GET runs in a process of its own so that the plug-in, exec'd for
// every pod, links no HTTP, TLS or YAML code, whose start-up cost every
// ADD would pay (docs/performance.md), while the fallback is taken only
// when the agent is not there.
package apilookup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshcni/meshcni/internal/podspec"
)

// HelperName is the helper's file name, next to the plug-in's.
const HelperName = "meshcni-lookup"

// Ops a Request can ask for.
const (
	OpPod   = "pod"   // the pod, or the CNI error that fails the ADD
	OpReady = "ready" // whether the API answers with the kubeconfig (STATUS)
)

// Request is what the helper reads on stdin.
type Request struct {
	Op         string `json:"op"`
	Kubeconfig string `json:"kubeconfig"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name,omitempty"`
	// UID is the sandbox's K8S_POD_UID; empty accepts any pod of the name.
	UID string `json:"uid,omitempty"`
	// Timeout bounds each API request; Attempts and Interval the retries
	// of a pod not visible yet.
	Timeout  time.Duration `json:"timeout"`
	Attempts int           `json:"attempts"`
	Interval time.Duration `json:"interval"`
}

// Deadline bounds the whole lookup, retries included, with a second for
// the helper's own start and exit.
func (r Request) Deadline() time.Duration {
	n := max(r.Attempts, 1)
	return time.Duration(n)*(r.Timeout+r.Interval) + time.Second
}

// Source answers Requests: the helper process (Helper), or the same code
// in process (podinfo.Local) in the helper itself and in tests.
type Source interface {
	// Pod returns the pod, or a *types.Error that says what to fix.
	Pod(ctx context.Context, r Request) (*podspec.Pod, error)
	// Ready returns nil if the API answers, else a *types.Error.
	Ready(ctx context.Context, r Request) error
}

// Helper runs the helper binary at Path for each Request.
type Helper struct {
	Path string
}

// NextToExecutable is the helper installed beside the running plug-in.
func NextToExecutable() (Helper, error) {
	self, err := os.Executable()
	if err != nil {
		return Helper{}, err
	}
	return Helper{Path: filepath.Join(filepath.Dir(self), HelperName)}, nil
}

func (h Helper) Pod(ctx context.Context, r Request) (*podspec.Pod, error) {
	r.Op = OpPod
	out, err := h.run(ctx, r)
	if err != nil {
		return nil, err
	}
	pod := &podspec.Pod{}
	if err := json.Unmarshal(out, pod); err != nil {
		return nil, types.NewError(types.ErrInternal, fmt.Sprintf("meshcni: %s answered with something other than a pod", h.Path), err.Error())
	}
	return pod, nil
}

func (h Helper) Ready(ctx context.Context, r Request) error {
	r.Op = OpReady
	_, err := h.run(ctx, r)
	return err
}

// run executes the helper; every failure is a *types.Error: the helper's
// own, or one that says the helper could not run.
func (h Helper) run(ctx context.Context, r Request) ([]byte, error) {
	if _, err := os.Stat(h.Path); err != nil {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("meshcni: the API lookup helper %s is missing; the meshcni agent installs it next to the plug-in", h.Path), err.Error())
	}
	in, err := json.Marshal(r)
	if err != nil {
		return nil, types.NewError(types.ErrInternal, "meshcni: encode the API lookup", err.Error())
	}
	ctx, cancel := context.WithTimeout(ctx, r.Deadline())
	defer cancel()
	// Only what a client of the API reads from its environment (as
	// client-go does): proxy settings, and where the system's CA
	// certificates are, for a kubeconfig that names no CA. A runtime's
	// CNI_* variables mean nothing to the helper.
	out, err := (&invoke.RawExec{Stderr: os.Stderr}).ExecPlugin(ctx, h.Path, in, clientEnv())
	if err == nil {
		return bytes.TrimSpace(out), nil
	}
	var te *types.Error
	if errors.As(err, &te) && te.Code != 0 {
		return nil, te
	}
	if ctx.Err() != nil {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("meshcni: pod %s/%s: the API lookup did not finish within %s", r.Namespace, r.Name, r.Deadline()), err.Error())
	}
	return nil, types.NewError(types.ErrInternal, fmt.Sprintf("meshcni: the API lookup helper %s failed", h.Path), err.Error())
}

func clientEnv() []string {
	var env []string
	for _, k := range []string{"HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return env
}
