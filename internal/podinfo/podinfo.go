// Package podinfo looks pods up in the Kubernetes API for the plug-in,
// retrying the errors that go away (pod not visible yet, API briefly
// unreachable) and failing at once on those that don't (RBAC, auth).
package podinfo

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshcni/meshcni/internal/podspec"
)

// Getter returns a pod by namespace and name.
type Getter interface {
	GetPod(ctx context.Context, namespace, name string) (*podspec.Pod, error)
}

// APIError is a request the API server answered with an error: the HTTP
// status, and the reason and message of the Status object it sent.
type APIError struct {
	Code    int
	Reason  string
	Message string
}

func (e *APIError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Reason
	}
	return fmt.Sprintf("the API server answered %d %s", e.Code, msg)
}

func hasCode(err error, codes ...int) bool {
	var ae *APIError
	return errors.As(err, &ae) && slices.Contains(codes, ae.Code)
}

// IsNotFound: the API has no pod of that name (yet).
func IsNotFound(err error) bool { return hasCode(err, http.StatusNotFound) }

// IsForbidden: RBAC denies the plug-in's identity.
func IsForbidden(err error) bool { return hasCode(err, http.StatusForbidden) }

// IsUnauthorized: the API server rejected the credentials.
func IsUnauthorized(err error) bool { return hasCode(err, http.StatusUnauthorized) }

// ErrUIDMismatch: the API holds a different pod under that name (the pod
// was deleted and recreated) and never showed the expected one in time.
var ErrUIDMismatch = errors.New("pod UID does not match the sandbox's K8S_POD_UID")

// Retry bounds the lookup.
type Retry struct {
	Attempts int
	Interval time.Duration
}

// Lookup gets the pod, retrying NotFound, a stale UID and transient
// errors up to r.Attempts times. wantUID may be empty (runtime didn't pass
// it). Permanent errors (401, 403, invalid) return at once.
func Lookup(ctx context.Context, g Getter, namespace, name, wantUID string, r Retry) (*podspec.Pod, error) {
	if r.Attempts < 1 {
		r.Attempts = 1
	}
	var lastErr error
	for i := 0; i < r.Attempts; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("pod %s/%s: %w (last error: %v)", namespace, name, ctx.Err(), lastErr)
			case <-time.After(r.Interval):
			}
		}
		pod, err := g.GetPod(ctx, namespace, name)
		switch {
		case err == nil && (wantUID == "" || pod.UID == wantUID):
			return pod, nil
		case err == nil:
			lastErr = fmt.Errorf("%w: API has %s, sandbox wants %s", ErrUIDMismatch, pod.UID, wantUID)
		case permanent(err):
			return nil, fmt.Errorf("get pod %s/%s: %w", namespace, name, err)
		default:
			lastErr = err
		}
	}
	return nil, fmt.Errorf("get pod %s/%s: gave up after %d attempts: %w", namespace, name, r.Attempts, lastErr)
}

// permanent errors do not go away by asking again: bad credentials, RBAC,
// a request the server refuses.
func permanent(err error) bool {
	return hasCode(err, http.StatusUnauthorized, http.StatusForbidden, http.StatusBadRequest,
		http.StatusUnprocessableEntity, http.StatusMethodNotAllowed)
}

// Client is the Getter over the real API: a REST client that knows only
// core/v1. The plug-in is a new process per pod, and the typed clientset
// would register every API group at start-up (about 2.5 ms of init of
// k8s.io/client-go/kubernetes/scheme alone, and 40 MiB of binary).
type Client struct {
	rc rest.Interface
}

// coreV1 decodes pods and API errors (metav1.Status); nothing else. Built
// on first use: an ADD answered by the agent's pod cache never needs it.
var coreV1 = sync.OnceValue(func() serializer.CodecFactory {
	s := runtime.NewScheme()
	utilruntime.Must(corev1.AddToScheme(s))
	return serializer.NewCodecFactory(s)
})

// NewClient builds a client from a kubeconfig file. The timeout bounds
// every request: a hung API must not hang pod start-up.
func NewClient(kubeconfig string, timeout time.Duration) (*Client, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
	}
	cfg.Timeout = timeout
	cfg.UserAgent = "meshcni"
	cfg.APIPath = "/api"
	cfg.GroupVersion = &corev1.SchemeGroupVersion
	cfg.NegotiatedSerializer = coreV1().WithoutConversion()
	// Protobuf is cheaper to decode than JSON on the pod-start path.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("build client from %s: %w", kubeconfig, err)
	}
	return &Client{rc: rc}, nil
}

// GetPod implements Getter.
func (c *Client) GetPod(ctx context.Context, namespace, name string) (*podspec.Pod, error) {
	pod := &corev1.Pod{}
	err := c.rc.Get().Namespace(namespace).Resource("pods").Name(name).Do(ctx).Into(pod)
	if err != nil {
		var st apierrors.APIStatus
		if errors.As(err, &st) {
			s := st.Status()
			return nil, &APIError{Code: int(s.Code), Reason: string(s.Reason), Message: s.Message}
		}
		return nil, err
	}
	return podspec.Of(pod)
}

// Ready checks that the API answers with these credentials: what STATUS
// reports. A GET of /readyz needs no RBAC beyond authentication.
func (c *Client) Ready(ctx context.Context) error {
	_, err := c.rc.Get().AbsPath("/readyz").DoRaw(ctx)
	return err
}
