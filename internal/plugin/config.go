package plugin

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/meshcni/meshcni/internal/trust"
)

// Supported lists the CNI versions meshcni speaks.
var Supported = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// podCacheTimeout bounds the question to the agent's pod cache; past it
// the plug-in asks the API. The agent waits up to podcache.DefaultWait for
// a pod its watch has not shown yet. It is generous because what makes the
// answer slow is a CPU-starved node: with 200 ms, 100 ADDs at once on 2
// cores sent a third of the pods to the API (TLS handshakes and GETs) at
// the worst moment. A hung agent costs each ADD this much once more before
// the API answers.
const podCacheTimeout = time.Second

// configError is a CNI error 7 naming what to fix.
func configError(format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, "meshcni: invalid config: "+fmt.Sprintf(format, a...), "")
}

// checkLockDir refuses a lock dir others could change: root creates and
// removes lock files there, and whoever can write it can hold any pod's
// lock. A dir that does not exist yet is made by root (0700) under its
// nearest existing ancestor, which must then be as closed itself.
func checkLockDir(dir string) error {
	existing := dir
	for {
		if _, err := os.Lstat(existing); err == nil || !errors.Is(err, fs.ErrNotExist) {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	if err := trust.Dir(existing); err != nil {
		return configError("lockDir %q: %v; use a directory only root can write (the agent keeps <run-dir>/locks so)", dir, err)
	}
	return nil
}

// k8sArgs are the pod identity the runtime passes in CNI_ARGS.
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive,stylecheck // CNI_ARGS key
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive,stylecheck // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive,stylecheck // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive,stylecheck // CNI_ARGS key
}

func parseArgs(s string) (*k8sArgs, error) {
	a := &k8sArgs{}
	a.IgnoreUnknown = true
	if err := types.LoadArgs(s, a); err != nil {
		return nil, types.NewError(types.ErrInvalidEnvironmentVariables, "meshcni: cannot parse CNI_ARGS", err.Error())
	}
	// Only a pod with both names is looked up (the other is "not a
	// Kubernetes pod"); check them before any lookup. A name the API
	// server could never have accepted used to reach it, come back as an
	// error, be retried and reported as "cannot reach the Kubernetes API".
	ns, name := string(a.K8S_POD_NAMESPACE), string(a.K8S_POD_NAME)
	if ns != "" && name != "" {
		if !isDNS1123Label(ns) {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(
				"meshcni: CNI_ARGS K8S_POD_NAMESPACE %s is not a Kubernetes namespace name "+
					"(at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit)", quoteArg(ns)), "")
		}
		if !isDNS1123Subdomain(name) {
			return nil, types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(
				"meshcni: CNI_ARGS K8S_POD_NAME %s is not a Kubernetes pod name "+
					"(at most 253 characters: '.'-separated parts of lower-case letters, digits and '-', each starting and ending with a letter or digit)", quoteArg(name)), "")
		}
	}
	return a, nil
}

// The names the API server accepts, as k8s.io/apimachinery's
// validation.IsDNS1123Label and IsDNS1123Subdomain define them (a
// namespace is a label, a pod's name a subdomain). Written out because
// the plug-in links no k8s.io package (each costs every exec its init);
// TestNameRulesMatchApimachinery compares the two.
const (
	dns1123LabelMax     = 63
	dns1123SubdomainMax = 253
)

func isDNS1123Label(s string) bool {
	if len(s) == 0 || len(s) > dns1123LabelMax {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

func isDNS1123Subdomain(s string) bool {
	if len(s) == 0 || len(s) > dns1123SubdomainMax {
		return false
	}
	for part := range strings.SplitSeq(s, ".") {
		// Each part is a label, without the label's own length limit.
		if len(part) == 0 || part[0] == '-' || part[len(part)-1] == '-' {
			return false
		}
		for i := 0; i < len(part); i++ {
			if c := part[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// maxQuotedArg bounds how much of a rejected CNI_ARGS value an error
// repeats: the runtime copies the message into the pod's events.
const maxQuotedArg = 80

// quoteArg is %q, clipped to maxQuotedArg bytes of s with its real length.
func quoteArg(s string) string {
	if len(s) <= maxQuotedArg {
		return strconv.Quote(s)
	}
	cut := maxQuotedArg
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + fmt.Sprintf("...(%d bytes)", len(s))
}
