package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
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

// runPluginTokens keeps a short-lived token for the plug-in at TokenPath,
// minted with TokenRequest for PluginServiceAccount (in the agent's
// namespace; the chart's may only get pods), bound to the agent's node
// and for the API server's own audience (no audiences requested). Bound
// to the node, not the agent's pod: the API refuses to bind a token to a
// pod that runs as another service account. Once the Node is deleted the
// token is rejected; it is minted again at 80% of its lifetime, and the reconcile loop (which watches the token's directory)
// writes it into the plug-in's kubeconfig. Failures are logged and
// retried with backoff; the previous token stays valid until it expires.
func (a *Agent) runPluginTokens(ctx context.Context, cs kubernetes.Interface) {
	backoff := time.Second
	for {
		wait := backoff
		expires, err := a.mintPluginToken(ctx, cs)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			a.log.Warn("could not mint the plug-in's token; retrying", "service_account", a.opts.PluginServiceAccount,
				"retry_in", backoff.String(), "error", err)
			backoff = min(2*backoff, 30*time.Second)
		} else {
			backoff = time.Second
			wait = refreshAfter(time.Now(), expires)
			if a.tokenRefresh > 0 {
				wait = a.tokenRefresh
			}
			a.log.Info("minted the plug-in's token", "service_account", a.opts.PluginServiceAccount,
				"path", a.opts.TokenPath, "expires", expires.UTC().Format(time.RFC3339), "next_in", wait.Round(time.Second).String())
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// refreshAfter is when to mint the next token: at 80% of the remaining
// lifetime, so that a rotation that fails has a fifth of it to retry.
func refreshAfter(now, expires time.Time) time.Duration {
	return max(expires.Sub(now)*4/5, time.Second)
}

// mintPluginToken requests one token and writes it to TokenPath, and
// returns when it expires.
func (a *Agent) mintPluginToken(ctx context.Context, cs kubernetes.Interface) (time.Time, error) {
	o := &a.opts
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	node, err := cs.CoreV1().Nodes().Get(rctx, o.NodeName, metav1.GetOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("this node (to bind the token to): %w", err)
	}
	secs := int64(o.PluginTokenTTL / time.Second)
	tr, err := cs.CoreV1().ServiceAccounts(o.PodNamespace).CreateToken(rctx, o.PluginServiceAccount, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			ExpirationSeconds: &secs,
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: node.Name, UID: node.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return time.Time{}, fmt.Errorf("TokenRequest for %s/%s: %w", o.PodNamespace, o.PluginServiceAccount, err)
	}
	if tr.Status.Token == "" {
		return time.Time{}, errors.New("TokenRequest answered without a token")
	}
	if err := writeSecret(o.TokenPath, []byte(tr.Status.Token+"\n")); err != nil {
		return time.Time{}, err
	}
	return tr.Status.ExpirationTimestamp.Time, nil
}

// writeSecret replaces path with data, mode 0600, through a temp file in
// the same directory and a rename: the watcher never reads half a token.
func writeSecret(path string, data []byte) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".meshcni-token-*.tmp")
	if err != nil {
		return fmt.Errorf("plug-in token: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
			err = fmt.Errorf("plug-in token %s: %w", path, err)
		}
	}()
	if _, err = f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Chmod(0o600); err != nil {
		_ = f.Close()
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
