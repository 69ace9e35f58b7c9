package podspec

// Codes are the verdict's reason in a word, from a fixed set, for metric
// labels (meshcni_plugin_adds_total{reason}) where Reason's free text,
// which names namespaces and annotations, would make unbounded series.
// Judge sets them; the plug-in adds its own failures (before or after
// the verdict) from the same list, so that one table names every outcome.
const (
	CodeCaptured          = "captured"
	CodeNotKubernetes     = "not-kubernetes"
	CodeExcludedNamespace = "excluded-namespace"
	CodeInjectFalse       = "inject-false"
	CodeNoSidecar         = "no-sidecar"
	CodeOneContainer      = "one-container"
	CodeIstioInit         = "istio-init"
	// CodeInvalidPod: the pod's annotations or proxy identity cannot be
	// turned into a spec (Judge.Pod's error).
	CodeInvalidPod = "invalid-pod"
	// CodeBudget: the pod's spec would take more rules than the budget.
	CodeBudget = "budget"

	// The plug-in's failures around the verdict.
	CodeInvalidInput = "invalid-input" // config, CNI_ARGS or prevResult
	CodeLookupFailed = "lookup-failed" // neither the cache nor the API answered
	CodeApplyFailed  = "apply-failed"  // the rules could not be programmed
)

// Codes lists every code, in the order the docs show them.
var Codes = []string{
	CodeCaptured, CodeNotKubernetes, CodeExcludedNamespace, CodeInjectFalse, CodeNoSidecar,
	CodeOneContainer, CodeIstioInit, CodeInvalidPod, CodeBudget,
	CodeInvalidInput, CodeLookupFailed, CodeApplyFailed,
}
