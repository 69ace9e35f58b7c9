// Package node holds meshcnictl's node diagnostics, run on a node as root:
// verify (a pod's rules read from inside its network namespace, found
// through the container runtime, and judged with the plug-in's own
// verdict) and doctor (the node's CNI config, binaries, the plug-in's
// kubeconfig and backend). They read files, the kernel and the API; they
// change nothing.
package node
