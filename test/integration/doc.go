// Package integration holds real-kernel tests, behind the integration
// build tag and run as root: socket-level proofs that the capture rules
// redirect traffic as Istio's do, and the meshcni-iptables command run
// inside pod network namespaces. Every topology lives in network
// namespaces the tests create and remove; nothing touches the host's.
//
//	go test -tags integration ./test/integration/ -v
package integration
