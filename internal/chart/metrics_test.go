package chart

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
	"sigs.k8s.io/yaml"

	"github.com/meshcni/meshcni/charts"
)

var metricsOn = map[string]any{"metrics": map[string]any{
	"serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "prom"}},
	"dashboard":      map[string]any{"enabled": true},
}}

// helm lint, as the helm binary runs it (Helm's own lint package), finds
// nothing above INFO with the metrics off (the default) and on.
func TestLintWithMetrics(t *testing.T) {
	kube := &chartutil.KubeVersion{Version: "v1.34.0", Major: "1", Minor: "34"}
	for name, vals := range map[string]map[string]any{"default": nil, "metrics on": metricsOn} {
		l := lint.AllWithKubeVersion(filepath.Join("..", "..", "charts", charts.Root), vals, "meshcni-system", kube)
		for _, m := range l.Messages {
			if m.Severity > support.InfoSev {
				t.Errorf("%s: %s", name, m)
			}
		}
	}
}

// Off by default, so deploy/meshcni.yaml is unchanged; on, the dashboard
// ConfigMap carries the JSON whole and the ServiceMonitor selects the
// three metrics Services.
func TestMetricsTemplates(t *testing.T) {
	off, err := Template(nil, Release, "meshcni-system")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(off, "ServiceMonitor") || strings.Contains(off, "grafana_dashboard") || strings.Contains(off, "-metrics") {
		t.Error("the default render has metrics objects")
	}
	on, err := Template(metricsOn, Release, "meshcni-system")
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]map[string]any{}
	for _, doc := range strings.Split(on, "\n---\n") {
		var obj map[string]any
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil || obj == nil {
			continue
		}
		md, _ := obj["metadata"].(map[string]any)
		kinds[obj["kind"].(string)+"/"+md["name"].(string)] = obj
	}
	for _, want := range []string{"ServiceMonitor/meshcni", "Service/meshcni-agent-metrics", "Service/meshcni-controller-metrics", "ConfigMap/meshcni-dashboard"} {
		if kinds[want] == nil {
			t.Errorf("no %s", want)
		}
	}
	cm := kinds["ConfigMap/meshcni-dashboard"]
	if cm == nil {
		return
	}
	if l := cm["metadata"].(map[string]any)["labels"].(map[string]any); l["grafana_dashboard"] != "1" {
		t.Errorf("dashboard labels %v", l)
	}
	file, err := fs.ReadFile(charts.FS, charts.Root+"/dashboards/meshcni.json")
	if err != nil {
		t.Fatal(err)
	}
	if got := cm["data"].(map[string]any)["meshcni.json"]; got != strings.TrimSuffix(string(file), "\n") {
		t.Error("the ConfigMap's dashboard differs from dashboards/meshcni.json")
	}
	sm := kinds["ServiceMonitor/meshcni"]
	if l := sm["metadata"].(map[string]any)["labels"].(map[string]any); l["release"] != "prom" {
		t.Errorf("ServiceMonitor labels %v", l)
	}
}

// metricName is a series a dashboard queries or a Go file names.
var metricName = regexp.MustCompile(`\b(meshcni_[a-z_]+|process_[a-z_]+)\b`)

// codeMetrics are the metric names registered in internal/ (the Name of
// each CounterOpts, GaugeOpts, HistogramOpts).
func codeMetrics(t *testing.T) []string {
	t.Helper()
	decl := regexp.MustCompile(`Name:\s+"(meshcni_[a-z_]+)"`)
	var names []string
	err := filepath.WalkDir(filepath.Join("..", "..", "internal"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return err
		}
		src, err := os.ReadFile(p)
		for _, m := range decl.FindAllStringSubmatch(string(src), -1) {
			names = append(names, m[1])
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// Every series the dashboard queries is one the code exports (a
// histogram's _bucket, _sum and _count included; process_* from
// client_golang's process collector, which the agent registers), so the
// dashboard and the code cannot drift apart.
func TestDashboardQueriesExistingMetrics(t *testing.T) {
	raw, err := fs.ReadFile(charts.FS, charts.Root+"/dashboards/meshcni.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	code := codeMetrics(t)
	if len(code) < 10 {
		t.Fatalf("found only %v in internal/", code)
	}
	queried := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricName.FindAllString(tg.Expr, -1) {
				queried++
				if strings.HasPrefix(m, "process_") {
					if m != "process_resident_memory_bytes" && m != "process_cpu_seconds_total" {
						t.Errorf("panel %q: %s is not a process collector series", p.Title, m)
					}
					continue
				}
				base := m
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					if b, ok := strings.CutSuffix(m, suf); ok && slices.Contains(code, b) {
						base = b
					}
				}
				if !slices.Contains(code, base) {
					t.Errorf("panel %q queries %s, which no code exports", p.Title, m)
				}
			}
		}
	}
	if queried == 0 {
		t.Error("the dashboard queries nothing")
	}
}

// docs/metrics.md lists every metric the code exports.
func TestMetricsDocumented(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range codeMetrics(t) {
		if !strings.Contains(string(doc), "`"+m+"`") {
			t.Errorf("docs/metrics.md does not list `%s`", m)
		}
	}
}
