package podcache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"
)

func ino(t *testing.T, fd int) uint64 {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// The handler gets the request and the very file the client sent, and
// the client the handler's result.
func TestAddSendsTheFile(t *testing.T) {
	type got struct {
		req *AddRequest
		ino uint64
	}
	seen := make(chan got, 1)
	sock := serve(t, &Handler{Store: &fakeStore{synced: true}, Add: func(_ context.Context, req *AddRequest, fd int) *AddResult {
		defer unix.Close(fd)
		seen <- got{req, ino(t, fd)}
		return &AddResult{Done: true, Error: types.NewError(types.ErrInvalidNetworkConfig, "meshcni: bad port", "details")}
	}})
	f, err := os.CreateTemp(t.TempDir(), "netns")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	req := &AddRequest{ContainerID: "c1", Netns: "/var/run/netns/cni-1", IfName: "eth0", Args: "K8S_POD_NAME=p", Path: "/opt/cni/bin",
		Config: json.RawMessage(`{"cniVersion":"1.0.0","name":"k8s"}`)}
	res, err := NewClient(sock).Add(context.Background(), req, int(f.Fd()))
	if err != nil {
		t.Fatalf("Add: %v", err)
	}
	if !res.Done || res.Error == nil || res.Error.Code != types.ErrInvalidNetworkConfig || res.Error.Msg != "meshcni: bad port" || res.Error.Details != "details" {
		t.Fatalf("result %+v, want the handler's", res)
	}
	g := <-seen
	if g.ino != ino(t, int(f.Fd())) {
		t.Errorf("the handler got another file")
	}
	if g.req.ContainerID != "c1" || g.req.Netns != req.Netns || g.req.Args != req.Args || g.req.Path != req.Path || !bytes.Equal(g.req.Config, req.Config) {
		t.Errorf("request %+v, want %+v", g.req, req)
	}
}

// An agent that takes no ADDs (an older one, or none configured) is told
// apart from one that refuses this ADD.
func TestAddUnsupported(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	old := serve(t, &Handler{Store: &fakeStore{synced: true}})
	if _, err := NewClient(old).Add(context.Background(), &AddRequest{}, int(f.Fd())); !errors.Is(err, ErrAddUnsupported) {
		t.Fatalf("err = %v, want ErrAddUnsupported", err)
	}
	// A POST without the netns is refused by an agent that takes ADDs.
	called := false
	sock := serve(t, &Handler{Store: &fakeStore{synced: true}, Add: func(context.Context, *AddRequest, int) *AddResult {
		called = true
		return &AddResult{Done: true}
	}})
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Post("http://agent/v1/add", "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest || called {
		t.Fatalf("POST without a descriptor: %s (handler called: %v), want 400", resp.Status, called)
	}
}

// A handler that answers neither done nor a miss is an error, not a
// success the plug-in would trust.
func TestAddResultMustSaySomething(t *testing.T) {
	sock := serve(t, &Handler{Store: &fakeStore{synced: true}, Add: func(_ context.Context, _ *AddRequest, fd int) *AddResult {
		unix.Close(fd)
		return &AddResult{}
	}})
	f, err := os.Open(filepath.Join("/", "dev", "null"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := NewClient(sock).Add(context.Background(), &AddRequest{}, int(f.Fd())); err == nil || errors.Is(err, ErrAddUnsupported) {
		t.Fatalf("err = %v, want an error", err)
	}
}
