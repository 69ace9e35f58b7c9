// Package scale is meshcni's scale harness (issue #18): the real
// kube-apiserver and etcd (test/kubeharness), the real
// kube-controller-manager (it rolls the agent DaemonSet) and kube-scheduler
// (it binds the DaemonSet's pods), simulated kubelet-less nodes from kwok,
// and meshcni-controller as its real binary (two replicas: the leader
// reconciles, the standby serves the webhook), built from the tree and installed from the chart's rendered objects plus a
// MeshCNI resource. No kubelet, container runtime or network namespace.
//
// The small run (TestSmallScale, build tag integration) is part of `make
// test`; the measured run (TestScale, build tag scale) is `make scale`,
// which prints the table docs/performance.md records ("Scale").
package scale
