// Package kubeharness runs a real kube-apiserver backed by a real etcd on
// 127.0.0.1, for tests and demos that need the Kubernetes API as it really
// behaves: RBAC decisions, TokenRequest, bound service-account tokens,
// admission and validation.
//
// There is no scheduler, controller-manager or kubelet. Pods are plain API
// objects: set spec.nodeName yourself (NewPod does). The ServiceAccount
// admission plugin is disabled, so pods need no "default" service account,
// and a deleted namespace stays Terminating because no namespace controller
// finalizes it.
//
// The binaries are built from source and cached by hack/build-kube.sh (run
// by `make deps` and `make test`), in ${MESHCNI_CACHE:-/var/cache/meshcni}/bin.
// Start finds them there, or on $PATH.
//
// Start takes a few seconds, so share one cluster per test package:
//
//	var cluster *kubeharness.Cluster
//
//	func TestMain(m *testing.M) {
//		os.Exit(kubeharness.RunTests(m, kubeharness.Options{}, &cluster))
//	}
//
// Tests that need isolation use their own namespace. StartT starts one
// cluster for a single test and stops it in t.Cleanup.
//
// A command (a demo, say) uses Start and Stop directly; they take a context
// and return errors.
package kubeharness
