package podcache

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshcni/meshcni/internal/podspec"
)

// fakeStore is a Store over a map.
type fakeStore struct {
	mu     sync.Mutex
	pods   map[string]*podspec.Pod
	synced bool
	calls  int // of Pod
}

func (s *fakeStore) Pod(ns, name string) *Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	p := s.pods[ns+"/"+name]
	if p == nil {
		return nil
	}
	e, err := NewEntry(p)
	if err != nil {
		panic(err)
	}
	return e
}

func (s *fakeStore) asked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

func (s *fakeStore) Synced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.synced
}

func (s *fakeStore) put(p *podspec.Pod) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pods[p.Namespace+"/"+p.Name] = p
}

func pod(ns, name, uid string) *podspec.Pod {
	return &podspec.Pod{
		ObjectMeta: podspec.ObjectMeta{Namespace: ns, Name: name, UID: uid,
			Annotations: map[string]string{"sidecar.istio.io/interceptionMode": "TPROXY"}},
		Spec: podspec.PodSpec{Containers: []podspec.Container{{Name: "app"}, {Name: "istio-proxy"}}},
	}
}

// listen listens on a Unix socket in a new directory (short: sun_path
// holds 108 bytes) and returns the listener and the socket's path.
func listen(t testing.TB) (net.Listener, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "podcache-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	path := filepath.Join(dir, "pods.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return l, path
}

// serve runs h.Serve on a Unix socket and returns the socket's path. At
// the test's end it closes the listener and checks that Serve returns
// nil, promptly.
func serve(t testing.TB, h *Handler) string {
	t.Helper()
	l, path := listen(t)
	served := make(chan error, 1)
	go func() { served <- h.Serve(l) }()
	t.Cleanup(func() {
		_ = l.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve after Close: %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after its listener was closed")
		}
	})
	return path
}

// serveRaw runs answer on every connection a Unix socket accepts, as an
// agent speaking its own protocol would, and returns the socket's path.
// The test's end closes the connections.
func serveRaw(t testing.TB, answer func(c net.Conn)) string {
	t.Helper()
	l, path := listen(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Go(func() { defer c.Close(); answer(c) })
		}
	})
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return path
}

// readRequest reads the client's request line.
func readRequest(t testing.TB, c net.Conn) request {
	line, err := bufio.NewReader(c).ReadBytes('\n')
	var req request
	if err == nil {
		err = json.Unmarshal(line, &req)
	}
	if err != nil {
		t.Errorf("request %q: %v", line, err)
	}
	return req
}

type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) observe(r string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n[r]++
}

func (c *counter) get(r string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[r]
}

func TestLookup(t *testing.T) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}, synced: true}
	store.put(pod("bookinfo", "reviews", "uid-1"))
	seen := &counter{n: map[string]int{}}
	sock := serve(t, &Handler{Store: store, Wait: 30 * time.Millisecond, Observe: seen.observe})
	c := NewClient(sock)
	ctx := context.Background()

	got, err := c.Pod(ctx, "bookinfo", "reviews", "uid-1")
	if err != nil {
		t.Fatalf("hit: %v", err)
	}
	if got.UID != "uid-1" || got.Annotations["sidecar.istio.io/interceptionMode"] != "TPROXY" || len(got.Spec.Containers) != 2 {
		t.Fatalf("hit decoded wrong: %+v", got)
	}

	for _, tc := range []struct {
		name, ns, pod, uid string
		want               error
		result             string
	}{
		{"absent", "bookinfo", "ratings", "uid-2", ErrNotFound, ResultNotFound},
		{"another UID under that name", "bookinfo", "reviews", "uid-new", ErrStale, ResultStale},
		{"other namespace", "default", "reviews", "uid-1", ErrNotFound, ResultNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := seen.get(tc.result)
			start := time.Now()
			_, err := c.Pod(ctx, tc.ns, tc.pod, tc.uid)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if d := time.Since(start); d < 30*time.Millisecond {
				t.Errorf("answered a miss in %v, before waiting for the watch (30ms)", d)
			}
			if seen.get(tc.result) != before+1 {
				t.Errorf("result %q not observed", tc.result)
			}
		})
	}
	if seen.get(ResultHit) != 1 {
		t.Errorf("hits = %d, want 1", seen.get(ResultHit))
	}
}

// A pod that the watch delivers while the request waits is answered.
func TestLookupWaitsForTheWatch(t *testing.T) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}, synced: true}
	store.put(pod("bookinfo", "reviews", "uid-old"))
	sock := serve(t, &Handler{Store: store, Wait: 2 * time.Second})
	time.AfterFunc(50*time.Millisecond, func() { store.put(pod("bookinfo", "reviews", "uid-new")) })
	got, err := NewClient(sock).Pod(context.Background(), "bookinfo", "reviews", "uid-new")
	if err != nil || got.UID != "uid-new" {
		t.Fatalf("got %v, %v; want the recreated pod", got, err)
	}
}

func TestNotSynced(t *testing.T) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}}
	store.put(pod("bookinfo", "reviews", "uid-1"))
	sock := serve(t, &Handler{Store: store})
	if _, err := NewClient(sock).Pod(context.Background(), "bookinfo", "reviews", "uid-1"); !errors.Is(err, ErrNotSynced) {
		t.Fatalf("err = %v, want ErrNotSynced", err)
	}
}

// Failures that are no answer at all are plain errors, quickly.
func TestNoAnswer(t *testing.T) {
	dir := t.TempDir()
	_, err := NewClient(filepath.Join(dir, "absent.sock")).Pod(context.Background(), "a", "b", "c")
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("no socket: err = %v", err)
	}

	for _, tc := range []struct {
		name string
		sock func(t *testing.T) string
	}{
		{"accepts and reads, never answers", func(t *testing.T) string {
			return serveRaw(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
		}},
		{"never accepts", func(t *testing.T) string { _, path := listen(t); return path }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := tc.sock(t)
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			start := time.Now()
			if _, err := NewClient(sock).Pod(ctx, "a", "b", "c"); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("hung agent: err = %v, want a deadline", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("hung agent held the client %v", d)
			}
		})
	}
}

// The client checks what it got: an agent that answers with another pod
// is a miss.
func TestClientChecksTheAnswer(t *testing.T) {
	for _, tc := range []struct{ name, ns, pod, uid string }{
		{"other name", "bookinfo", "ratings", "uid-1"},
		{"other namespace", "default", "reviews", "uid-1"},
		{"other UID", "bookinfo", "reviews", "uid-2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			liar, err := NewEntry(pod(tc.ns, tc.pod, tc.uid))
			if err != nil {
				t.Fatal(err)
			}
			sock := serveRaw(t, func(c net.Conn) {
				readRequest(t, c)
				_, _ = c.Write(answerLine(ResultHit, liar, ""))
			})
			if _, err := NewClient(sock).Pod(context.Background(), "bookinfo", "reviews", "uid-1"); !errors.Is(err, ErrStale) {
				t.Fatalf("err = %v, want ErrStale", err)
			}
		})
	}
}

// An answer the client cannot use is a plain error (the plug-in asks the
// API), never a panic, a miss it would trust, or an unbounded read.
func TestClientRejectsGarbledAnswers(t *testing.T) {
	huge := func(c net.Conn) { // more than maxBody, no newline
		chunk := bytes.Repeat([]byte("x"), 64<<10)
		for i := 0; i <= maxBody/len(chunk); i++ {
			if _, err := c.Write(chunk); err != nil {
				return // the client stopped reading
			}
		}
	}
	for _, tc := range []struct {
		name, want string
		answer     func(c net.Conn)
	}{
		{"closes without answering", "without an answer", func(net.Conn) {}},
		{"cut short", "cut short", func(c net.Conn) { _, _ = c.Write([]byte(`{"result":"hit","pod":{"metadata":`)) }},
		{"not JSON", "decode answer", func(c net.Conn) { _, _ = c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n")) }},
		{"a pod of the wrong shape", "decode answer", func(c net.Conn) { _, _ = c.Write([]byte(`{"result":"hit","pod":{"metadata":42}}` + "\n")) }},
		{"a hit without a pod", "without a pod", func(c net.Conn) { _, _ = c.Write([]byte(`{"result":"hit"}` + "\n")) }},
		{"an unknown result", `"teapot": short and stout`, func(c net.Conn) {
			_, _ = c.Write([]byte(`{"result":"teapot","error":"short and stout"}` + "\n"))
		}},
		{"bad request", "bad_request", func(c net.Conn) { _, _ = c.Write(answerLine(ResultBadRequest, nil, "no")) }},
		{"larger than maxBody", "longer than", huge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sock := serveRaw(t, func(c net.Conn) {
				readRequest(t, c)
				tc.answer(c)
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			p, err := NewClient(sock).Pod(ctx, "bookinfo", "reviews", "uid-1")
			if err == nil || p != nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, %v; want an error with %q", p, err, tc.want)
			}
			for _, miss := range []error{ErrNotFound, ErrStale, ErrNotSynced, context.DeadlineExceeded} {
				if errors.Is(err, miss) {
					t.Fatalf("err = %v, is %v", err, miss)
				}
			}
		})
	}
}

// roundTrip writes req as is on a new connection to sock and returns
// everything the agent writes before it closes.
func roundTrip(t *testing.T, sock, req string) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(req, "\n") && len(req) <= maxRequest {
		_ = c.(*net.UnixConn).CloseWrite()
	}
	out, err := io.ReadAll(c)
	// Closing with part of a request unread resets the connection after
	// the answer.
	if err != nil && !(errors.Is(err, syscall.ECONNRESET) && len(out) > 0) {
		t.Fatalf("%.60q: %v", req, err)
	}
	return string(out)
}

// The wire, as anyone (socat) sees it: one JSON line each way, then the
// agent closes; malformed requests are bad_request.
func TestWire(t *testing.T) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}, synced: true}
	store.put(pod("bookinfo", "reviews", "uid-1"))
	seen := &counter{n: map[string]int{}}
	sock := serve(t, &Handler{Store: store, Wait: -1, Observe: seen.observe})

	for _, req := range []string{
		`{"namespace":"bookinfo","name":"reviews"}` + "\n",
		`{"namespace":"bookinfo","name":"reviews","uid":""}` + "\r\n", // typed by hand
		`{"namespace":"bookinfo","name":"reviews","uid":"uid-1"}`,     // no newline, then EOF
	} {
		out := roundTrip(t, sock, req)
		want, _ := json.Marshal(pod("bookinfo", "reviews", "uid-1"))
		if out != `{"result":"hit","pod":`+string(want)+"}\n" {
			t.Fatalf("%q: answered %q", req, out)
		}
	}
	if out := roundTrip(t, sock, `{"namespace":"bookinfo","name":"ratings"}`+"\n"); out != `{"result":"not_found","error":"`+ErrNotFound.Error()+`"}`+"\n" {
		t.Fatalf("not found: answered %q", out)
	}

	for _, req := range []string{
		`{"namespace":"bookinfo",` + "\n",
		"not json\n",
		`"bookinfo/reviews"` + "\n",
		`{"namespace":"bookinfo","name":"reviews"}{}` + "\n",
		"\n",
		"{}\n",
		`{"namespace":"bookinfo","name":""}` + "\n",
		`{"namespace":"","name":"reviews"}` + "\n",
		`{"namespace":"bookinfo","name":"reviews/x"}` + "\n",
		`{"namespace":"book/info","name":"reviews"}` + "\n",
		`{"namespace":"bookinfo","name":"reviews","uid":7}` + "\n",
		"GET /v1/pods/bookinfo/reviews HTTP/1.1\r\nHost: agent\r\n\r\n",
		`{"namespace":"bookinfo","name":"` + strings.Repeat("x", maxRequest) + `"}` + "\n",
	} {
		before := seen.get(ResultBadRequest)
		out := roundTrip(t, sock, req)
		var a answer
		if err := json.Unmarshal([]byte(out), &a); err != nil || !strings.HasSuffix(out, "\n") ||
			a.Result != ResultBadRequest || a.Error == "" || a.Pod != nil {
			t.Errorf("%.60q: answered %q, want a bad_request line", req, out)
		}
		if seen.get(ResultBadRequest) != before+1 {
			t.Errorf("%.60q: bad_request not observed", req)
		}
	}
	if seen.get(ResultHit) != 3 || seen.get(ResultNotFound) != 1 {
		t.Errorf("observed %v", seen.n)
	}
}

// A connection that sends no request is closed after readTimeout without
// an answer, and is no lookup.
func TestSilentClient(t *testing.T) {
	seen := &counter{n: map[string]int{}}
	sock := serve(t, &Handler{Store: &fakeStore{synced: true}, Observe: seen.observe})
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(readTimeout + 5*time.Second))
	start := time.Now()
	out, err := io.ReadAll(c)
	if err != nil || len(out) != 0 {
		t.Fatalf("read %q, %v; want the agent to close without a word", out, err)
	}
	if d := time.Since(start); d < readTimeout/2 {
		t.Fatalf("closed after %v, before the read timeout", d)
	}
	if len(seen.n) != 0 {
		t.Fatalf("observed %v", seen.n)
	}
}

// Closing the listener stops Serve: a request waiting for the watch is
// answered with what the watch holds then, and Serve returns nil once it
// has been.
func TestServeStops(t *testing.T) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}, synced: true}
	seen := &counter{n: map[string]int{}}
	h := &Handler{Store: store, Wait: time.Minute, Observe: seen.observe}
	l, sock := listen(t)
	served := make(chan error, 1)
	go func() { served <- h.Serve(l) }()

	asked := make(chan error, 1)
	go func() {
		_, err := NewClient(sock).Pod(context.Background(), "bookinfo", "reviews", "uid-1")
		asked <- err
	}()
	// Close once the request waits for the watch.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the request never reached the store")
		}
		if store.asked() > 0 {
			break
		}
	}
	start := time.Now()
	_ = l.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve after Close: %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after its listener was closed")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Serve took %v to stop", d)
	}
	if err := <-asked; !errors.Is(err, ErrNotFound) {
		t.Fatalf("the request in flight: %v, want ErrNotFound", err)
	}
	if seen.get(ResultNotFound) != 1 {
		t.Fatalf("observed %v; Serve returned before the request in flight was done", seen.n)
	}
}

// fakeListener returns errs from Accept, then net.ErrClosed.
type fakeListener struct {
	net.Listener
	errs []error
}

func (l *fakeListener) Accept() (net.Conn, error) {
	if len(l.errs) == 0 {
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: net.ErrClosed}
	}
	err := l.errs[0]
	l.errs = l.errs[1:]
	return nil, err
}

// Serve waits out a lack of file descriptors and returns other Accept
// errors.
func TestServeAcceptErrors(t *testing.T) {
	h := &Handler{Store: &fakeStore{}}
	emfile := &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	if err := h.Serve(&fakeListener{errs: []error{emfile, emfile}}); err != nil {
		t.Fatalf("EMFILE then closed: %v, want nil", err)
	}
	broken := errors.New("broken")
	if err := h.Serve(&fakeListener{errs: []error{broken}}); !errors.Is(err, broken) {
		t.Fatalf("Serve = %v, want the accept error", err)
	}
}

// BenchmarkLookup is one warm round trip: connect, ask, decode.
func BenchmarkLookup(b *testing.B) {
	store := &fakeStore{pods: map[string]*podspec.Pod{}, synced: true}
	p := pod("bookinfo", "reviews", "uid-1")
	p.Spec.InitContainers = []podspec.Container{{Name: "istio-validation"}}
	store.put(p)
	sock := serve(b, &Handler{Store: store})
	c := NewClient(sock)
	ctx := context.Background()
	for b.Loop() {
		if _, err := c.Pod(ctx, "bookinfo", "reviews", "uid-1"); err != nil {
			b.Fatal(err)
		}
	}
}

// A hit carries the entry's JSON as the store encoded it: the handler
// does no JSON work for the pod on the path of its start.
func TestHitIsTheEntrysJSON(t *testing.T) {
	e, err := NewEntry(pod("bookinfo", "reviews", "uid-1"))
	if err != nil {
		t.Fatal(err)
	}
	e.json = []byte(`{"metadata":{"name":"reviews","namespace":"bookinfo","uid":"uid-1","annotations":{"as":"stored"}}}`)
	store := &entryStore{e: e}
	sock := serve(t, &Handler{Store: store})
	want := `{"result":"hit","pod":` + string(e.json) + "}\n"
	if out := roundTrip(t, sock, `{"namespace":"bookinfo","name":"reviews","uid":"uid-1"}`+"\n"); out != want {
		t.Fatalf("answer %q, want %q", out, want)
	}
}

// entryStore holds one entry as given.
type entryStore struct{ e *Entry }

func (s *entryStore) Pod(ns, name string) *Entry {
	if ns == s.e.Pod.Namespace && name == s.e.Pod.Name {
		return s.e
	}
	return nil
}

func (s *entryStore) Synced() bool { return true }
