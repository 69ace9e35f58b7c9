package podinfo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshcni/meshcni/internal/apilookup"
	"github.com/meshcni/meshcni/internal/podspec"
)

// API is a pod getter that can also say whether the API answers.
type API interface {
	Getter
	Ready(ctx context.Context) error
}

// NewAPI is the API a kubeconfig on the node leads to: the agent writes
// the file once it has a token, so its absence is "try again later".
func NewAPI(kubeconfig string, timeout time.Duration) (API, error) {
	if kubeconfig == "" {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "meshcni: kubeconfig: path is required", "")
	}
	if _, err := os.Stat(kubeconfig); err != nil {
		return nil, types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("meshcni: kubeconfig %s is missing; the meshcni agent writes it when it is ready", kubeconfig), err.Error())
	}
	c, err := NewClient(kubeconfig, timeout)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf("meshcni: kubeconfig %s", kubeconfig), err.Error())
	}
	return c, nil
}

// Local answers apilookup requests in this process, with the API that New
// builds from a request's kubeconfig: the helper's work, and the same
// code under test with a fake API.
type Local struct {
	New func(kubeconfig string, timeout time.Duration) (API, error)
}

var _ apilookup.Source = Local{}

// Pod looks the pod up with the request's retries. Every failure is a
// *types.Error that fails the ADD: a mesh pod must never start uncaptured.
func (l Local) Pod(ctx context.Context, r apilookup.Request) (*podspec.Pod, error) {
	api, err := l.New(r.Kubeconfig, r.Timeout)
	if err != nil {
		return nil, asCNI(err)
	}
	pod, err := Lookup(ctx, api, r.Namespace, r.Name, r.UID, Retry{Attempts: r.Attempts, Interval: r.Interval})
	if err != nil {
		return nil, cniError(r.Namespace+"/"+r.Name, err)
	}
	return pod, nil
}

// Ready checks that the API answers with the request's kubeconfig.
func (l Local) Ready(ctx context.Context, r apilookup.Request) error {
	api, err := l.New(r.Kubeconfig, r.Timeout)
	if err != nil {
		return asCNI(err)
	}
	if err := api.Ready(ctx); err != nil {
		return types.NewError(types.ErrTryAgainLater, "meshcni: the Kubernetes API is not reachable with the plug-in's kubeconfig", err.Error())
	}
	return nil
}

func asCNI(err error) *types.Error {
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	return types.NewError(types.ErrInternal, "meshcni: cannot build the API client", err.Error())
}

// cniError maps API failures to CNI errors that say what to fix.
func cniError(pod string, err error) *types.Error {
	switch {
	case IsForbidden(err):
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("meshcni: pod %s: the plug-in's identity may not get pods; grant it get on pods (ClusterRole meshcni-plugin)", pod), err.Error())
	case IsUnauthorized(err):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("meshcni: pod %s: the API server rejected the plug-in's token; the agent refreshes it, retry", pod), err.Error())
	case errors.Is(err, ErrUIDMismatch):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("meshcni: pod %s: the API shows a different pod under this name (recreated?)", pod), err.Error())
	case IsNotFound(err):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("meshcni: pod %s not found in the API", pod), err.Error())
	case errors.Is(err, ErrNotThePod):
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("meshcni: pod %s: what answered for the Kubernetes API did not send the pod (a proxy in the way?); pods in the mesh cannot start until the API answers", pod), err.Error())
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("meshcni: pod %s: the Kubernetes API answered %d %s; pods in the mesh cannot start until it answers", pod, ae.Code, ae.Reason), err.Error())
	}
	return types.NewError(types.ErrTryAgainLater,
		fmt.Sprintf("meshcni: pod %s: cannot reach the Kubernetes API; pods in the mesh cannot start until it answers", pod), err.Error())
}
