// Command bench measures a chained CNI plug-in with meshcni's config
// shape on a simulated node (test/testbed) against a real kube-apiserver
// (test/kubeharness): ADD latency of the plug-in alone and of the whole
// chain, one pod at a time and in concurrent batches, API requests, execs
// and forks per ADD, peak RSS, binary size, and where ADD time goes. It
// prints markdown. Root only; every network change happens in namespaces
// it creates and removes, never in the host's.
//
//	go run ./test/bench --plugin bin/meshcni
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	plugin     string
	pods       int
	batches    []int
	kinds      []string
	backend    string
	lookups    []string
	extraConf  map[string]any
	procADDs   int
	keepTraces string
	out        string
	timeout    time.Duration

	agent      string
	agentPods  int
	agentChurn int
	agentArgs  []string
}

func main() {
	if spec, ok := os.LookupEnv(serveEnv); ok {
		if err := servePods(spec); err != nil {
			fmt.Fprintln(os.Stderr, "bench: pod cache server:", err)
			os.Exit(1)
		}
		return
	}
	o, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		stop()
		os.Exit(1)
	}
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	o := options{}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.plugin, "plugin", "", "path of the plug-in binary to measure (its base name is the config's type)")
	fs.IntVar(&o.pods, "pods", 30, "ADDs per pod kind measured one at a time (and per step of the breakdown)")
	batches := fs.String("batches", "10,50,100", "comma-separated batch sizes ADDed concurrently (empty: none)")
	kinds := fs.String("kinds", "default,tproxy-dns-dual", "comma-separated pod kinds: "+strings.Join(kindNames(), ", "))
	lookup := fs.String("lookup", "cache,api", "comma-separated pod lookups, each measured one pod at a time: cache (the agent's socket, as the agent configures the plug-in), api (a GET; the fallback); the first is also used for batches, the whole chain, the processes and the breakdown's mesh pod")
	fs.StringVar(&o.backend, "backend", "", "iptables_backend in the plug-in config (empty: leave it out, the plug-in's default)")
	extra := fs.String("conf", "", `JSON object merged into the plug-in config, e.g. '{"log_level":"debug"}'`)
	fs.IntVar(&o.procADDs, "proc-adds", 3, "ADDs per pod kind run under strace (execs, forks) and, as many again, under a launcher (peak RSS); 0: skip")
	fs.StringVar(&o.keepTraces, "keep-traces", "", "write the strace logs into this existing directory, to see what each fork and exec was")
	fs.StringVar(&o.out, "out", "", "also write the markdown report to this file")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "give up after this long")
	fs.StringVar(&o.agent, "agent", "", "meshcni-agent binary: also measure its CPU and memory while pods churn on its node")
	fs.IntVar(&o.agentPods, "agent-pods", 1000, "pods created and deleted on the agent's node")
	fs.IntVar(&o.agentChurn, "agent-churn", 50, "pod creates (then deletes) per second during the agent run")
	agentArgs := fs.String("agent-args", "", "extra flags for the agent, space-separated")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.plugin == "" {
		return o, errors.New("--plugin is required: the path of the plug-in binary (make build puts meshcni in bin/)")
	}
	if o.pods < 1 {
		return o, fmt.Errorf("--pods %d: must be at least 1", o.pods)
	}
	for _, s := range strings.Split(*batches, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 250 {
			return o, fmt.Errorf("--batches %q: each must be 1-250 (the node subnet and the machine's patience)", s)
		}
		o.batches = append(o.batches, n)
	}
	for _, s := range strings.Split(*kinds, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if _, ok := kindByName(s); !ok {
			return o, fmt.Errorf("--kinds: unknown pod kind %q; known: %s", s, strings.Join(kindNames(), ", "))
		}
		o.kinds = append(o.kinds, s)
	}
	for _, s := range strings.Split(*lookup, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !slices.Contains(lookups, s) || slices.Contains(o.lookups, s) {
			return o, fmt.Errorf("--lookup: %q is not one of %s, or named twice", s, strings.Join(lookups, ", "))
		}
		o.lookups = append(o.lookups, s)
	}
	if len(o.lookups) == 0 {
		return o, errors.New("--lookup: name at least one pod lookup")
	}
	if len(o.kinds) == 0 {
		return o, errors.New("--kinds: name at least one pod kind")
	}
	if *extra != "" {
		if err := json.Unmarshal([]byte(*extra), &o.extraConf); err != nil {
			return o, fmt.Errorf("--conf: not a JSON object: %w", err)
		}
	}
	if o.agentPods < 1 || o.agentChurn < 1 {
		return o, errors.New("--agent-pods and --agent-churn must be at least 1")
	}
	o.agentArgs = strings.Fields(*agentArgs)
	if o.agent != "" {
		a, err := filepath.Abs(o.agent)
		if err != nil {
			return o, err
		}
		o.agent = a
	}
	abs, err := filepath.Abs(o.plugin)
	if err != nil {
		return o, err
	}
	o.plugin = abs
	if st, err := os.Stat(o.plugin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return o, fmt.Errorf("--plugin %s: not an executable file", o.plugin)
	}
	return o, nil
}
