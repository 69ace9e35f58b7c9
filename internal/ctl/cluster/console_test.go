package cluster

import (
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func TestConsoleValidate(t *testing.T) {
	token := &rest.Config{Host: "https://api:6443", BearerToken: "t"}
	cert := &rest.Config{Host: "https://api:6443", TLSClientConfig: rest.TLSClientConfig{CertData: []byte("c"), KeyData: []byte("k")}}
	for _, tc := range []struct {
		name string
		o    ConsoleOptions
		want string // "" means valid
	}{
		{"defaults with a token", ConsoleOptions{Address: "127.0.0.1", cfg: token}, ""},
		{"localhost", ConsoleOptions{Address: "localhost", Port: 8080, cfg: token}, ""},
		{"an exec plug-in gives a token", ConsoleOptions{Address: "::1", cfg: &rest.Config{ExecProvider: &clientcmdapi.ExecConfig{Command: "gke-gcloud-auth-plugin"}}}, ""},
		{"a certificate with --local", ConsoleOptions{Address: "127.0.0.1", Local: true, cfg: cert}, ""},
		{"a certificate forwarded", ConsoleOptions{Address: "127.0.0.1", cfg: cert}, "--local"},
		{"every address", ConsoleOptions{Address: "0.0.0.0", cfg: token}, "anyone who reaches"},
		{"every IPv6 address", ConsoleOptions{Address: "::", cfg: token}, "anyone who reaches"},
		{"a name", ConsoleOptions{Address: "example.com", cfg: token}, "an IP address"},
		{"a port out of range", ConsoleOptions{Address: "127.0.0.1", Port: 70000, cfg: token}, "0 to 65535"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.o.Validate()
			if (tc.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}
