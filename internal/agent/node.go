package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshcni/meshcni/internal/netconf"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/repair"
)

// StartupTaint keeps mesh pods off a node until meshcni can capture them.
// Nodes register with it (kubelet --register-with-taints, or the node
// pool's taints); the agent removes it once installed and ready, and
// never adds it: an agent that stops keeps the plug-in installed, and one
// that uninstalls for good leaves no taint. The agent's own DaemonSet
// tolerates every taint.
var StartupTaint = corev1.Taint{Key: "meshcni.io/agent-not-ready", Effect: corev1.TaintEffectNoSchedule}

// RepairOff disables the repair controller.
const RepairOff = "off"

// BackendLabel on the agent's Node overrides --iptables-backend for the
// pods of that node (legacy, nft, nftables or auto), so that one install
// can run, say, native nftables on some nodes only. The agent reads it
// when it starts; restart the node's agent pod after changing it.
const BackendLabel = "meshcni.io/iptables-backend"

// kubeClient is the agent's own API client: the plug-in's server and CA,
// and the agent's own (re-read) token, never the plug-in's: that one may
// only get pods.
func (a *Agent) kubeClient() (kubernetes.Interface, error) {
	ca, err := a.api.caData()
	if err != nil {
		return nil, err
	}
	cfg := &rest.Config{
		Host:            a.api.server,
		BearerTokenFile: a.opts.agentTokenPath(),
		TLSClientConfig: rest.TLSClientConfig{CAData: ca},
		UserAgent:       "meshcni-agent",
		Timeout:         30 * time.Second,
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("API client for %s: %w", a.api.server, err)
	}
	return cs, nil
}

// nodeClient returns the agent's API client, nil until runNode built it.
func (a *Agent) nodeClient() kubernetes.Interface {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.client
}

// runNode runs what needs the node's identity: the repair controller and
// the startup taint. The client waits for the token like the plug-in's
// kubeconfig does. Run puts the taint back before it uninstalls.
func (a *Agent) runNode(ctx context.Context) {
	o := &a.opts
	var cs kubernetes.Interface
	for {
		var err error
		if cs, err = a.kubeClient(); err == nil {
			break
		}
		a.log.Debug("agent API client not ready yet", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
	a.mu.Lock()
	a.client = cs
	a.mu.Unlock()
	if o.PluginServiceAccount != "" {
		tokensDone := make(chan struct{})
		go func() { defer close(tokensDone); a.runPluginTokens(ctx, cs) }()
		defer func() { <-tokensDone }()
	}
	if !a.readNodeSettings(ctx, cs) {
		return
	}
	pods, watchDone := WatchNodePods(ctx, cs, o.NodeName)
	defer func() { <-watchDone }()
	cacheDone := a.startPodCache(ctx, pods)
	defer func() { <-cacheDone }() // Run waits until the socket is gone
	if o.RepairMode != RepairOff {
		go a.runRepair(ctx, cs, pods)
	}
	if !o.StartupTaint {
		return
	}
	// Wait for the first moment the install is ready, then lift the
	// taint, retrying until it is gone or the agent stops.
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for !a.installReady() {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
	if err := a.retryTaint(ctx, cs); err != nil {
		return // only when ctx ended; each failure is logged
	}
	a.setTaintPending("")
	a.log.Info("removed the startup taint: mesh pods may be scheduled here", "node", o.NodeName, "taint", StartupTaint.Key)
}

// retryTaint removes the startup taint from the node, retrying with
// backoff until it is confirmed gone or ctx ends. Each failure is logged,
// counted (meshcni_agent_taint_errors_total) and shown by /readyz.
func (a *Agent) retryTaint(ctx context.Context, cs kubernetes.Interface) error {
	backoff := 200 * time.Millisecond
	for {
		err := removeTaint(ctx, cs, a.opts.NodeName)
		if err == nil {
			return nil
		}
		a.metrics.taintErrors.Inc()
		a.setTaintPending("cannot remove the startup taint: " + err.Error())
		a.log.Warn("could not remove the startup taint; retrying", "node", a.opts.NodeName, "taint", StartupTaint.Key,
			"retry_in", backoff.String(), "error", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 10*time.Second)
	}
}

// readNodeSettings reads the node's BackendLabel into the entry, retrying
// while the API does not answer; false if ctx ended first. A node that is
// not there, an identity that may not read it, or a label that names no
// backend leave the flags' setting, with the reason logged.
func (a *Agent) readNodeSettings(ctx context.Context, cs kubernetes.Interface) bool {
	for {
		entry, err := a.nodeEntry(ctx, cs)
		if err == nil {
			a.settle(entry)
			return true
		}
		a.log.Warn("cannot read this node's settings yet; retrying", "node", a.opts.NodeName, "error", err)
		select {
		case <-ctx.Done():
			return false
		case <-time.After(2 * time.Second):
		}
	}
}

// nodeEntry is the entry with the node's settings, nil for the flags'
// one; an error only when the API should be asked again.
func (a *Agent) nodeEntry(ctx context.Context, cs kubernetes.Interface) (json.RawMessage, error) {
	o := a.opts
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := cs.CoreV1().Nodes().Get(gctx, o.NodeName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		a.log.Warn("no Node of this name; the flags' backend stands", "node", o.NodeName, "backend", o.IptablesBackend)
		return nil, nil
	case apierrors.IsForbidden(err):
		a.log.Warn("may not read this node (grant get on nodes); the flags' backend stands", "node", o.NodeName, "error", err)
		return nil, nil
	case err != nil:
		return nil, err
	}
	backend := n.Labels[BackendLabel]
	if backend == "" || backend == o.IptablesBackend {
		return nil, nil
	}
	if _, err := netfilter.ParseBackend(backend); err != nil {
		a.log.Error("ignoring the node's backend label; the flags' backend stands", "node", o.NodeName,
			"label", BackendLabel+"="+backend, "backend", o.IptablesBackend, "error", err)
		return nil, nil
	}
	o.IptablesBackend = backend
	entry, err := o.Entry()
	if err != nil {
		return nil, err
	}
	a.log.Info("this node's backend comes from its label", "node", o.NodeName, "label", BackendLabel, "backend", backend)
	return entry, nil
}

func (a *Agent) runRepair(ctx context.Context, cs kubernetes.Interface, pods *NodePods) {
	o := &a.opts
	raw, _ := a.currentEntry()
	entry, err := netconf.Parse(raw)
	if err != nil {
		a.log.Error("repair controller not started: the entry does not parse", "error", err)
		return
	}
	mode, _ := repair.ParseMode(o.RepairMode) // validated in Options.Validate
	// The agent's image carries no iptables: use the node's, through the
	// host's root as seen from the host PID namespace.
	hostRoot := ""
	if !netfilter.HasLocalIPTables() {
		hostRoot = filepath.Join(o.ProcDir, "1", "root")
	}
	c, err := repair.New(repair.Options{
		Client: cs, NodeName: o.NodeName, Mode: mode, Pods: pods.Informer,
		Finder:     repair.ProcFinder{Proc: o.ProcDir},
		Rules:      netfilter.New(netfilter.Options{Backend: entry.Backend, LockDir: o.LockDir(), HostRoot: hostRoot}),
		Judge:      entry.Judge,
		Registerer: a.metrics.reg,
		Log:        a.log.With("component", "repair"),
	})
	if err != nil {
		a.log.Error("repair controller not started", "error", err)
		return
	}
	a.log.Info("repair controller watching this node's pods", "node", o.NodeName, "mode", mode)
	if err := c.Run(ctx); err != nil && ctx.Err() == nil {
		a.log.Error("repair controller stopped", "error", err)
	}
}

// removeTaint removes the startup taint from node, and checks that the
// node the API returns no longer carries it. A merge patch of the whole
// list with the read resourceVersion: the agent's role may patch nodes,
// and a concurrent change to the taints is a conflict (an error, retried
// by the caller), never overwritten. Each request has its own deadline,
// so a hung API is an error, not a silent success.
func removeTaint(ctx context.Context, cs kubernetes.Interface, node string) error {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n, err := cs.CoreV1().Nodes().Get(rctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(n.Spec.Taints, isStartupTaint) {
		return nil
	}
	taints := slices.DeleteFunc(slices.Clone(n.Spec.Taints), isStartupTaint)
	if taints == nil {
		taints = []corev1.Taint{}
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"resourceVersion": n.ResourceVersion},
		"spec":     map[string]any{"taints": taints},
	})
	if err != nil {
		return err
	}
	n, err = cs.CoreV1().Nodes().Patch(rctx, node, types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return err
	}
	if slices.ContainsFunc(n.Spec.Taints, isStartupTaint) {
		return errors.New("the node still carries the taint after the patch")
	}
	return nil
}

func isStartupTaint(t corev1.Taint) bool {
	return t.Key == StartupTaint.Key && t.Effect == StartupTaint.Effect
}

// uninstallConfirmed reports whether the API confirms that meshcni is
// being removed from the cluster: this agent's DaemonSet is gone or being
// deleted (`meshcnictl disable` deletes it first). Anything else (a
// rolling upgrade, a restart, an eviction, no pod identity, an API error)
// is no confirmation, and the install stays for the next agent.
func (a *Agent) uninstallConfirmed(ctx context.Context, cs kubernetes.Interface) (bool, string) {
	o := &a.opts
	if o.PodName == "" || o.PodNamespace == "" {
		return false, "no pod identity (POD_NAME, POD_NAMESPACE) to find the DaemonSet by"
	}
	pod, err := cs.CoreV1().Pods(o.PodNamespace).Get(ctx, o.PodName, metav1.GetOptions{})
	if err != nil {
		return false, "cannot read own pod: " + err.Error()
	}
	owner := metav1.GetControllerOf(pod)
	if owner == nil || owner.Kind != "DaemonSet" {
		return false, "not run by a DaemonSet"
	}
	ds, err := cs.AppsV1().DaemonSets(o.PodNamespace).Get(ctx, owner.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return true, "DaemonSet " + owner.Name + " is gone"
	case err != nil:
		return false, "cannot read DaemonSet " + owner.Name + ": " + err.Error()
	case ds.UID != owner.UID:
		// Deleted and created again: the new one's agent takes over.
		return false, "DaemonSet " + owner.Name + " was replaced"
	case ds.DeletionTimestamp != nil:
		return true, "DaemonSet " + owner.Name + " is being deleted"
	}
	return false, "DaemonSet " + owner.Name + " remains (an upgrade or a restart)"
}
