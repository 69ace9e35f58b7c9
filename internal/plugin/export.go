package plugin

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podspec"
)

// This file exports the plug-in's decisions for `meshcnictl verify` and
// `doctor`, so that they judge a pod exactly as ADD did.

// Decide reports whether the plug-in captures pod, and why. The namespace
// exclusion is separate: see Entry.Excluded.
func Decide(pod *corev1.Pod) (bool, string) { return podspec.Decide(pod) }

// ProxyOf extracts the sidecar's identity and environment from pod.
func ProxyOf(pod *corev1.Pod) capture.Proxy { return podspec.ProxyOf(pod) }

// Entry is a conflist entry of meshcni, parsed and checked as ADD does.
type Entry struct {
	// Base is the capture spec every pod starts from.
	Base       capture.Spec
	Backend    netfilter.Backend
	Kubeconfig string
	LockDir    string
	LogSocket  string
	excluded   map[string]bool
}

// Excluded reports whether the entry excludes namespace ns.
func (e *Entry) Excluded(ns string) bool { return e.excluded[ns] }

// ParseEntry parses the meshcni entry of a conflist (or a full plug-in
// stdin); the error names the field to fix.
func ParseEntry(data []byte) (*Entry, error) {
	conf, err := parseConfig(data)
	if err != nil {
		return nil, err
	}
	return &Entry{
		Base: conf.captureBase, Backend: conf.backend, Kubeconfig: conf.Kubeconfig,
		LockDir: conf.LockDir, LogSocket: conf.LogSocket, excluded: conf.excludedByNS,
	}, nil
}
