package apilookup

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// helper writes a stand-in for meshcni-lookup: a shell script that first
// copies its stdin to a file beside it, so a test can read the request.
func helper(t *testing.T, body string) Helper {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, HelperName)
	script := "#!/bin/sh\ncat > " + filepath.Join(dir, "request") + "\n" + body + "\n"
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return Helper{Path: path}
}

func request(t *testing.T, h Helper) Request {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(filepath.Dir(h.Path), "request"))
	if err != nil {
		t.Fatal(err)
	}
	var r Request
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("request %s: %v", b, err)
	}
	return r
}

var req = Request{Kubeconfig: "/etc/kc", Namespace: "bookinfo", Name: "reviews", UID: "u-1", Timeout: time.Second, Attempts: 2, Interval: 10 * time.Millisecond}

func cniError(t *testing.T, err error) *types.Error {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("want a *types.Error, got %T %v", err, err)
	}
	return te
}

func TestPod(t *testing.T) {
	h := helper(t, `echo '{"metadata":{"name":"reviews","namespace":"bookinfo","uid":"u-1"},"spec":{"containers":[{"name":"app"}]}}'`)
	pod, err := h.Pod(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if pod.Name != "reviews" || pod.UID != "u-1" || len(pod.Spec.Containers) != 1 {
		t.Fatalf("pod %+v", pod)
	}
	got := request(t, h)
	want := req
	want.Op = OpPod
	if got != want {
		t.Fatalf("the helper read %+v, want %+v", got, want)
	}
}

// The helper's own CNI error reaches the runtime unchanged.
func TestHelperError(t *testing.T) {
	h := helper(t, `echo '{"code":7,"msg":"meshcni: pod bookinfo/reviews: grant it get on pods","details":"403"}'; exit 1`)
	te := cniError(t, h.Ready(context.Background(), req))
	if te.Code != 7 || !strings.Contains(te.Msg, "grant it get on pods") || te.Details != "403" {
		t.Fatalf("got %+v", te)
	}
	if r := request(t, h); r.Op != OpReady {
		t.Fatalf("op %q, want %q", r.Op, OpReady)
	}
}

func TestHelperFailures(t *testing.T) {
	cases := []struct {
		name string
		h    Helper
		code uint
		msg  string
	}{
		{"missing", Helper{Path: filepath.Join(t.TempDir(), HelperName)}, types.ErrTryAgainLater, "is missing"},
		{"garbage on success", helper(t, `echo 'not json'`), types.ErrInternal, "something other than a pod"},
		{"garbage on failure", helper(t, `echo 'panic: oops'; exit 2`), types.ErrInternal, "failed"},
		{"killed", helper(t, `kill -9 $$`), types.ErrInternal, "failed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.h.Pod(context.Background(), req)
			te := cniError(t, err)
			if te.Code != tc.code || !strings.Contains(te.Msg, tc.msg) {
				t.Fatalf("got %d %q, want %d with %q", te.Code, te.Msg, tc.code, tc.msg)
			}
		})
	}
}

// A helper that hangs is killed at the request's deadline, and the ADD
// fails as "try again later".
func TestHungHelper(t *testing.T) {
	h := helper(t, `exec sleep 60`)
	r := req
	r.Timeout, r.Attempts, r.Interval = 10*time.Millisecond, 1, 0
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := h.Pod(ctx, r)
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %v", d)
	}
	if te := cniError(t, err); te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, "did not finish") {
		t.Fatalf("got %+v", te)
	}
}

func TestDeadline(t *testing.T) {
	r := Request{Timeout: 2 * time.Second, Attempts: 3, Interval: 500 * time.Millisecond}
	if got, want := r.Deadline(), 3*2500*time.Millisecond+time.Second; got != want {
		t.Fatalf("deadline %v, want %v", got, want)
	}
	if got := (Request{Timeout: time.Second}).Deadline(); got != 2*time.Second {
		t.Fatalf("zero attempts count as one: %v", got)
	}
}

// The helper gets what an API client reads from the environment, and
// nothing of the runtime's CNI_* variables.
func TestHelperEnvironment(t *testing.T) {
	t.Setenv("HTTPS_PROXY", "http://proxy.example:3128")
	t.Setenv("SSL_CERT_DIR", "/etc/pki/certs")
	t.Setenv("CNI_COMMAND", "ADD")
	h := helper(t, `env > "$(dirname "$0")/env"; echo '{"metadata":{"name":"reviews","namespace":"bookinfo","uid":"u-1"}}'`)
	if _, err := h.Pod(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(filepath.Dir(h.Path), "env"))
	if err != nil {
		t.Fatal(err)
	}
	env := string(b)
	for _, want := range []string{"HTTPS_PROXY=http://proxy.example:3128", "SSL_CERT_DIR=/etc/pki/certs"} {
		if !strings.Contains(env, want+"\n") {
			t.Errorf("the helper's environment lacks %s:\n%s", want, env)
		}
	}
	if strings.Contains(env, "CNI_COMMAND") {
		t.Errorf("the helper got the runtime's CNI_COMMAND:\n%s", env)
	}
}
