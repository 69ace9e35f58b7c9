package testbed

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// Pod is a pod sandbox: its own netns, attached through the chain.
type Pod struct {
	Namespace, Name, UID string
	ContainerID          string
	NS                   ns.NetNS
	Result               *current.Result
	list                 *libcni.NetworkConfigList
}

// IP returns the pod's address of the given family, if any.
func (p *Pod) IP(v6 bool) netip.Addr {
	if p.Result == nil {
		return netip.Addr{}
	}
	for _, ip := range p.Result.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		a = a.Unmap()
		if a.Is6() == v6 {
			return a
		}
	}
	return netip.Addr{}
}

func (p *Pod) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.NS.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", p.ContainerID},
			{"K8S_POD_UID", p.UID},
		},
	}
}

var loConf = []byte(`{"cniVersion":"1.0.0","name":"cni-loopback","type":"loopback"}`)

// AddPod creates a sandbox netns and runs the node's chain for it, from
// inside the node netns, as containerd would. On error the pod's netns is
// removed and the error is the chain's.
func (n *Node) AddPod(ctx context.Context, namespace, name, uid string) (*Pod, error) {
	list, err := n.Conflist()
	if err != nil {
		return nil, err
	}
	podNS, err := testutils.NewNS()
	if err != nil {
		return nil, err
	}
	p := &Pod{Namespace: namespace, Name: name, UID: uid, ContainerID: "sandbox-" + namespace + "-" + name, NS: podNS, list: list}
	err = n.NS.Do(func(ns.NetNS) error {
		lo, err := libcni.NetworkPluginConfFromBytes(loConf)
		if err != nil {
			return err
		}
		if _, err := n.cni.AddNetwork(ctx, lo, p.rt()); err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		res, err := n.cni.AddNetworkList(ctx, list, p.rt())
		if err != nil {
			// A runtime cleans up a failed ADD with DEL.
			_ = n.cni.DelNetworkList(ctx, list, p.rt())
			return err
		}
		p.Result, err = current.NewResultFromResult(res)
		return err
	})
	if err != nil {
		CloseNS(podNS)
		return nil, err
	}
	n.mu.Lock()
	n.pods = append(n.pods, p)
	n.mu.Unlock()
	return p, nil
}

// CheckPod runs CHECK over the chain for p.
func (n *Node) CheckPod(ctx context.Context, p *Pod) error {
	return n.NS.Do(func(ns.NetNS) error { return n.cni.CheckNetworkList(ctx, p.list, p.rt()) })
}

// Status runs STATUS over the node's chain.
func (n *Node) Status(ctx context.Context) error {
	list, err := n.Conflist()
	if err != nil {
		return err
	}
	return n.NS.Do(func(ns.NetNS) error { return n.cni.GetStatusNetworkList(ctx, list) })
}

// DelPod runs DEL for p and removes its netns.
func (n *Node) DelPod(ctx context.Context, p *Pod) error {
	n.mu.Lock()
	idx := -1
	for i, q := range n.pods {
		if q == p {
			idx = i
		}
	}
	if idx < 0 {
		n.mu.Unlock()
		return errNoPod
	}
	n.pods = append(n.pods[:idx], n.pods[idx+1:]...)
	n.mu.Unlock()
	err := n.NS.Do(func(ns.NetNS) error { return n.cni.DelNetworkList(ctx, p.list, p.rt()) })
	CloseNS(p.NS)
	return err
}

// ErrorCode extracts a CNI error code, or 0.
func ErrorCode(err error) uint {
	if te, ok := err.(*types.Error); ok {
		return te.Code
	}
	return 0
}

// AddChainedAgain runs only the last (chained) plug-in's ADD once more for
// p, with the chain's result as prevResult, as a runtime retrying an ADD
// that the chained plug-in already handled would. Returns its result.
func (n *Node) AddChainedAgain(ctx context.Context, p *Pod) ([]byte, error) {
	last := p.list.Plugins[len(p.list.Plugins)-1]
	var conf map[string]any
	if err := json.Unmarshal(last.Bytes, &conf); err != nil {
		return nil, err
	}
	conf["name"], conf["cniVersion"] = p.list.Name, p.list.CNIVersion
	// The prevResult speaks the list's version, as a runtime's would.
	prev, err := p.Result.GetAsVersion(p.list.CNIVersion)
	if err != nil {
		return nil, err
	}
	conf["prevResult"] = prev
	stdin, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = n.NS.Do(func(ns.NetNS) error {
		rt := p.rt()
		args := &invoke.Args{Command: "ADD", ContainerID: rt.ContainerID, NetNS: rt.NetNS, IfName: rt.IfName, PluginArgs: rt.Args, Path: n.BinDir}
		path, err := invoke.FindInPath(last.Network.Type, []string{n.BinDir})
		if err != nil {
			return err
		}
		out, err = (&invoke.RawExec{Stderr: os.Stderr}).ExecPlugin(ctx, path, stdin, args.AsEnv())
		return err
	})
	return out, err
}
