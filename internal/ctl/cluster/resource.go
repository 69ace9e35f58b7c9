package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/meshcni/meshcni/api/v1alpha1"
	"github.com/meshcni/meshcni/internal/ctl/cmdutil"
)

// meshcnis is the client of the cluster-scoped MeshCNI resource.
func meshcnis(c *cmdutil.Clients) dynamic.ResourceInterface {
	return c.Dyn.Resource(v1alpha1.GroupVersionResource)
}

// errNoResource says the MeshCNI "default" or its CRD is missing.
var errNoResource = errors.New("no MeshCNI " + v1alpha1.Name)

// getMesh reads the MeshCNI; errNoResource when it or its CRD is missing.
func getMesh(ctx context.Context, c *cmdutil.Clients) (*unstructured.Unstructured, *v1alpha1.MeshCNI, error) {
	u, err := meshcnis(c).Get(ctx, v1alpha1.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil, errNoResource
	}
	if err != nil {
		return nil, nil, cmdutil.APIHint(fmt.Errorf("get MeshCNI %s: %w", v1alpha1.Name, err), "get meshcnis.meshcni.io")
	}
	mc := &v1alpha1.MeshCNI{}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, mc); err != nil {
		return nil, nil, fmt.Errorf("decode MeshCNI %s: %w", v1alpha1.Name, err)
	}
	return u, mc, nil
}

// writeSpec writes the given spec fields into the MeshCNI, creating it
// when it is missing. A JSON merge patch, not server-side apply, on
// purpose: excludeNamespaces is a list of type set, which an apply would
// union with the namespaces the console set rather than replace; and an
// apply drops the fields an earlier enable applied but this one leaves
// out (a plain "meshcnictl enable" would reset the log level). The patch
// touches exactly the fields given and nothing else.
func writeSpec(ctx context.Context, c *cmdutil.Clients, spec map[string]any, dryRun bool) (*unstructured.Unstructured, error) {
	var dry []string
	if dryRun {
		dry = []string{metav1.DryRunAll}
	}
	patch, err := json.Marshal(map[string]any{"spec": spec})
	if err != nil {
		return nil, err
	}
	for {
		u, err := meshcnis(c).Patch(ctx, v1alpha1.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager, DryRun: dry})
		if !apierrors.IsNotFound(err) {
			return u, err
		}
		obj := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
		obj.SetGroupVersionKind(v1alpha1.SchemeGroupVersion.WithKind(v1alpha1.Kind))
		obj.SetName(v1alpha1.Name)
		u, err = meshcnis(c).Create(ctx, obj, metav1.CreateOptions{FieldManager: FieldManager, DryRun: dry})
		if !apierrors.IsAlreadyExists(err) {
			return u, err
		}
		// Someone created it between the two requests: patch it.
	}
}

// phaseLine is one line of progress: the phase and why.
func phaseLine(mc *v1alpha1.MeshCNI) string {
	st := mc.Status
	if st.ObservedGeneration < mc.Generation {
		return fmt.Sprintf("waiting for meshcni-controller to act on generation %d (status is of %d)", mc.Generation, st.ObservedGeneration)
	}
	line := "phase " + st.Phase
	if st.ReadyNodes != "" {
		line += ", " + st.ReadyNodes + " nodes ready"
	}
	if st.Message != "" {
		line += ": " + st.Message
	}
	return line
}

// reached tells whether mc's status describes its current spec and is in
// phase; phase "" is the spec's settled phase: Running when enabled,
// Disabled when not.
func reached(mc *v1alpha1.MeshCNI, phase string) bool {
	return mc.Status.ObservedGeneration == mc.Generation && mc.Status.Phase == settled(mc, phase)
}

func settled(mc *v1alpha1.MeshCNI, phase string) string {
	switch {
	case phase != "":
		return phase
	case mc.Spec.IsEnabled():
		return v1alpha1.PhaseRunning
	}
	return v1alpha1.PhaseDisabled
}

// waitPhase polls the MeshCNI until its status describes the current
// generation in phase ("": the spec's settled phase), printing each change of the progress line to w. On
// timeout, notReady names what holds it back.
func waitPhase(ctx context.Context, c *cmdutil.Clients, phase string, timeout, interval time.Duration, w io.Writer,
	notReady func(context.Context) string) (*v1alpha1.MeshCNI, error) {
	var last *v1alpha1.MeshCNI
	lastLine := ""
	err := cmdutil.Poll(ctx, timeout, interval, func(ctx context.Context) (bool, error) {
		_, mc, err := getMesh(ctx, c)
		if errors.Is(err, errNoResource) {
			if phase == v1alpha1.PhaseDisabled {
				return true, nil // deleted: nothing is installed either
			}
			if line := "no MeshCNI " + v1alpha1.Name + " yet (meshcnictl enable)"; line != lastLine {
				lastLine = line
				fmt.Fprintln(w, line)
			}
			return false, nil
		}
		if err != nil {
			return false, err
		}
		last = mc
		if line := phaseLine(mc); line != lastLine {
			lastLine = line
			fmt.Fprintln(w, line)
		}
		return reached(mc, phase), nil
	})
	if errors.Is(err, cmdutil.ErrTimeout) {
		want := phase
		if last != nil {
			want = settled(last, phase)
		} else if want == "" {
			want = v1alpha1.PhaseRunning
		}
		msg := fmt.Sprintf("timed out after %v waiting for phase %s", timeout, want)
		if last != nil {
			msg += "; last: " + phaseLine(last)
		}
		if notReady != nil {
			rctx, cancel := context.WithTimeout(ctx, cmdutil.RequestTimeout)
			defer cancel()
			if why := notReady(rctx); why != "" {
				msg += "; " + why
			}
		}
		return last, &TimeoutError{msg}
	}
	return last, err
}

// TimeoutError is a wait that ran out of time; its message says what
// was not ready.
type TimeoutError struct{ msg string }

func (e *TimeoutError) Error() string { return e.msg }

// notReadyNodes names the nodes whose agent is missing, failing, not ready
// or running older settings, from the release namespace's agent pods.
func notReadyNodes(c *cmdutil.Clients, namespace string) func(context.Context) string {
	return func(ctx context.Context) string {
		r, err := Report(ctx, c, namespace)
		if err != nil {
			return "could not list the agents: " + err.Error()
		}
		var bad []string
		for _, n := range r.Nodes {
			switch {
			case n.Pod == "":
				bad = append(bad, n.Node+" (no agent pod)")
			case n.Problem != "":
				bad = append(bad, fmt.Sprintf("%s (agent pod %s: %s)", n.Node, n.Pod, n.Problem))
			case !n.Ready:
				bad = append(bad, fmt.Sprintf("%s (agent pod %s not ready)", n.Node, n.Pod))
			case !n.Current:
				bad = append(bad, fmt.Sprintf("%s (agent pod %s runs older settings)", n.Node, n.Pod))
			}
		}
		if len(bad) == 0 {
			return ""
		}
		return "nodes not ready: " + strings.Join(bad, ", ")
	}
}
