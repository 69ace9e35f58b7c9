// Package fault holds meshcni's fault-injection tests, behind the
// integration build tag and run as root: the Kubernetes API misbehaving
// (slow, 401, 403, 500, 429, garbage, wrong pod), iptables-restore and nft
// missing, failing half-way or killed, bad network namespace paths, a
// full or read-only CNI conf dir under the agent, and 1,000 ADD/CHECK/DEL
// cycles that must leak nothing. docs/reliability.md lists every fault and
// the test that tries it; TestReliabilityTable (no build tag) checks that
// the table and the tests agree.
//
// Every topology lives in network namespaces the tests create, tmpfs
// mounts only in a private mount namespace of a child process, and every
// command the plug-in runs passes a guard that refuses the test process's
// own network namespace.
//
//	go test -tags integration ./test/fault/ -v [-args -cycles=1000]
package fault
