package plugin

import (
	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podspec"
)

// This file exports the plug-in's config parsing for `meshcnictl verify`
// and `doctor` and the agent's repair, so that they read the entry exactly
// as ADD does; Entry.Judge is the pod decision ADD makes.

// Entry is a conflist entry of meshcni, parsed and checked as ADD does.
type Entry struct {
	// Base is the capture spec every pod starts from.
	Base       capture.Spec
	Backend    netfilter.Backend
	Kubeconfig string
	LockDir    string
	LogSocket  string
	// Judge decides about pods exactly as ADD does with this entry,
	// namespace exclusion included.
	Judge podspec.Judge
}

// ParseEntry parses the meshcni entry of a conflist (or a full plug-in
// stdin); the error names the field to fix.
func ParseEntry(data []byte) (*Entry, error) {
	conf, err := parseConfig(data)
	if err != nil {
		return nil, err
	}
	return &Entry{
		Base: conf.captureBase, Backend: conf.backend, Kubeconfig: conf.Kubeconfig,
		LockDir: conf.LockDir, LogSocket: conf.LogSocket, Judge: conf.judge,
	}, nil
}
