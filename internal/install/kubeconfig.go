package install

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// WriteKubeconfig writes the kubeconfig the plugin uses to reach the API
// server: one cluster (server, caData), one token user, one current context.
// The file is written atomically with mode 0600 and left alone if it already
// has this content and mode.
func WriteKubeconfig(path, server string, caData []byte, token string) (changed bool, err error) {
	if server == "" || token == "" {
		return false, fmt.Errorf("kubeconfig %s: server and token must be set", path)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["local"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caData}
	cfg.AuthInfos["meshcni"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["meshcni"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "meshcni"}
	cfg.CurrentContext = "meshcni"
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return false, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() == 0o600 {
			return false, nil
		}
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("kubeconfig %s: %w", path, err)
	}
	if err := writeFileAtomic(path, data, 0o600); err != nil {
		return false, err
	}
	return true, nil
}
