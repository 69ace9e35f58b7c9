package ctl

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"k8s.io/cli-runtime/pkg/genericiooptions"
)

func statusAgainst(t *testing.T, server string, args ...string) error {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := NewCmd(genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut})
	cmd.SetArgs(append([]string{"--server", server, "--insecure-skip-tls-verify", "--cache-dir", t.TempDir(), "status"}, args...))
	return cmd.ExecuteContext(context.Background())
}

// TestStatusWaitTimesOut: a --timeout that is a multiple of the 2 s poll
// interval used to end in client-go's rate-limiter error with an RBAC
// hint; it must say timed out.
func TestStatusWaitTimesOut(t *testing.T) {
	// An API server with no meshcni: no MeshCNI (nor its CRD), so status
	// stays NotInstalled.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","reason":"NotFound","code":404}`))
	}))
	defer srv.Close()
	start := time.Now()
	err := statusAgainst(t, srv.URL, "--wait", "--timeout", "2s")
	if err == nil || !strings.Contains(err.Error(), "timed out after 2s") || strings.Contains(err.Error(), "can-i") || strings.Contains(err.Error(), "rate") {
		t.Fatalf("got %v, want a plain timed out", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("took %v", d)
	}
}

// TestUnreachableAPIServer: connection refused says unreachable, not RBAC.
func TestUnreachableAPIServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	err = statusAgainst(t, "http://"+addr)
	if err == nil || !strings.Contains(err.Error(), "API server is unreachable") || strings.Contains(err.Error(), "can-i") {
		t.Fatalf("got %v", err)
	}
}
