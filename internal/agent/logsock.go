package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// The plug-in dials the log socket once per invocation, writes one slog
// JSON record per line and closes. maxLine bounds one record; connIdle
// bounds a connection that stops sending.
const (
	maxLine  = 64 << 10
	connIdle = 10 * time.Second
)

// logSocket is the listening socket and the file it made.
type logSocket struct {
	l    *net.UnixListener
	path string
	fi   fs.FileInfo
}

// listenLog opens the Unix socket the plug-in sends its log lines to,
// mode 0600 (only root, as the plug-in runs, may write). A socket file a
// killed agent left behind is replaced.
func listenLog(path string) (*logSocket, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("log socket %s: a %v is in the way", path, fi.Mode().Type())
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("log socket %s: remove stale socket: %w", path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("log socket: %w", err)
	}
	l.SetUnlinkOnClose(false)
	s := &logSocket{l: l, path: path}
	if err := os.Chmod(path, 0o600); err != nil {
		s.close()
		return nil, fmt.Errorf("log socket: %w", err)
	}
	if s.fi, err = os.Lstat(path); err != nil {
		s.close()
		return nil, fmt.Errorf("log socket: %w", err)
	}
	return s, nil
}

// close stops listening and removes the socket file unless another agent
// (an upgrade's new one) has already put its own there.
func (s *logSocket) close() {
	_ = s.l.Close()
	if fi, err := os.Lstat(s.path); err == nil && s.fi != nil && os.SameFile(fi, s.fi) {
		_ = os.Remove(s.path)
	}
}

// serveLog re-logs every line the plug-in sends until l is closed, and
// waits for the connections in flight.
func (a *Agent) serveLog(l *net.UnixListener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				a.log.Error("log socket stopped accepting", "error", err)
			}
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			a.readLog(c)
		}()
	}
}

func (a *Agent) readLog(c net.Conn) {
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	for {
		_ = c.SetReadDeadline(time.Now().Add(connIdle))
		if !sc.Scan() {
			if err := sc.Err(); err != nil {
				a.log.Warn("log socket: dropped a connection", "error", err)
			}
			return
		}
		a.relog(sc.Bytes())
	}
}

// relog writes one plug-in record through the agent's logger, with the
// plug-in's level, message and fields, and counts its decision.
func (a *Agent) relog(line []byte) {
	if len(strings.TrimSpace(string(line))) == 0 {
		return
	}
	var rec map[string]any
	if err := json.Unmarshal(line, &rec); err != nil {
		a.log.Warn("plug-in sent a line that is not JSON", "line", string(line))
		return
	}
	msg, _ := rec["msg"].(string)
	level := slog.LevelInfo
	if s, ok := rec["level"].(string); ok {
		_ = level.UnmarshalText([]byte(s))
	}
	keys := make([]string, 0, len(rec))
	for k := range rec {
		switch k {
		case "time", "level", "msg":
		default:
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	attrs := make([]slog.Attr, 0, len(keys)+1)
	attrs = append(attrs, slog.String("source", "plugin"))
	for _, k := range keys {
		attrs = append(attrs, slog.Any(k, rec[k]))
	}
	a.log.LogAttrs(context.Background(), level, msg, attrs...)

	if d, ok := rec["decision"].(string); ok {
		cmd, _, _ := strings.Cut(msg, " ") // "ADD", "ADD failed"
		a.metrics.results.WithLabelValues(known(cmd, "ADD", "CHECK", "DEL"), known(d, "captured", "skipped", "error")).Inc()
	}
}

// known keeps label values to a fixed set.
func known(v string, set ...string) string {
	for _, s := range set {
		if v == s {
			return v
		}
	}
	return "other"
}
