package plugin

import (
	"context"
	"errors"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"golang.org/x/sys/unix"

	"github.com/meshcni/meshcni/internal/podcache"
)

// agentAddTimeout bounds handing an ADD to the agent: its watch may wait
// podcache.DefaultWait for the pod, then it programs the netns. Past it
// the plug-in runs the ADD itself, which is idempotent should the agent
// finish it too.
const agentAddTimeout = 2 * time.Second

// Agent is the agent's side of delegate_add (podcache.Client).
type Agent interface {
	Add(ctx context.Context, req *podcache.AddRequest, netnsFD int) (*podcache.AddResult, error)
}

// delegate hands the ADD to the agent when the config says so. It returns
// the agent's result when the agent ran the ADD (and logged its
// decision), or nil when the plug-in must run it; then t.cacheMiss says
// why the agent did not.
//
// A warm agent holds the pod already decoded and its code, threads and
// netlink plumbing warm: what a fresh plug-in process would spend on the
// pod's JSON, a thread for the netns and the rules is spent there.
func (p *Plugin) delegate(ctx context.Context, t *target, args *skel.CmdArgs) *podcache.AddResult {
	if !t.conf.DelegateAdd || p.inAgent || args.Netns == "" {
		return nil
	}
	agent, ok := p.cacheFor(t.conf.PodCacheSocket).(Agent)
	if !ok {
		return nil
	}
	// The agent is sent the netns itself, not its path: it may not see
	// the runtime's mounts, and a path could name another netns by then.
	fd, err := unix.Open(args.Netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil // the plug-in's own ADD reports the netns
	}
	defer unix.Close(fd)
	ctx, cancel := context.WithTimeout(ctx, agentAddTimeout)
	defer cancel()
	res, err := agent.Add(ctx, &podcache.AddRequest{
		ContainerID: args.ContainerID, Netns: args.Netns, IfName: args.IfName,
		Args: args.Args, Path: args.Path, Config: args.StdinData,
	}, fd)
	switch {
	case errors.Is(err, podcache.ErrAddUnsupported):
		return nil // an older agent: its cache may still answer
	case err != nil:
		t.cacheMiss, t.askedAgent = err.Error(), true
		return nil
	case res.Miss != "":
		t.cacheMiss, t.askedAgent = res.Miss, true
		return nil
	}
	return res
}
