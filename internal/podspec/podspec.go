// Package podspec judges a pod the way the plug-in does: whether it is
// captured, why, and with which capture spec (Judge.Pod). The plug-in, the
// repair controller and meshcnictl verify share it, so they never disagree.
package podspec

import (
	"net/netip"
	"strings"

	"github.com/meshcni/meshcni/internal/capture"
)

const (
	sidecarName  = "istio-proxy"
	initName     = "istio-init"
	sidecarValue = "false"
)

// decide says whether a pod in a namespace meshcni captures is captured,
// why, and why in a word (one of Codes).
func decide(pod *Pod) (bool, string, string) {
	if strings.EqualFold(pod.Annotations[capture.AnnotationInject], sidecarValue) {
		return false, CodeInjectFalse, "annotation " + capture.AnnotationInject + "=false"
	}
	proxy := proxyContainer(pod)
	if proxy == nil {
		return false, CodeNoSidecar, "no " + sidecarName + " container"
	}
	n := len(pod.Spec.Containers)
	if !isRegular(pod, proxy) {
		n++ // a native sidecar counts as a container
	}
	if n < 2 {
		return false, CodeOneContainer, "only one container"
	}
	if hasInit(pod) {
		return false, CodeIstioInit, "has an " + initName + " init container, which programs the rules itself"
	}
	return true, CodeCaptured, "sidecar " + sidecarName + " present"
}

// proxyContainer finds istio-proxy among the containers, or among init
// containers as a native sidecar (restartPolicy Always), as Istio injects
// it on Kubernetes 1.29+.
func proxyContainer(pod *Pod) *Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == sidecarName {
			return &pod.Spec.Containers[i]
		}
	}
	for i := range pod.Spec.InitContainers {
		c := &pod.Spec.InitContainers[i]
		if c.Name == sidecarName && c.RestartPolicy == restartAlways {
			return c
		}
	}
	return nil
}

// ProxyOf extracts what the capture spec needs from the sidecar: its
// identity (runAsUser/runAsGroup, falling back to the pod's) and env.
func ProxyOf(pod *Pod) capture.Proxy {
	p := capture.Proxy{Env: map[string]string{}}
	if sc := pod.Spec.SecurityContext; sc != nil {
		p.UID, p.GID = sc.RunAsUser, sc.RunAsGroup
	}
	c := proxyContainer(pod)
	if c == nil {
		return p
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			p.UID = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			p.GID = sc.RunAsGroup
		}
	}
	for _, e := range c.Env {
		p.Env[e.Name] = e.Value
	}
	return p
}

func isRegular(pod *Pod, c *Container) bool {
	for i := range pod.Spec.Containers {
		if &pod.Spec.Containers[i] == c {
			return true
		}
	}
	return false
}

// Addrs are the pod's addresses as the API lists them (status.podIPs),
// for callers that have no netns or prevResult to read them from.
func Addrs(pod *Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// hasInit reports whether the pod carries istio-init, which programs its
// rules from inside the pod.
func hasInit(pod *Pod) bool {
	for _, c := range pod.Spec.InitContainers {
		if c.Name == initName {
			return true
		}
	}
	return false
}
