package agent

import (
	"strings"
	"testing"
)

// The agent's /metrics carries meshcni_build_info = 1.
func TestAgentExportsBuildInfo(t *testing.T) {
	m := newMetrics()
	a := &Agent{metrics: m}
	_, body := (&running{Agent: a}).get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "meshcni_build_info{") && strings.HasSuffix(line, "} 1") &&
			strings.Contains(line, `goversion="go`) && strings.Contains(line, "revision=") && strings.Contains(line, "version=") {
			return
		}
	}
	t.Errorf("no meshcni_build_info in:\n%s", body)
}

// A record from another version, or a forged one, cannot make series
// beyond the fixed label sets.
func TestAddRecordLabelsStayBounded(t *testing.T) {
	m := newMetrics()
	a := &Agent{metrics: m}
	a.relog([]byte(`{"meshcni_add":1,"decision":"maybe","reason":"pod shop/a-123","backend":"ebpf","seconds":0.01}`))
	a.relog([]byte(`{"meshcni_add":1,"decision":"captured","reason":"captured","backend":"nftables","seconds":0.02}`))
	_, body := (&running{Agent: a}).get(t, "/metrics")
	for _, want := range []string{
		`meshcni_plugin_adds_total{decision="other",reason="other"} 1`,
		`meshcni_plugin_add_duration_seconds_count{backend="other",decision="other"} 1`,
		`meshcni_plugin_adds_total{decision="captured",reason="captured"} 1`,
		`meshcni_plugin_add_duration_seconds_count{backend="nftables",decision="captured"} 1`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("missing %s", want)
		}
	}
	if strings.Contains(body, "shop/a") || strings.Contains(body, "ebpf") {
		t.Error("a free-text value became a label")
	}
}
