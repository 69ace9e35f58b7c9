package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"k8s.io/client-go/tools/clientcmd"
)

// apiTarget is where the plug-in's kubeconfig points and which CA it
// trusts; fixed at start. The token is read again every round.
type apiTarget struct {
	server string
	ca     []byte // from the kubeconfig; nil: read caPath every round
	caPath string
}

// resolveAPI picks the API server: --api-server, else --kubeconfig's
// server, else the in-cluster service environment. getenv is os.Getenv
// outside tests.
func resolveAPI(o *Options, getenv func(string) string) (apiTarget, error) {
	t := apiTarget{server: o.APIServer, caPath: o.CAPath}
	if o.Kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", o.Kubeconfig)
		if err != nil {
			return t, fmt.Errorf("--kubeconfig %s: %w", o.Kubeconfig, err)
		}
		if t.server == "" {
			t.server = cfg.Host
		}
		if t.caPath == "" {
			switch {
			case len(cfg.CAData) > 0:
				t.ca = cfg.CAData
			case cfg.CAFile != "":
				t.caPath = cfg.CAFile
			}
		}
	}
	if t.server == "" {
		host, port := getenv("KUBERNETES_SERVICE_HOST"), getenv("KUBERNETES_SERVICE_PORT")
		if host == "" || port == "" {
			return t, errors.New("no API server: set --api-server or --kubeconfig, or run in a pod (KUBERNETES_SERVICE_HOST/PORT)")
		}
		t.server = "https://" + net.JoinHostPort(host, port)
	}
	if t.ca == nil && t.caPath == "" {
		t.caPath = DefaultCAPath
	}
	return t, nil
}

// caData returns the CA the plug-in trusts. A plain-http server needs none.
func (t apiTarget) caData() ([]byte, error) {
	if t.ca != nil {
		return t.ca, nil
	}
	ca, err := os.ReadFile(t.caPath)
	if err != nil {
		if strings.HasPrefix(t.server, "http://") {
			return nil, nil
		}
		return nil, fmt.Errorf("CA for %s (--ca-path): %w", t.server, err)
	}
	return ca, nil
}

// readToken reads the service account token; projected volumes replace it
// before it expires.
func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("service account token (--token-path): %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("service account token %s is empty", path)
	}
	return tok, nil
}
