//go:build integration

package agent

import (
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	agentpkg "github.com/meshcni/meshcni/internal/agent"
	"github.com/meshcni/meshcni/test/testbed"
)

// A node labelled meshcni.io/iptables-backend=nftables gets the native
// backend although the flags say iptables-nft; the startup taint comes off
// only once the entry says so, and the agent's own update of its entry is
// not taken for another writer's.
func TestBackendLabel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	node := newNode(t)
	nodeName := "label-node-1"
	createNode(t, nodeName, map[string]string{agentpkg.BackendLabel: "nftables"}, agentpkg.StartupTaint)
	o, _, _ := agentOnNode(t, node, nodeName, "meshcni-agent-label", nodeRules)
	o.IptablesBackend = "nft"
	logs := &testbed.SyncBuffer{}
	a, err := agentpkg.New(o, slog.New(slog.NewJSONHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	done, stop := runAgent(t, a)

	backend := func() string {
		list, err := libcni.ConfListFromFile(node.ConflistPath())
		if err != nil {
			return ""
		}
		var e map[string]any
		last := list.Plugins[len(list.Plugins)-1]
		if json.Unmarshal(last.Bytes, &e) != nil || e["type"] != "meshcni" {
			return ""
		}
		s, _ := e["iptablesBackend"].(string)
		return s
	}
	// Wait on the agent's own report: it turns ready only after the patch
	// that lifted the taint returned, so the API shows the taint gone a
	// moment before the agent says so (waiting on the API and then asking
	// the agent once failed in CI).
	waitFor(t, 15*time.Second, "the agent to report ready", func() bool { ok, _ := a.Ready(); return ok })
	if hasStartupTaint(t, nodeName) {
		t.Fatal("the agent reports ready while the node still carries the startup taint")
	}
	if got := backend(); got != "nftables" {
		t.Fatalf("the entry's backend is %q once the taint is off, want the label's nftables\n%s", got, logs)
	}
	if strings.Contains(logs.String(), "put the meshcni entry back") || strings.Contains(logs.String(), "another writer") {
		t.Fatalf("the agent's own update was taken for a fight:\n%s", logs)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatalf("agent: %v", err)
	}
}
