//go:build integration

package console_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/meshcni/meshcni/internal/console"
	"github.com/meshcni/meshcni/internal/ctl"
	"github.com/meshcni/meshcni/test/kubeharness"
)

// startConsole runs `meshcnictl console` until the test ends and returns
// the URL it printed.
func startConsole(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out, w := io.Pipe()
	cmd := ctl.NewCmd(genericiooptions.IOStreams{In: strings.NewReader(""), Out: w, ErrOut: io.Discard})
	cmd.SetArgs(append([]string{"console"}, args...))
	done := make(chan error, 1)
	go func() {
		err := cmd.ExecuteContext(ctx)
		w.CloseWithError(err)
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("meshcnictl console: %v", err)
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("meshcnictl console printed no URL: %v", err)
	}
	go io.Copy(io.Discard, out) //nolint:errcheck // drain what follows
	u := regexp.MustCompile(`http://127\.0\.0\.1:\d+/`).FindString(line)
	if u == "" {
		t.Fatalf("no loopback URL in %q", line)
	}
	return u
}

func get(t *testing.T, u, host string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	if host != "" {
		req.Host = host
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func TestMeshcnictlConsole(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const ns = "console-cmd"
	must(t, cluster.EnsureNamespace(ctx, ns))

	t.Log("--local: the page from this process, with the kubeconfig's own (certificate) identity")
	u := startConsole(t, "--kubeconfig", cluster.AdminKubeconfig, "-n", ns, "--local")
	code, body := get(t, u+"api/state", "")
	var s console.State
	if code != http.StatusOK || json.Unmarshal([]byte(body), &s) != nil {
		t.Fatalf("GET api/state: %d %s", code, body)
	}
	if !s.CanUpdate || !strings.Contains(s.User, kubeharness.AdminUser) {
		t.Errorf("state as the admin: user %q canUpdate %v", s.User, s.CanUpdate)
	}
	if code, _ := get(t, u+"api/state", "rebound.example:80"); code != http.StatusMisdirectedRequest {
		t.Errorf("a foreign Host got %d, want 421", code)
	}

	t.Log("a client-certificate kubeconfig cannot be forwarded: a clear error")
	var errb strings.Builder
	cmd := ctl.NewCmd(genericiooptions.IOStreams{In: strings.NewReader(""), Out: io.Discard, ErrOut: &errb})
	cmd.SetArgs([]string{"console", "--kubeconfig", cluster.AdminKubeconfig})
	if err := cmd.ExecuteContext(ctx); err == nil || !strings.Contains(err.Error(), "--local") {
		t.Errorf("console with a certificate kubeconfig: %v", err)
	}

	t.Log("forwarded: the request reaches the API server's service proxy signed as the user")
	path, _ := userKubeconfig(t, ctx, "console-cmd-user", []string{"get"})
	u = startConsole(t, "--kubeconfig", path, "-n", ns)
	code, body = get(t, u+"api/state", "")
	// The user may not proxy to services: the API server names them, the
	// resource and the service, so the request went where it should, as them.
	for _, want := range []string{"system:serviceaccount:console-users:console-cmd-user", "services/proxy", `"https:meshcni-controller:console"`, ns} {
		if code != http.StatusForbidden || !strings.Contains(body, want) {
			t.Errorf("GET api/state through the service proxy: %d %s; want 403 naming %s", code, body, want)
		}
	}
}

func TestMeshcnictlVersion(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := fmt.Sprintf("version-cmd-%d", runs.Add(1))
	pod := func(name, component, container, image string) {
		p := kubeharness.NewPod(ns, name, "node-a")
		p.Labels = map[string]string{"app.kubernetes.io/name": "meshcni", "app.kubernetes.io/component": component}
		p.Spec.Containers = []corev1.Container{{Name: container, Image: image}}
		_, err := cluster.CreatePod(ctx, p)
		must(t, err)
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	pod("controller-1", "controller", "meshcni-controller", "ghcr.io/meshcni/meshcni-controller:0.2.0")
	pod("controller-2", "controller", "meshcni-controller", "ghcr.io/meshcni/meshcni-controller:0.2.0")
	pod("agent-a", "agent", "meshcni-agent", "ghcr.io/meshcni/meshcni-agent:0.1.0")
	pod("agent-b", "agent", "meshcni-agent", "ghcr.io/meshcni/meshcni-agent@"+digest)
	// Another app's pod in the namespace is not meshcni.
	other := kubeharness.NewPod(ns, "other", "node-a")
	other.Labels = map[string]string{"app.kubernetes.io/component": "agent"}
	_, err := cluster.CreatePod(ctx, other)
	must(t, err)

	run := func(kubeconfig string, args ...string) (string, string) {
		var out, errb strings.Builder
		cmd := ctl.NewCmd(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errb})
		cmd.SetArgs(append([]string{"version", "--kubeconfig", kubeconfig, "-n", ns}, args...))
		if err := cmd.ExecuteContext(ctx); err != nil {
			t.Fatalf("meshcnictl version %v: %v", args, err)
		}
		return out.String(), errb.String()
	}
	out, _ := run(cluster.AdminKubeconfig, "-o", "json")
	var info ctl.VersionInfo
	must(t, json.Unmarshal([]byte(out), &info))
	wantController := []ctl.Component{{Image: "ghcr.io/meshcni/meshcni-controller:0.2.0", Version: "0.2.0", Pods: 2}}
	wantAgents := []ctl.Component{
		{Image: "ghcr.io/meshcni/meshcni-agent:0.1.0", Version: "0.1.0", Pods: 1},
		{Image: "ghcr.io/meshcni/meshcni-agent@" + digest, Version: digest, Pods: 1},
	}
	if !slices.Equal(info.Controller, wantController) || !slices.Equal(info.Agents, wantAgents) || info.Cluster != "" || info.Client.Version == "" {
		t.Errorf("version -o json = %s", out)
	}
	out, _ = run(cluster.AdminKubeconfig)
	if !strings.Contains(out, "controller  0.2.0") || !strings.Contains(out, digest) {
		t.Errorf("version table:\n%s", out)
	}

	// A user who may not list pods still gets the client's version, and why
	// the rest is missing.
	path, _ := userKubeconfig(t, ctx, "version-user", []string{"get"})
	must(t, cluster.Client.RbacV1().ClusterRoles().Delete(ctx, kubeharness.ClusterRoleName("console-users", "version-user"), metav1.DeleteOptions{}))
	out, errOut := run(path)
	if !strings.Contains(out, "meshcnictl") || !strings.Contains(errOut, "forbidden") {
		t.Errorf("version without rights: stdout %q stderr %q", out, errOut)
	}
}
