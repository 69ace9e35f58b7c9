package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/meshcni/meshcni/internal/apilookup"
	"github.com/meshcni/meshcni/internal/podspec"
)

// api serves one pod, and 403 for every other name; /readyz answers ok.
func api(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			_, _ = w.Write([]byte("ok"))
		case "/api/v1/namespaces/bookinfo/pods/reviews":
			_, _ = w.Write([]byte(`{"kind":"Pod","metadata":{"name":"reviews","namespace":"bookinfo","uid":"u-1"},"spec":{"containers":[{"name":"app"},{"name":"istio-proxy"}]}}`))
		default:
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"kind":"Status","reason":"Forbidden","message":"pods is forbidden"}`))
		}
	}))
	t.Cleanup(srv.Close)
	path := filepath.Join(t.TempDir(), "kubeconfig")
	kc := "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: " + srv.URL + "}\n" +
		"users:\n- name: u\n  user: {token: t0k}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n"
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func ask(t *testing.T, r apilookup.Request) (string, *types.Error) {
	t.Helper()
	in, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	te := run(context.Background(), bytes.NewReader(in), &out)
	return out.String(), te
}

func TestLookup(t *testing.T) {
	kc := api(t)
	base := apilookup.Request{Kubeconfig: kc, Timeout: time.Second, Attempts: 1}

	r := base
	r.Op, r.Namespace, r.Name, r.UID = apilookup.OpPod, "bookinfo", "reviews", "u-1"
	out, te := ask(t, r)
	if te != nil {
		t.Fatalf("pod: %v", te)
	}
	var pod podspec.Pod
	if err := json.Unmarshal([]byte(out), &pod); err != nil || pod.UID != "u-1" || len(pod.Spec.Containers) != 2 {
		t.Fatalf("pod %s (%v)", out, err)
	}

	r.Name = "secret"
	if _, te := ask(t, r); te == nil || te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "grant it get on pods") {
		t.Fatalf("forbidden: got %v", te)
	}

	r = base
	r.Op = apilookup.OpReady
	if _, te := ask(t, r); te != nil {
		t.Fatalf("ready: %v", te)
	}
	r.Kubeconfig = filepath.Join(t.TempDir(), "none")
	if _, te := ask(t, r); te == nil || te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, "is missing") {
		t.Fatalf("no kubeconfig: got %v", te)
	}
}

func TestBadRequests(t *testing.T) {
	for _, in := range []string{"", "{", `{"op":"pod","kubeconfig":"/k","color":"red"}`, `{"op":"delete","kubeconfig":"/k"}`} {
		var out bytes.Buffer
		te := run(context.Background(), strings.NewReader(in), &out)
		if te == nil || te.Code == 0 || out.Len() != 0 {
			t.Errorf("%q: got %v, stdout %q; want a CNI error and no output", in, te, out.String())
		}
	}
}
