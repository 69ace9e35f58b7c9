package agent

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// serveTestHealth starts a's health server on 127.0.0.1 and returns its
// address; it stops with the test.
func serveTestHealth(t *testing.T, a *Agent) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	addr, done, err := a.serveHealth(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); <-done })
	return addr.String()
}

// getFrom GETs path from addr with the source address src (another
// loopback address is another peer to the server).
func getFrom(src, addr, path string) (int, error) {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: time.Second}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// An idle-connection flood from one client neither grows the agent (one
// goroutine and buffers per connection, unbounded, before: 10,000 idle
// connections took it from 27 to 217 MB) nor keeps /readyz and /metrics
// from answering another client.
func TestHealthServerUnderIdleFlood(t *testing.T) {
	n := newNode(t, nil)
	a, err := New(n.options(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTestHealth(t, a)
	if code, err := getFrom("127.0.0.2", addr, "/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz before the flood: %d %v", code, err)
	}
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()

	// 10,000 as in the review, fewer where the test's own file limit
	// would not hold them (the server closes its ends at once).
	flood := 10000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && int(lim.Cur)-256 < flood {
		flood = int(lim.Cur) - 256
	}
	conns := make([]net.Conn, 0, flood)
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for range flood {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatalf("dial %d: %v", len(conns), err)
		}
		conns = append(conns, c)
	}
	// Let the server accept (and refuse) the whole backlog.
	if code, err := getFrom("127.0.0.3", addr, "/healthz"); err != nil || code != http.StatusOK {
		t.Fatalf("/healthz during the flood: %d %v", code, err)
	}
	for _, path := range []string{"/readyz", "/metrics"} {
		start := time.Now()
		code, err := getFrom("127.0.0.2", addr, path)
		if err != nil {
			t.Fatalf("%s during the flood: %v", path, err)
		}
		if path == "/metrics" && code != http.StatusOK || path == "/readyz" && code != http.StatusServiceUnavailable {
			t.Fatalf("%s during the flood: %d", path, code)
		}
		t.Logf("%s during a flood of %d idle connections: %d in %v", path, flood, code, time.Since(start))
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := runtime.NumGoroutine() - goroutines
	heap := int64(after.HeapInuse) - int64(before.HeapInuse)
	t.Logf("%d idle connections: %d more goroutines, heap in use %+d KiB", flood, grown, heap>>10)
	if limit := defaultHealthLimits.conns + 8; grown > limit {
		t.Errorf("%d idle connections added %d goroutines; want at most %d (the connection cap)", flood, grown, limit)
	}
	if heap > 8<<20 {
		t.Errorf("%d idle connections grew the heap by %d KiB; want under 8 MiB", flood, heap>>10)
	}
}

// A connection that sends nothing is closed after the read-header
// timeout and gives its slot back.
func TestHealthServerClosesIdleConnections(t *testing.T) {
	n := newNode(t, nil)
	a, err := New(n.options(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	a.healthLimits.readHeader, a.healthLimits.connsPerPeer = 200*time.Millisecond, 1
	addr := serveTestHealth(t, a)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("an idle connection: read = %v; want EOF (closed by the server)", err)
	}
	// Its slot is free again: the one connection this peer may hold.
	eventually(t, 5*time.Second, "the idle connection's slot to be free", func() bool {
		code, err := getFrom("127.0.0.1", addr, "/healthz")
		return err == nil && code == http.StatusOK
	})
}
