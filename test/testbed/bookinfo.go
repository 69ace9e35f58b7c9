package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/internal/apilookup"
)

// Node name every testbed pod is bound to.
const NodeName = "node-1"

// MeshPod is a pod the way Istio's injector leaves it in CNI mode: the
// app container, then istio-proxy running as 1337, no istio-init.
func MeshPod(namespace, name string, appPort int32) *corev1.Pod {
	uid := int64(1337)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace:   namespace,
			Name:        name,
			Labels:      map[string]string{"app": name},
			Annotations: map[string]string{"sidecar.istio.io/status": `{"containers":["istio-proxy"]}`},
		},
		Spec: corev1.PodSpec{
			NodeName: NodeName,
			Containers: []corev1.Container{
				{Name: name, Image: "docker.io/istio/examples-bookinfo-" + name + ":1.20",
					Ports: []corev1.ContainerPort{{ContainerPort: appPort}}},
				{Name: "istio-proxy", Image: "docker.io/istio/proxyv2:1.24",
					Args:            []string{"proxy", "sidecar"},
					SecurityContext: &corev1.SecurityContext{RunAsUser: &uid, RunAsGroup: &uid},
					Env:             []corev1.EnvVar{{Name: "ISTIO_META_DNS_CAPTURE", Value: "false"}}},
			},
		},
	}
}

// Bookinfo is the classic sample, each pod with its app port.
var Bookinfo = []struct {
	Name string
	Port int32
}{
	{"productpage", 9080}, {"details", 9080}, {"reviews", 9080}, {"ratings", 9080},
}

// BuildPlugin compiles the meshcni binary and its API lookup helper into
// dir, static as the image ships them, and returns the plug-in's path.
func BuildPlugin(dir string) (string, error) {
	cmd := exec.Command("go", "build", "-trimpath", "-o", dir+"/",
		"github.com/meshcni/meshcni/cmd/meshcni", "github.com/meshcni/meshcni/cmd/"+apilookup.HelperName)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build meshcni: %w", err)
	}
	return filepath.Join(dir, "meshcni"), nil
}
