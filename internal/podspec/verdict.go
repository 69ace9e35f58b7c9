package podspec

import (
	"errors"
	"net/netip"

	"github.com/meshcni/meshcni/internal/capture"
)

// Judge decides about pods for one meshcni entry: its capture base and
// its excluded namespaces. The plug-in, repair and verify each build it
// from the same parsed entry, so one function makes the decision for all.
type Judge struct {
	base     capture.Spec
	excluded map[string]bool
}

// NewJudge returns the judge of an entry's base spec and exclusions.
func NewJudge(base capture.Spec, excludeNamespaces []string) Judge {
	j := Judge{base: base, excluded: map[string]bool{}}
	for _, ns := range excludeNamespaces {
		j.excluded[ns] = true
	}
	return j
}

// Base is the spec every pod starts from.
func (j Judge) Base() capture.Spec { return j.base }

// Verdict is what meshcni decides about a pod.
type Verdict struct {
	Capture bool
	// Reason says why, for logs and for verify.
	Reason string
	// Code is Reason in a word, one of Codes, for metrics.
	Code string
	// Spec is the capture spec, when Capture.
	Spec capture.Spec
	// ProgrammedBy names what programs the rules of a pod meshcni does
	// not capture ("istio-init"), or is empty when nothing should.
	ProgrammedBy string
	// Warnings are settings read otherwise than written (a proxy flag
	// Istio reads as false), for the log.
	Warnings []string
}

// Namespace is the part of the decision made from the namespace alone;
// done says the pod is decided (excluded) without looking it up. The
// plug-in calls it before any API call; Pod calls it first too.
func (j Judge) Namespace(ns string) (v Verdict, done bool) {
	if j.excluded[ns] {
		return Verdict{Reason: "namespace " + ns + " is excluded", Code: CodeExcludedNamespace}, true
	}
	return Verdict{}, false
}

// Pod decides about pod: captured or not, why, and its spec. addrs are
// the pod's addresses (prevResult, the netns's, or the API's podIPs), from
// which the spec's IPv6 is decided as Istio does (capture.EnableIPv6). The
// error names what to correct in the pod: an annotation, the proxy's
// identity, or the rule budget.
func (j Judge) Pod(pod *Pod, addrs []netip.Addr) (Verdict, error) {
	v, done := j.Namespace(pod.Namespace)
	if !done {
		v.Capture, v.Code, v.Reason = decide(pod)
	}
	if !v.Capture {
		if hasInit(pod) {
			v.ProgrammedBy = initName
		}
		return v, nil
	}
	proxy := ProxyOf(pod)
	spec, err := capture.FromPod(j.base, pod.Annotations, proxy, addrs)
	if err != nil {
		v.Code = CodeInvalidPod
		if errors.Is(err, capture.ErrOverBudget) {
			v.Code = CodeBudget
		}
		return v, err
	}
	v.Spec, v.Warnings = spec, proxy.FlagWarnings()
	return v, nil
}
