package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/internal/podspec"
)

// InAgent runs, in the agent, the ADDs that plug-ins hand over
// (delegate_add): the plug-in's own decision and rules, with the pod from
// the agent's watch and the netns the plug-in sent. A pod the watch
// cannot answer for is a miss: the plug-in then runs the ADD itself and
// asks the API, so handing over never changes a decision.
type InAgent struct {
	// Pods is the agent's watch of its node's pods.
	Pods podcache.Store
	// Wait is podcache.Await's wait for a pod the watch does not show yet.
	Wait time.Duration
	// HostRoot is the node's root when the agent has no iptables of its
	// own (see netfilter.Options).
	HostRoot string
	// Log receives the decision lines, as the plug-in writes them.
	Log *slog.Logger
	// Observe, if set, is called with each lookup's podcache result.
	Observe func(result string)
	// Rules programs the netns; nil builds a netfilter.Applier per
	// config, as the plug-in does.
	Rules netfilter.Interface
	// Limit bounds the ADDs run at once, each on a thread in a pod's
	// netns; zero means DefaultAgentAdds.
	Limit int

	sem chan struct{}
}

// DefaultAgentAdds is InAgent's default Limit.
const DefaultAgentAdds = 8

// NewInAgent returns a with its limit set up; use it as a podcache.AddFunc.
func NewInAgent(a InAgent) *InAgent {
	if a.Limit <= 0 {
		a.Limit = DefaultAgentAdds
	}
	a.sem = make(chan struct{}, a.Limit)
	return &a
}

// Add runs one handed-over ADD in the netns open at netnsFD, which it
// closes.
func (a *InAgent) Add(ctx context.Context, req *podcache.AddRequest, netnsFD int) *podcache.AddResult {
	defer unix.Close(netnsFD)
	select {
	case a.sem <- struct{}{}:
		defer func() { <-a.sem }()
	case <-ctx.Done():
		return &podcache.AddResult{Miss: "the agent was busy with other ADDs"}
	}
	start := time.Now()
	args := &skel.CmdArgs{ContainerID: req.ContainerID, Netns: req.Netns, IfName: req.IfName,
		Args: req.Args, Path: req.Path, StdinData: req.Config}
	p := &Plugin{LogTo: a.Log, HostRoot: a.HostRoot, Rules: a.Rules, inAgent: true,
		Cache: func(string) PodCache { return watchCache{a} }}
	t, err := p.prepare(args, true)
	if err == nil && t.needsPod() {
		// The netns as the agent holds it; messages keep the runtime's path.
		held := fmt.Sprintf("/proc/self/fd/%d", netnsFD)
		err = p.addHere(ctx, t, held)
		var miss errMiss
		if errors.As(err, &miss) {
			return &podcache.AddResult{Miss: miss.reason}
		}
		err = renamed(err, held, req.Netns)
	}
	p.report("ADD", args, t, err, start)
	res := &podcache.AddResult{Done: true}
	if err != nil {
		var te *types.Error
		if !errors.As(err, &te) {
			te = types.NewError(types.ErrInternal, err.Error(), "")
		}
		res.Error = te
	}
	return res
}

// renamed replaces the agent's path of the netns in err's text.
func renamed(err error, held, path string) error {
	var te *types.Error
	if !errors.As(err, &te) {
		return err
	}
	return types.NewError(te.Code, strings.ReplaceAll(te.Msg, held, path), strings.ReplaceAll(te.Details, held, path))
}

// watchCache is the agent's watch as the plug-in's PodCache.
type watchCache struct{ a *InAgent }

func (c watchCache) Pod(ctx context.Context, namespace, name, uid string) (*podspec.Pod, error) {
	pod, err := podcache.Await(ctx, c.a.Pods, namespace, name, uid, c.a.Wait)
	if c.a.Observe != nil {
		c.a.Observe(podcache.Result(err))
	}
	return pod, err
}
