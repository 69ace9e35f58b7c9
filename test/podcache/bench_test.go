//go:build integration

package podcache

import (
	"context"
	"encoding/json"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/meshcni/meshcni/test/testbed"
)

// BenchmarkAdd times one exec of the plug-in's ADD (fork to reaped), from
// the node netns, with the chain's prevResult, for a pod whose sandbox
// the chain has already set up:
//
//   - api: the agent's entry without pod_cache_socket, which is the
//     lookup as it was before the cache (kubeconfig, client, TLS, GET);
//   - cache: the entry as the agent writes it, the cache warm.
//
// "mesh" re-applies the rules of an already captured pod on every ADD;
// "plain" is a pod without a sidecar: lookup only. Besides ns/op it
// reports the median (p50-ms), the median of the plug-in's own duration
// field (inproc-p50-ms) and pod GETs per ADD from the API server.
//
//	go test -tags integration ./test/podcache -run '^$' -bench Add -benchtime 100x -count 3
func BenchmarkAdd(b *testing.B) {
	e := start(b, false)
	ctx := context.Background()
	l, err := e.node.Conflist()
	if err != nil {
		b.Fatal(err)
	}
	var entry map[string]any
	if err := json.Unmarshal(l.Plugins[len(l.Plugins)-1].Bytes, &entry); err != nil {
		b.Fatal(err)
	}
	mesh := createPods(b, "pc-bench", 1)[0]
	plain := testbed.MeshPod("pc-bench", "plain", 9080)
	plain.Spec.Containers = plain.Spec.Containers[:1]
	if plain, err = cluster.CreatePod(ctx, plain); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { deletePod(plain) })

	for i, kind := range []string{"mesh", "plain"} {
		p := mesh
		if i == 1 {
			p = plain
		}
		e.warm(b, p.Namespace, p.Name, p.UID)
		sb, err := e.node.AddPod(ctx, p.Namespace, p.Name, string(p.UID))
		if err != nil {
			b.Fatal(err)
		}
		for _, variant := range []string{"api", "cache"} {
			conf := map[string]any{}
			for k, v := range entry {
				conf[k] = v
			}
			if variant == "api" {
				delete(conf, "pod_cache_socket")
			}
			conf["name"], conf["cniVersion"], conf["prevResult"] = l.Name, l.CNIVersion, sb.Result
			stdin, err := json.Marshal(conf)
			if err != nil {
				b.Fatal(err)
			}
			b.Run(kind+"/"+variant, func(b *testing.B) {
				logStart := len(e.logs.String())
				before := podGETs(b)
				took := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for range b.N {
					t0 := time.Now()
					if err := execAdd(ctx, e.node, sb, stdin); err != nil {
						b.Fatal(err)
					}
					took = append(took, time.Since(t0))
				}
				b.StopTimer()
				time.Sleep(100 * time.Millisecond) // the last log lines and GETs
				b.ReportMetric((podGETs(b)-before)/float64(b.N), "GETs/op")
				b.ReportMetric(ms(median(took)), "p50-ms")
				b.ReportMetric(ms(median(inProcess(b, e.logs.String()[logStart:], sb, variant))), "inproc-p50-ms")
			})
		}
	}
}

// execAdd runs the node's meshcni binary once, as libcni would.
func execAdd(ctx context.Context, n *testbed.Node, p *testbed.Pod, stdin []byte) error {
	return n.NS.Do(func(ns.NetNS) error {
		args := &invoke.Args{Command: "ADD", ContainerID: p.ContainerID, NetNS: p.NS.Path(), IfName: "eth0", Path: n.BinDir,
			PluginArgs: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", p.Namespace}, {"K8S_POD_NAME", p.Name},
				{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID}, {"K8S_POD_UID", p.UID}}}
		_, err := (&invoke.RawExec{Stderr: io.Discard}).ExecPlugin(ctx, filepath.Join(n.BinDir, "meshcni"), stdin, args.AsEnv())
		return err
	})
}

// inProcess returns the duration fields of the pod's ADD lines in logs
// and checks that each came from the variant's source.
func inProcess(b *testing.B, logs string, p *testbed.Pod, variant string) []time.Duration {
	b.Helper()
	var ds []time.Duration
	for _, l := range strings.Split(logs, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(l), &rec) != nil || rec["msg"] != "ADD" || rec["pod"] != p.Namespace+"/"+p.Name {
			continue
		}
		if rec["pod_source"] != variant {
			b.Fatalf("the %s variant's ADD came from %v: %v", variant, rec["pod_source"], rec)
		}
		s, _ := rec["duration"].(string)
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("duration %q: %v", s, err)
		}
		ds = append(ds, d)
	}
	return ds
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
