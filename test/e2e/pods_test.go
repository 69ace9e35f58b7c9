//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Pod is a pod as kubelet would run it: the API object, its CRI sandbox
// and its containers by name.
type Pod struct {
	Namespace, Name, UID string
	Sandbox              string            // CRI pod sandbox ID
	IP                   string            // the primary address (IPv4)
	IP6                  string            // the IPv6 address, when the node's IPAM hands one out
	Containers           map[string]string // container name -> CRI container ID
	config               string            // the sandbox config file, which CreateContainer takes too
}

// createAPIPod stores pod in the API server and deletes it at cleanup.
func createAPIPod(t *testing.T, pod *corev1.Pod) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	created, err := env.cluster.CreatePod(ctx, pod)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.cluster.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	return created
}

// runPod does what kubelet does for a new pod: RunPodSandbox with the
// pod's name, namespace and UID (CRI hands them to CNI as K8S_POD_*),
// then create and start each container. It fails the test on any error.
func runPod(t *testing.T, pod *corev1.Pod) *Pod {
	t.Helper()
	p, err := runSandbox(t, createAPIPod(t, pod))
	if err != nil {
		t.Fatalf("RunPodSandbox %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	for _, c := range pod.Spec.Containers {
		p.Containers[c.Name] = startContainer(t, p, c)
	}
	return p
}

// runSandbox runs only the sandbox (and so the CNI chain); it removes it
// at cleanup. It may run in parallel: errors are returned, not fatal.
func runSandbox(t *testing.T, pod *corev1.Pod) (*Pod, error) {
	t.Helper()
	ctx := context.Background()
	p := &Pod{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Containers: map[string]string{}}
	config := map[string]any{
		"metadata": map[string]any{"name": p.Name, "namespace": p.Namespace, "uid": p.UID, "attempt": 0},
		"hostname": p.Name,
		"labels": map[string]string{
			"io.kubernetes.pod.name": p.Name, "io.kubernetes.pod.namespace": p.Namespace, "io.kubernetes.pod.uid": p.UID,
		},
		"log_directory": filepath.Join(env.rt.Dir, "pods", p.Namespace+"_"+p.Name+"_"+p.UID),
		"linux": map[string]any{
			"cgroup_parent":    env.rt.Cgroup + "/pod" + p.UID,
			"security_context": map[string]any{"namespace_options": map[string]any{"pid": 1}}, // CONTAINER, kubelet's default
		},
	}
	var err error
	if p.config, err = writeJSON(t.TempDir(), "pod-"+p.Name+".json", config); err != nil {
		return nil, err
	}
	out, err := env.rt.Crictl(ctx, "runp", p.config)
	if err != nil {
		return nil, err
	}
	p.Sandbox = strings.TrimSpace(out)
	t.Cleanup(func() { removeSandbox(t, p) })
	var status struct {
		Status struct {
			Network struct {
				IP            string
				AdditionalIPs []struct{ IP string } `json:"additionalIps"`
			} `json:"network"`
		} `json:"status"`
	}
	if err := inspect("inspectp", p.Sandbox, &status); err != nil {
		return p, err
	}
	if p.IP = status.Status.Network.IP; p.IP == "" {
		return p, fmt.Errorf("sandbox %s of %s/%s has no IP", p.Sandbox, p.Namespace, p.Name)
	}
	for _, a := range status.Status.Network.AdditionalIPs {
		if strings.Contains(a.IP, ":") {
			p.IP6 = a.IP
		}
	}
	return p, nil
}

func removeSandbox(t *testing.T, p *Pod) {
	if env.rt.Closing() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := env.rt.Crictl(ctx, "rmp", "--force", p.Sandbox); err != nil && !strings.Contains(err.Error(), "not found") {
		t.Errorf("remove sandbox of %s/%s: %v %s", p.Namespace, p.Name, err, out)
	}
}

// startContainer creates and starts container c in p the way kubelet
// maps a container spec: istio-proxy gets the sidecar image, anything
// else the app image serving its declared ports; runAsUser/runAsGroup
// are passed through.
func startContainer(t *testing.T, p *Pod, c corev1.Container) string {
	t.Helper()
	ctx := context.Background()
	image, args := appImage.Ref, []string{}
	if c.Name == "istio-proxy" {
		image = sidecarImage.Ref
	} else {
		for _, port := range c.Ports {
			args = append(args, fmt.Sprintf("app=:%d", port.ContainerPort))
		}
		if len(args) == 0 {
			args = append(args, "app=:8080")
		}
	}
	sc := map[string]any{}
	if s := c.SecurityContext; s != nil {
		if s.RunAsUser != nil {
			sc["run_as_user"] = map[string]any{"value": *s.RunAsUser}
		}
		if s.RunAsGroup != nil {
			sc["run_as_group"] = map[string]any{"value": *s.RunAsGroup}
		}
	}
	config := map[string]any{
		"metadata": map[string]any{"name": c.Name, "attempt": 0},
		"image":    map[string]any{"image": image},
		"labels": map[string]string{
			"io.kubernetes.container.name": c.Name, "io.kubernetes.pod.name": p.Name,
			"io.kubernetes.pod.namespace": p.Namespace, "io.kubernetes.pod.uid": p.UID,
		},
		"log_path": c.Name + "/0.log",
		"linux":    map[string]any{"security_context": sc},
	}
	if len(args) > 0 {
		config["args"] = args
	}
	ctrPath, err := writeJSON(t.TempDir(), "ctr-"+p.Name+"-"+c.Name+".json", config)
	if err != nil {
		t.Fatal(err)
	}
	out, err := env.rt.Crictl(ctx, "create", "--no-pull", p.Sandbox, ctrPath, p.config)
	if err != nil {
		t.Fatalf("CreateContainer %s in %s/%s: %v", c.Name, p.Namespace, p.Name, err)
	}
	id := strings.TrimSpace(out)
	if _, err := env.rt.Crictl(ctx, "start", id); err != nil {
		t.Fatalf("StartContainer %s in %s/%s: %v", c.Name, p.Namespace, p.Name, err)
	}
	return id
}

func writeJSON(dir, name string, v any) (string, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	return path, os.WriteFile(path, b, 0o644)
}

func inspect(verb, id string, v any) error {
	out, err := env.rt.Crictl(context.Background(), verb, "-o", "json", id)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("crictl %s %s: %v\n%s", verb, id, err, out)
	}
	return nil
}

// containerID looks a running container up through CRI by pod and name,
// as an operator does with `crictl ps --pod <pod> --name <name> -q`.
func containerID(t *testing.T, p *Pod, name string) string {
	t.Helper()
	out, err := env.rt.Crictl(context.Background(), "ps", "--pod", p.Sandbox, "--name", "^"+name+"$", "--state", "running", "-q")
	if err != nil {
		t.Fatal(err)
	}
	ids := strings.Fields(out)
	if len(ids) != 1 {
		t.Fatalf("crictl ps found %d running containers named %s in %s/%s: %q", len(ids), name, p.Namespace, p.Name, out)
	}
	return ids[0]
}

// natTable reads the NAT table of the netns a process lives in exactly as
// an operator does: PID from `crictl inspect` (or inspectp for the
// sandbox), then `nsenter -t <pid> -n iptables -L -t nat -n -v
// --line-numbers -x`.
func natTable(t *testing.T, verb, id string) string {
	t.Helper()
	return natTableOf(t, "iptables", verb, id)
}

// natTableOf is natTable with ip6tables as well.
func natTableOf(t *testing.T, iptables, verb, id string) string {
	t.Helper()
	var info struct {
		Info struct {
			PID int `json:"pid"`
		} `json:"info"`
	}
	if err := inspect(verb, id, &info); err != nil {
		t.Fatal(err)
	}
	if info.Info.PID == 0 {
		t.Fatalf("crictl %s %s: no pid", verb, id)
	}
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(info.Info.PID), "-n",
		iptables, "-L", "-t", "nat", "-n", "-v", "--line-numbers", "-x").CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter -t %d -n %s -L -t nat: %v\n%s", info.Info.PID, iptables, err, out)
	}
	return string(out)
}

// ask runs `box ask addr` in container id through CRI's streaming exec
// and returns the answer line. A listener that is not up yet is retried
// for a few seconds; any other failure is returned.
func ask(id, addr string) (string, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out, err := env.rt.Crictl(ctx, "exec", id, "/box", "ask", addr)
		cancel()
		if err == nil {
			return strings.TrimSpace(out), nil
		}
		if !strings.Contains(err.Error(), "connection refused") || time.Now().After(deadline) {
			return "", err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func mustAsk(t *testing.T, p *Pod, container, addr string) string {
	t.Helper()
	got, err := ask(p.Containers[container], addr)
	if err != nil {
		t.Fatalf("%s/%s[%s] -> %s: %v", p.Namespace, p.Name, container, addr, err)
	}
	return got
}

// logs is a container's log as `crictl logs` shows it.
func logs(t *testing.T, id string) string {
	t.Helper()
	out, err := env.rt.Crictl(context.Background(), "logs", id)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cniCalls returns the runtime's calls to meshcni for a sandbox, in order,
// each as "COMMAND netns=PATH".
func cniCalls(t *testing.T, sandbox string) []string {
	t.Helper()
	b, err := os.ReadFile(env.calls)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var calls []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.SplitN(line, " ", 3)
		if len(f) == 3 && f[1] == sandbox {
			calls = append(calls, f[0]+" "+f[2])
		}
	}
	return calls
}

// callsMark is where env.calls ends now; newCalls returns the lines
// appended since.
func callsMark(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(env.calls)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(b)
}

func newCalls(t *testing.T, mark int) []string {
	t.Helper()
	b, err := os.ReadFile(env.calls)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b[mark:])), "\n")
}
