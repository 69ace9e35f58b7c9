//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/meshcni/meshcni/test/daemon"
	"github.com/meshcni/meshcni/test/testbed"
)

// Agent is meshcni-agent running on the node (inside the node netns, as a
// hostNetwork DaemonSet pod would be).
type Agent struct {
	*daemon.Proc
	RunDir     string
	HealthAddr string // on the node's loopback
	node       ns.NetNS
}

// AgentOptions are the agent's inputs: what a DaemonSet would mount.
type AgentOptions struct {
	Binary       string // meshcni-agent
	PluginBinary string // the file installed as the plug-in; named meshcni
	Node         *testbed.Node
	Kubeconfig   string // server and CA for the plug-in
	TokenPath    string // the service account token
	Dir          string // run dir and log live here
	Args         []string
}

// agentHealthAddr is free in the node netns: nothing else listens there
// but the API forwarder and containerd's stream server (port 0).
const agentHealthAddr = "127.0.0.1:18000"

// StartAgent starts the agent and waits until /readyz says 200.
func StartAgent(ctx context.Context, o AgentOptions) (*Agent, error) {
	a := &Agent{RunDir: filepath.Join(o.Dir, "run"), HealthAddr: agentHealthAddr, node: o.Node.NS}
	argv := append([]string{o.Binary,
		"--cni-conf-dir", o.Node.ConfDir, "--cni-bin-dir", o.Node.BinDir, "--run-dir", a.RunDir,
		"--plugin-binary", o.PluginBinary, "--kubeconfig", o.Kubeconfig, "--token-path", o.TokenPath,
		"--health-addr", a.HealthAddr, "--log-level", "debug",
	}, o.Args...)
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	var err error
	if a.Proc, err = startInNetns("meshcni-agent", o.Node.NS.Path(), filepath.Join(o.Dir, "agent.log"), argv...); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body, err := a.Get("/readyz")
		if err == nil && code == http.StatusOK {
			return a, nil
		}
		if a.Exited() || time.Now().After(deadline) || ctx.Err() != nil {
			note := a.Stop(5 * time.Second)
			return nil, fmt.Errorf("meshcni-agent not ready (last /readyz: %d %q, %v) %s\nagent log:\n%s", code, body, err, note, a.Tail(30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Get requests path from the agent's health server, from inside the node
// netns.
func (a *Agent) Get(path string) (int, string, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			return testbed.Dial(a.node, addr, 2*time.Second)
		},
	}}
	resp, err := client.Get("http://" + a.HealthAddr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), nil
}
