package scale

import (
	"math"
	"testing"
	"time"
)

const apiMetrics = `# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",resource="pods",scope="namespace",verb="LIST",version="v1"} 3
apiserver_request_total{code="201",component="apiserver",resource="pods",scope="resource",verb="POST",version="v1"} 40
apiserver_request_total{code="200",component="apiserver",resource="pods",scope="resource",subresource="status",verb="PATCH",version="v1"} 38
apiserver_longrunning_requests{component="apiserver",resource="pods",scope="cluster",verb="WATCH",version="v1"} 7
apiserver_longrunning_requests{component="apiserver",resource="nodes",scope="cluster",verb="WATCH",version="v1"} 2
apiserver_admission_webhook_admission_duration_seconds_bucket{name="pods.webhook.meshcni.io",operation="CREATE",rejected="false",type="admit",le="0.005"} 90
apiserver_admission_webhook_admission_duration_seconds_bucket{name="pods.webhook.meshcni.io",operation="CREATE",rejected="false",type="admit",le="0.025"} 99
apiserver_admission_webhook_admission_duration_seconds_bucket{name="pods.webhook.meshcni.io",operation="CREATE",rejected="false",type="admit",le="+Inf"} 100
weird_metric{msg="a \"quoted\", value}"} 1.5e+03
`

func TestParseMetrics(t *testing.T) {
	s, err := ParseMetrics(apiMetrics)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 9 {
		t.Fatalf("%d samples, want 9", len(s))
	}
	if got := Sum(s, "apiserver_request_total", map[string]string{"resource": "pods"}); got != 81 {
		t.Errorf("pods requests %v, want 81", got)
	}
	by := SumBy(s, "apiserver_request_total", nil, "verb", "subresource")
	if by["PATCH status"] != 38 || by["POST "] != 40 || by["LIST "] != 3 {
		t.Errorf("by verb: %v", by)
	}
	if got := Sum(s, "apiserver_longrunning_requests", map[string]string{"verb": "WATCH"}); got != 9 {
		t.Errorf("watches %v, want 9", got)
	}
	if last := s[len(s)-1]; last.Labels["msg"] != `a "quoted", value}` || last.Value != 1500 {
		t.Errorf("escaped label: %+v", last)
	}
	b := Buckets(s, "apiserver_admission_webhook_admission_duration_seconds", map[string]string{"name": "pods.webhook.meshcni.io"})
	if len(b) != 3 || !math.IsInf(b[2].UpperBound, 1) {
		t.Fatalf("buckets %v", b)
	}
	if got := BucketBound(b, 0.5); got != 0.005 {
		t.Errorf("p50 bound %v", got)
	}
	if got := BucketBound(b, 0.99); got != 0.025 {
		t.Errorf("p99 bound %v", got)
	}
	if got := BucketBound(b, 1); !math.IsInf(got, 1) {
		t.Errorf("p100 bound %v", got)
	}
	d := BucketDelta([]Bucket{{0.005, 80}, {0.025, 80}, {math.Inf(1), 80}}, b)
	if d[0].Count != 10 || d[1].Count != 19 || d[2].Count != 20 {
		t.Errorf("delta %v", d)
	}
	if got := BucketBound(d, 0.5); got != 0.005 {
		t.Errorf("delta p50 bound %v", got)
	}
	if got := BucketBound(d, 0.9); got != 0.025 {
		t.Errorf("delta p90 bound %v", got)
	}
}

func TestParseMetricsErrors(t *testing.T) {
	for _, bad := range []string{"novalue", `x{a="b"`, `x{a="b} 1`, "x{a} 1", "x abc"} {
		if _, err := ParseMetrics(bad + "\n"); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestQuantile(t *testing.T) {
	var d []time.Duration
	for i := 100; i >= 1; i-- {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for q, want := range map[float64]time.Duration{0.5: 50 * time.Millisecond, 0.99: 99 * time.Millisecond, 1: 100 * time.Millisecond, 0: time.Millisecond} {
		if got := Quantile(d, q); got != want {
			t.Errorf("q%v = %v, want %v", q, got, want)
		}
	}
	if Quantile(nil, 0.5) != 0 {
		t.Error("empty")
	}
}

func TestParseProc(t *testing.T) {
	stat := "4242 (meshcni (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 12 0 100 0 0"
	cpu, err := ParseProcStat(stat, 100)
	if err != nil || cpu != 3*time.Second {
		t.Errorf("cpu %v %v, want 3s", cpu, err)
	}
	if _, err := ParseProcStat("4242 (x) S 1", 100); err == nil {
		t.Error("short stat: no error")
	}
	status := "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t9\n"
	rss, hwm, err := ParseProcStatus(status)
	if err != nil || rss != 1<<20 || hwm != 2<<20 {
		t.Errorf("rss %d hwm %d %v", rss, hwm, err)
	}
	if _, _, err := ParseProcStatus("Name:\tx\nVmRSS:\t1 kB\n"); err == nil {
		t.Error("no VmHWM: no error")
	}
	now := time.Now()
	if got := CPUShare(ProcStat{CPU: time.Second, Taken: now}, ProcStat{CPU: 3 * time.Second, Taken: now.Add(4 * time.Second)}); got != 0.5 {
		t.Errorf("cpu share %v", got)
	}
}
