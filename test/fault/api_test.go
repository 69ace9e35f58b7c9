//go:build integration

package fault

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshcni/meshcni/test/kubeharness"
	"github.com/meshcni/meshcni/test/testbed"
)

// apiProxy stands between the plug-in and the real kube-apiserver, on
// 127.0.0.1, and lets a fault decide each answer.
type apiProxy struct {
	srv      *httptest.Server
	requests atomic.Int64
}

// passthrough forwards to the real API server.
func passthrough(t testing.TB) http.Handler {
	t.Helper()
	u, err := url.Parse(cluster.URL)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cluster.CAData)
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	return rp
}

// newAPIProxy serves fault (given the passthrough) over TLS with a
// certificate of its own. (client-go sends no bearer token over plain
// HTTP.)
func newAPIProxy(t testing.TB, fault func(pass http.Handler) http.Handler) *apiProxy {
	t.Helper()
	p := &apiProxy{}
	h := fault(passthrough(t))
	counted := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.requests.Add(1)
		h.ServeHTTP(w, r)
	})
	p.srv = httptest.NewTLSServer(counted)
	t.Cleanup(p.srv.Close)
	return p
}

// kubeconfig writes a kubeconfig for the proxy that authenticates with
// token and trusts the proxy's certificate, or, with cluster CA, the
// cluster's (which the proxy's certificate fails, as a man in the middle).
func (p *apiProxy) kubeconfig(t testing.TB, token string, clusterCA bool) string {
	t.Helper()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
	if clusterCA {
		ca = cluster.CAData
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := kubeharness.WriteKubeconfig(path, p.srv.URL, ca, token); err != nil {
		t.Fatal(err)
	}
	return path
}

// status writes a Kubernetes Status error.
func status(w http.ResponseWriter, code int, reason metav1.StatusReason, header map[string]string) {
	for k, v := range header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(&metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Code: int32(code), Reason: reason, Message: "injected by the fault test",
	})
}

// hang waits until the client gives up (or the test's own bound).
func hang(r *http.Request) {
	select {
	case <-r.Context().Done():
	case <-time.After(10 * time.Second):
	}
}

var apiSeq atomic.Int64

// meshPod stores a mesh pod in the API and returns it.
func meshPod(t testing.TB, namespace string) *corev1.Pod {
	t.Helper()
	name := fmt.Sprintf("mesh-%d", apiSeq.Add(1))
	created, err := cluster.CreatePod(context.Background(), testbed.MeshPod(namespace, name, 9080))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cluster.Client.CoreV1().Pods(namespace).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	return created
}

// Every way the API can fail a mesh pod's lookup: ADD fails closed, with
// a CNI error that says what is wrong, within a bound set by apiTimeout
// and podLookupRetries, and the pod's netns holds no rule. STATUS says
// the plug-in is not available (50). With the same proxy passing through,
// the same pod is captured: the harness, not the fault, is what works.
func TestAPIFaults(t *testing.T) {
	ctx := context.Background()
	_, noRBACToken, err := cluster.ServiceAccountKubeconfig(ctx, "kube-system", "fault-nobody", nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// tries × apiTimeout + intervals, plus process start and slack on a
	// loaded 2-core machine.
	const bound = 2*300*time.Millisecond + 50*time.Millisecond + 3*time.Second
	cases := []struct {
		name     string
		fault    func(pass http.Handler) http.Handler
		mitm     bool   // the plug-in trusts the cluster's CA, not the proxy's
		token    string // default: the plug-in's (get pods)
		wrongUID bool
		down     bool
		wantCode uint
		wantMsg  string
		// The plug-in's lookup tries (podLookupRetries 2): permanent
		// errors are not retried.
		wantRequests int64
		status       bool // STATUS reports 50 too
	}{
		{name: "slow beyond apiTimeout", fault: func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hang(r) })
		}, wantCode: types.ErrTryAgainLater, wantMsg: "cannot reach the Kubernetes API", wantRequests: 2, status: true},
		{name: "headers then stall", fault: func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusOK)
				_, _ = w.Write([]byte(`{"kind":"Pod","apiVersion":"v1","metadata":{"name":`))
				w.(http.Flusher).Flush()
				hang(r)
			})
		}, wantCode: types.ErrTryAgainLater, wantMsg: "cannot reach the Kubernetes API", wantRequests: 2},
		{name: "401 bad token", fault: pass, token: "not-a-token",
			wantCode: types.ErrTryAgainLater, wantMsg: "rejected the plug-in's token", wantRequests: 1, status: true},
		{name: "403 no RBAC", fault: pass, token: noRBACToken,
			wantCode: types.ErrInvalidNetworkConfig, wantMsg: "may not get pods; grant it get on pods (ClusterRole meshcni-plugin)", wantRequests: 1},
		{name: "500", fault: func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				status(w, http.StatusInternalServerError, metav1.StatusReasonInternalError, nil)
			})
		}, wantCode: types.ErrTryAgainLater, wantMsg: "the Kubernetes API answered 500 InternalError", wantRequests: 2, status: true},
		{name: "503 unavailable", fault: func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				status(w, http.StatusServiceUnavailable, metav1.StatusReasonServiceUnavailable, nil)
			})
		}, wantCode: types.ErrTryAgainLater, wantMsg: "the Kubernetes API answered 503 ServiceUnavailable", wantRequests: 2, status: true},
		// What API Priority and Fairness answers when the API is overloaded.
		{name: "429 with Retry-After", fault: func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				status(w, http.StatusTooManyRequests, metav1.StatusReasonTooManyRequests, map[string]string{"Retry-After": "1"})
			})
		}, wantCode: types.ErrTryAgainLater, wantMsg: "the Kubernetes API answered 429 TooManyRequests", wantRequests: 2},
		{name: "garbage 200", fault: func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write([]byte("<html>a captive portal</html>"))
			})
		}, wantCode: types.ErrTryAgainLater, wantMsg: "did not send the pod (a proxy in the way?)", wantRequests: 2},
		{name: "another pod in a 200", fault: func(http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				other := testbed.MeshPod("fault-api", "impostor", 9080)
				other.UID = "00000000-0000-0000-0000-000000000000"
				other.APIVersion, other.Kind = "v1", "Pod"
				_ = json.NewEncoder(w).Encode(other)
			})
		}, wantCode: types.ErrTryAgainLater, wantMsg: "did not send the pod", wantRequests: 2},
		{name: "uid mismatch", fault: pass, wrongUID: true,
			wantCode: types.ErrTryAgainLater, wantMsg: "the API shows a different pod under this name", wantRequests: 2},
		{name: "untrusted certificate", fault: pass, mitm: true,
			wantCode: types.ErrTryAgainLater, wantMsg: "cannot reach the Kubernetes API", status: true},
		{name: "down", fault: pass, down: true,
			wantCode: types.ErrTryAgainLater, wantMsg: "cannot reach the Kubernetes API", status: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pod := meshPod(t, "fault-api")
			p := newAPIProxy(t, tc.fault)
			token := pluginToken
			if tc.token != "" {
				token = tc.token
			}
			kc := p.kubeconfig(t, token, tc.mitm)
			if tc.down {
				p.srv.Close()
			}
			uid := string(pod.UID)
			if tc.wrongUID {
				uid = "11111111-2222-3333-4444-555555555555"
			}
			n := newNS(t)
			// 1.1.0: STATUS needs it.
			conf := netconf(t, n.Path(), true, map[string]any{"kubeconfig": kc, "lockDir": t.TempDir(), "cniVersion": "1.1.0"})
			inv := runPlugin(t, "ADD", n.Path(), k8sArgs(pod.Namespace, pod.Name, uid), conf)
			if inv.err == nil {
				t.Fatalf("ADD succeeded under the fault: %s", inv.stdout)
			}
			if inv.err.Code != tc.wantCode || !strings.Contains(inv.err.Msg, tc.wantMsg) {
				t.Errorf("ADD error = code %d %q (details %q); want code %d saying %q", inv.err.Code, inv.err.Msg, inv.err.Details, tc.wantCode, tc.wantMsg)
			}
			if !strings.Contains(inv.err.Msg, pod.Namespace+"/") {
				t.Errorf("the message does not name the pod: %q", inv.err.Msg)
			}
			if inv.elapsed > bound {
				t.Errorf("ADD took %v under the fault; apiTimeout 300ms × 2 tries bounds it at %v", inv.elapsed, bound)
			}
			if got := p.requests.Load(); tc.wantRequests > 0 && got != tc.wantRequests {
				t.Errorf("the plug-in sent %d requests, want %d (podLookupRetries 2; permanent errors once)", got, tc.wantRequests)
			}
			assertNoResidue(t, n.Path())
			t.Logf("ADD: code %d %q in %v, %d requests", inv.err.Code, inv.err.Msg, inv.elapsed.Round(time.Millisecond), p.requests.Load())

			if tc.status {
				st := runPlugin(t, "STATUS", n.Path(), "", conf)
				if st.err == nil || st.err.Code != 50 {
					t.Errorf("STATUS under the fault = %+v, want code 50 (plug-in not available)", st.err)
				}
			}
		})
	}

	// The harness itself: the same proxy, passing through, captures.
	t.Run("passthrough captures, DEL succeeds with the API down", func(t *testing.T) {
		pod := meshPod(t, "fault-api")
		p := newAPIProxy(t, pass)
		n := newNS(t)
		conf := netconf(t, n.Path(), true, map[string]any{"kubeconfig": p.kubeconfig(t, pluginToken, false), "lockDir": t.TempDir()})
		if inv := runPlugin(t, "ADD", n.Path(), k8sArgs(pod.Namespace, pod.Name, string(pod.UID)), conf); inv.err != nil {
			t.Fatalf("ADD through the proxy: %+v\n%s", inv.err, inv.stderr)
		}
		if len(residue(t, n.Path())) == 0 {
			t.Fatal("ADD through the proxy programmed nothing")
		}
		p.srv.Close()
		if inv := runPlugin(t, "DEL", n.Path(), k8sArgs(pod.Namespace, pod.Name, string(pod.UID)), conf); inv.err != nil {
			t.Fatalf("DEL with the API down: %+v", inv.err)
		}
		// DEL never touches the netns: the rules die with it, and a DEL
		// given the wrong netns must not uncapture another pod.
		if len(residue(t, n.Path())) == 0 {
			t.Fatal("DEL changed the netns")
		}
	})
}

func pass(h http.Handler) http.Handler { return h }

// Pods the plug-in never captures need no API: in an excluded namespace,
// or not a Kubernetes pod at all. They start while the API hangs or the
// kubeconfig is missing, and the API sees no request.
func TestNoAPICallWhenNotNeeded(t *testing.T) {
	p := newAPIProxy(t, func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hang(r) })
	})
	slowKC := p.kubeconfig(t, pluginToken, false)
	for _, tc := range []struct {
		name, kubeconfig, args string
	}{
		{"excluded namespace, API hangs", slowKC, k8sArgs("kube-system", "coredns-1", "6a1b2c3d-0000-0000-0000-000000000001")},
		{"excluded namespace, no kubeconfig", "/nonexistent/kubeconfig", k8sArgs("istio-system", "istiod-1", "6a1b2c3d-0000-0000-0000-000000000002")},
		{"not a Kubernetes pod, API hangs", slowKC, "IgnoreUnknown=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNS(t)
			conf := netconf(t, n.Path(), false, map[string]any{"kubeconfig": tc.kubeconfig, "lockDir": t.TempDir()})
			inv := runPlugin(t, "ADD", n.Path(), tc.args, conf)
			if inv.err != nil {
				t.Fatalf("ADD blocked a pod that needs no capture: %+v", inv.err)
			}
			if !strings.Contains(string(inv.stdout), "10.1.0.5/24") {
				t.Errorf("ADD must pass prevResult through, got %s", inv.stdout)
			}
			// The request count below is the proof; this only catches a
			// plug-in that waits for something else.
			if inv.elapsed > 2*time.Second {
				t.Errorf("ADD took %v: it must not wait for the API", inv.elapsed)
			}
			assertNoResidue(t, n.Path())
		})
	}
	if got := p.requests.Load(); got != 0 {
		t.Errorf("the API saw %d requests for pods that need none", got)
	}
}
