// Package plugin implements the meshcni CNI commands. It finds the pod in
// the Kubernetes API, decides whether it is captured, and programs its
// netns through netfilter.Interface, passing prevResult through.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/meshcni/meshcni/internal/apilookup"
	"github.com/meshcni/meshcni/internal/netconf"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/netns"
	"github.com/meshcni/meshcni/internal/podspec"
)

// Plugin holds the seams to the outside; zero values mean the real ones.
type Plugin struct {
	// Rules programs the netns; nil builds a netfilter.Applier from config.
	Rules netfilter.Interface
	// API answers the lookups the agent's cache cannot; nil runs the
	// meshcni-lookup helper installed next to the plug-in.
	API apilookup.Source
	// Cache returns the client of the agent's pod cache at a socket; nil
	// means podcache.NewClient.
	Cache func(socket string) PodCache
	// LogTo overrides where log lines go (tests); nil means per config.
	LogTo *slog.Logger
	// ReportTo receives the ADD records (addstat) when LogTo is set.
	ReportTo io.Writer
}

// Funcs wires the plug-in into skel.
func (p *Plugin) Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: p.CmdAdd, Del: p.CmdDel, Check: p.CmdCheck, Status: p.CmdStatus, GC: p.CmdGC}
}

func (p *Plugin) rulesFor(conf *netconf.Entry) (netfilter.Interface, error) {
	if p.Rules != nil {
		return p.Rules, nil
	}
	if err := checkLockDir(conf.Locks); err != nil {
		return nil, err
	}
	return netfilter.New(netfilter.Options{Backend: conf.Backend, LockDir: conf.Locks}), nil
}

func (p *Plugin) api() (apilookup.Source, error) {
	if p.API != nil {
		return p.API, nil
	}
	h, err := apilookup.NextToExecutable()
	if err != nil {
		return nil, types.NewError(types.ErrInternal, "meshcni: cannot find the API lookup helper", err.Error())
	}
	return h, nil
}

// apiRequest is the lookup of t's pod (or, without t, of nothing: STATUS)
// as the config bounds it.
func apiRequest(conf *netconf.Entry, args *k8sArgs) apilookup.Request {
	r := apilookup.Request{Kubeconfig: conf.Kubeconfig, Timeout: conf.Timeout, Attempts: conf.Attempts, Interval: conf.Interval}
	if args != nil {
		r.Namespace, r.Name, r.UID = string(args.K8S_POD_NAMESPACE), string(args.K8S_POD_NAME), string(args.K8S_POD_UID)
	}
	return r
}

// target is the pod an invocation is about, once looked up.
type target struct {
	conf    *netconf.Entry
	args    *k8sArgs
	pod     *podspec.Pod
	addrs   []netip.Addr
	verdict podspec.Verdict
	// source says who answered the lookup: "cache" or "api"; cacheMiss
	// why the cache did not, when it was asked.
	source    string
	cacheMiss string
	// failed is the code (podspec.Codes) of a failure before the verdict.
	failed string
}

func (t *target) name() string {
	return string(t.args.K8S_POD_NAMESPACE) + "/" + string(t.args.K8S_POD_NAME)
}

// resolve does everything but the kernel work: parse, look up, decide,
// derive the spec. A nil pod with capture=false means "not ours". Once the
// config and args parse, the target comes back with errors too, so that
// the failure is reported where the config says (the agent's socket).
func (p *Plugin) resolve(ctx context.Context, args *skel.CmdArgs, needResult bool) (*target, error) {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return nil, err
	}
	if needResult && conf.NetConf.PrevResult == nil {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			"meshcni: must be called as chained plugin: no prevResult (add meshcni after the primary CNI in the conflist)", "")
	}
	kargs, err := parseArgs(args.Args)
	if err != nil {
		return nil, err
	}
	t := &target{conf: conf, args: kargs}
	if conf.NetConf.PrevResult != nil {
		res, err := current.NewResultFromResult(conf.NetConf.PrevResult)
		if err != nil {
			t.failed = podspec.CodeInvalidInput
			return t, types.NewError(types.ErrDecodingFailure, "meshcni: cannot read prevResult", err.Error())
		}
		for _, ip := range res.IPs {
			if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
				t.addrs = append(t.addrs, a.Unmap())
			}
		}
	}
	if kargs.K8S_POD_NAME == "" || kargs.K8S_POD_NAMESPACE == "" {
		t.verdict.Reason = "not a Kubernetes pod (no K8S_POD_NAME/K8S_POD_NAMESPACE in CNI_ARGS)"
		t.verdict.Code = podspec.CodeNotKubernetes
		return t, nil
	}
	// The verdict's namespace part, before any API call.
	if v, done := conf.Judge.Namespace(string(kargs.K8S_POD_NAMESPACE)); done {
		t.verdict = v
		return t, nil
	}

	pod, err := p.lookup(ctx, t)
	if err != nil {
		t.failed = podspec.CodeLookupFailed
		return t, err
	}
	t.pod = pod
	t.verdict, err = conf.Judge.Pod(pod, t.addrs)
	if err != nil {
		return t, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("meshcni: pod %s: %v; correct it in the pod's spec and recreate the pod", t.name(), err), "")
	}
	return t, nil
}

func (p *Plugin) logger(conf *netconf.Entry) (*slog.Logger, io.Writer, func()) {
	if p.LogTo != nil {
		return p.LogTo, p.ReportTo, func() {}
	}
	if conf == nil {
		return slog.New(slog.NewJSONHandler(os.Stderr, nil)), nil, func() {}
	}
	return openLog(conf)
}

// CmdAdd captures the pod if it qualifies and passes prevResult through.
func (p *Plugin) CmdAdd(args *skel.CmdArgs) error {
	start := time.Now()
	ctx, backend := netfilter.RecordBackend(context.Background())
	t, err := p.resolve(ctx, args, true)
	var rules netfilter.Interface
	if err == nil && t.verdict.Capture {
		rules, err = p.rulesFor(t.conf)
	}
	if err == nil && t.verdict.Capture {
		if err = rules.Apply(ctx, args.Netns, t.verdict.Spec); err != nil {
			err = applyError(t.name(), args.Netns, err)
		}
	}
	p.report("ADD", args, t, err, start, backend())
	if err != nil {
		return err
	}
	return types.PrintResult(t.conf.NetConf.PrevResult, t.conf.CNIVersion)
}

func applyError(pod, path string, err error) *types.Error {
	code := types.ErrInternal
	switch {
	case netns.IsInvalid(err):
		code = types.ErrInvalidNetNS
	case errors.Is(err, netfilter.ErrConflict):
		code = types.ErrInvalidNetworkConfig
	}
	return types.NewError(code, fmt.Sprintf("meshcni: pod %s: cannot program redirection in %s", pod, path), err.Error())
}

// CmdCheck verifies that a captured pod's netns holds exactly its rules.
func (p *Plugin) CmdCheck(args *skel.CmdArgs) error {
	start := time.Now()
	ctx := context.Background()
	t, err := p.resolve(ctx, args, true)
	var rules netfilter.Interface
	if err == nil && t.verdict.Capture {
		rules, err = p.rulesFor(t.conf)
	}
	if err == nil && t.verdict.Capture {
		if err = rules.Check(ctx, args.Netns, t.verdict.Spec); netns.IsInvalid(err) {
			err = types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("meshcni: pod %s: cannot check %s", t.name(), args.Netns), err.Error())
		} else if err != nil {
			err = types.NewError(types.ErrInternal, fmt.Sprintf("meshcni: pod %s: redirection is not as its spec demands", t.name()), err.Error())
		}
	}
	p.report("CHECK", args, t, err, start, netfilter.Auto)
	return err
}

// CmdDel changes nothing: the rules live in the pod's netns and die with
// it. DEL removing "whatever rules the netns holds" would, given another
// pod's netns by a confused runtime, uncapture that pod; and a repeated
// ADD in the same netns is idempotent anyway.
func (p *Plugin) CmdDel(args *skel.CmdArgs) error {
	_, err := netconf.Parse(args.StdinData)
	return err
}

// CmdStatus reports whether meshcni can capture pods now: a usable
// kubeconfig and an API that answers.
func (p *Plugin) CmdStatus(args *skel.CmdArgs) error {
	conf, err := netconf.Parse(args.StdinData)
	if err != nil {
		return err
	}
	api, err := p.api()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), conf.Timeout+time.Second)
	defer cancel()
	if err := api.Ready(ctx, apiRequest(conf, nil)); err != nil {
		var te *types.Error
		if errors.As(err, &te) && te.Code == types.ErrTryAgainLater {
			return types.NewError(50, te.Msg, te.Details) // 50: plugin not available
		}
		return err
	}
	return nil
}

// CmdGC has nothing to collect: all state lives in pod netns, which the
// runtime deletes; lock files are removed after each use.
func (p *Plugin) CmdGC(args *skel.CmdArgs) error {
	_, err := netconf.Parse(args.StdinData)
	return err
}

// report writes the one line per ADD/CHECK that says what happened.
// An ADD also sends its record (addstat) to the agent, taking as long as
// the line says; backend is the one that programmed the pod, if any.
func (p *Plugin) report(cmd string, args *skel.CmdArgs, t *target, err error, start time.Time, backend netfilter.Backend) {
	took := time.Since(start)
	var conf *netconf.Entry
	if t != nil {
		conf = t.conf
	}
	log, sock, done := p.logger(conf)
	defer done()
	if cmd == "ADD" {
		defer sendRecord(sock, addRecord(t, err, backend, took))
	}
	attrs := []any{"container", shortID(args.ContainerID), "netns", args.Netns, "duration", took.Round(time.Microsecond).String()}
	if t != nil {
		attrs = append(attrs, "pod", t.name())
		if t.source != "" {
			attrs = append(attrs, "pod_source", t.source)
		}
		if t.cacheMiss != "" {
			attrs = append(attrs, "cache_miss", t.cacheMiss)
		}
	}
	if t != nil {
		for _, w := range t.verdict.Warnings {
			log.Warn(cmd, append(attrs, "warning", w)...)
		}
	}
	switch {
	case err != nil:
		log.Error(cmd+" failed", append(attrs, "decision", "error", "error", err.Error())...)
	case t.verdict.Capture:
		log.Info(cmd, append(attrs, "decision", "captured", "reason", t.verdict.Reason, "mode", string(t.verdict.Spec.Mode), "ipv6", t.verdict.Spec.IPv6)...)
	default:
		log.Info(cmd, append(attrs, "decision", "skipped", "reason", t.verdict.Reason)...)
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
