package main

import (
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {0, time.Millisecond}} {
		if got := percentile(ds, tc.p); got != tc.want {
			t.Errorf("p%v = %v, want %v", tc.p, got, tc.want)
		}
	}
	if ds[0] != 100*time.Millisecond {
		t.Error("percentile sorted its input in place")
	}
	if got := percentile(ds[:5], 99); got != 100*time.Millisecond {
		t.Errorf("p99 of 5 = %v, want the slowest", got)
	}
	if percentile(nil, 50) != 0 || mean(nil) != 0 {
		t.Error("empty input must give 0")
	}
}

func TestPodGETs(t *testing.T) {
	const metrics = `# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 41
apiserver_request_total{code="404",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="log",verb="GET",version="v1"} 7
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="",verb="POST",version="v1"} 9
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="namespaces",scope="resource",subresource="",verb="GET",version="v1"} 5
apiserver_request_total_other{resource="pods",verb="GET",subresource=""} 100
`
	got, err := podRequests(strings.NewReader(metrics), "GET")
	if err != nil || got != 43 {
		t.Fatalf("pod GETs = %v, %v; want 43", got, err)
	}
	got, err = podRequests(strings.NewReader(metrics), "GET", "POST")
	if err != nil || got != 52 {
		t.Fatalf("pod GETs and POSTs = %v, %v; want 52", got, err)
	}
}

func TestReadAddLog(t *testing.T) {
	const log = `{"time":"2026-12-02T01:13:39.391100211Z","level":"INFO","msg":"ADD","plugin":"meshcni","duration":"21.26ms","pod":"bench/a","decision":"captured"}
not json
{"time":"2026-12-02T01:13:39.5Z","level":"INFO","msg":"CHECK","duration":"1ms","pod":"bench/a","decision":"captured"}
{"time":"2026-12-02T01:13:39.6Z","level":"INFO","msg":"ADD","duration":"300µs","pod":"kube-system/b","decision":"skipped"}
`
	got := readAddLog(strings.NewReader(log))
	if len(got) != 2 {
		t.Fatalf("got %d lines, want 2: %v", len(got), got)
	}
	a := got["bench/a"]
	if a.Duration != 21260*time.Microsecond || a.Decision != "captured" || a.At.Nanosecond() != 391100211 {
		t.Errorf("bench/a = %+v", a)
	}
	if b := got["kube-system/b"]; b.Duration != 300*time.Microsecond || b.Decision != "skipped" {
		t.Errorf("kube-system/b = %+v", b)
	}
}

func TestParseStrace(t *testing.T) {
	// strace -f -qq -e trace=execve,clone,clone3,fork,vfork, abridged.
	const out = `100 execve("/opt/cni/bin/meshcni", ["/opt/cni/bin/meshcni"], 0x7ffd /* 45 vars */) = 0
100 clone(child_stack=0xc000, flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_SYSVSEM|CLONE_THREAD|CLONE_SETTLS, tls=0xc0) = 101
100 clone(child_stack=NULL, flags=CLONE_VM|CLONE_PIDFD|CLONE_VFORK, parent_tid=[19]) = 104
100 clone3({flags=CLONE_VM|CLONE_VFORK|CLONE_CLEAR_SIGHAND, exit_signal=SIGCHLD, stack=0x7f, stack_size=0x9000}, 88 <unfinished ...>
102 execve("/usr/sbin/iptables-nft-restore", ["iptables-nft-restore", "--noflush"], 0xc0 /* 46 vars */ <unfinished ...>
100 <... clone3 resumed>) = 102
102 <... execve resumed>)             = 0
100 clone3({flags=CLONE_VM|CLONE_VFORK|CLONE_CLEAR_SIGHAND, exit_signal=SIGCHLD, stack=0x7f, stack_size=0x9000}, 88) = 103
103 execve("/sbin/ip6tables-nft-restore", ["ip6tables-nft-restore"], 0xc0 /* 46 vars */) = -1 ENOENT (No such file or directory)
103 execve("/usr/sbin/ip6tables-nft-restore", ["ip6tables-nft-restore"], 0xc0 /* 46 vars */) = 0
`
	got, err := parseStrace(strings.NewReader(out))
	if err != nil {
		t.Fatal(err)
	}
	if got.Execs != 3 || got.Forks != 3 || got.ForksNoExec != 1 {
		t.Errorf("execs %d forks %d (%d without exec), want 3, 3 (1)", got.Execs, got.Forks, got.ForksNoExec)
	}
	want := "/opt/cni/bin/meshcni /usr/sbin/iptables-nft-restore /usr/sbin/ip6tables-nft-restore"
	if s := strings.Join(got.Programs, " "); s != want {
		t.Errorf("programs %q, want %q", s, want)
	}
}

func TestInitTrace(t *testing.T) {
	const trace = `init internal/bytealg @0.005 ms, 0.002 ms clock, 0 bytes, 0 allocs
init k8s.io/client-go/kubernetes/scheme @5.1 ms, 2.5 ms clock, 1048576 bytes, 9000 allocs
{"cniVersion":"1.0.0"}
`
	clock, heap, err := initTrace(strings.NewReader(trace))
	if err != nil {
		t.Fatal(err)
	}
	if clock["k8s.io/client-go/kubernetes/scheme"] != 2500*time.Microsecond || heap["k8s.io/client-go/kubernetes/scheme"] != 1<<20 || len(clock) != 2 {
		t.Errorf("clock %v heap %v", clock, heap)
	}
}

func TestProcParsers(t *testing.T) {
	// comm with spaces and parentheses, then state and fields 4-17.
	stat := "4242 (meshcni (agent)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 50 3 2 20 0 8 0 100 0 0"
	cpu, err := parseStatCPU(stat)
	if err != nil || cpu != 2050*time.Millisecond {
		t.Errorf("parseStatCPU = %v, %v; want 2.05s (205 ticks)", cpu, err)
	}
	rss, err := parseVmRSS("Name:\tmeshcni\nVmHWM:\t  50000 kB\nVmRSS:\t   41234 kB\n")
	if err != nil || rss != 41234 {
		t.Errorf("parseVmRSS = %v, %v", rss, err)
	}
}

func TestParseFlags(t *testing.T) {
	var sink strings.Builder
	if _, err := parseFlags(nil, &sink); err == nil || !strings.Contains(err.Error(), "--plugin is required") {
		t.Errorf("no --plugin: %v", err)
	}
	if _, err := parseFlags([]string{"--plugin", "/bin/true", "--batches", "10,x"}, &sink); err == nil {
		t.Error("bad --batches accepted")
	}
	if _, err := parseFlags([]string{"--plugin", "/bin/true", "--kinds", "nope"}, &sink); err == nil {
		t.Error("unknown kind accepted")
	}
	o, err := parseFlags([]string{"--plugin", "/bin/true", "--batches", "", "--conf", `{"log_level":"debug"}`}, &sink)
	if err != nil || len(o.batches) != 0 || o.extraConf["log_level"] != "debug" || len(o.kinds) != 2 {
		t.Errorf("parseFlags = %+v, %v", o, err)
	}
}
