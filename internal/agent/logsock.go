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
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshcni/meshcni/internal/addstat"
	"github.com/meshcni/meshcni/internal/trust"
)

// The plug-in dials the log socket once per invocation, writes one slog
// JSON record per line and closes. maxLine bounds one record; connIdle
// bounds a connection that stops sending.
const (
	maxLine  = 64 << 10
	connIdle = 10 * time.Second
)

// unixSocket is a listening socket of the agent and the file it made.
type unixSocket struct {
	l    *net.UnixListener
	path string
	fi   fs.FileInfo
}

// listenLog opens the Unix socket the plug-in sends its log lines to.
func listenLog(path string) (*unixSocket, error) { return listenUnix("log socket", path) }

// listenUnix opens a Unix socket for the plug-in, mode 0600 (only root,
// as the plug-in runs, may connect). A socket file a killed agent left
// behind is replaced. It refuses to serve from a directory others can
// write (see secureRunDir): the plug-in would not trust the socket there,
// and rightly, since anyone could replace it. what names it in errors.
func listenUnix(what, path string) (*unixSocket, error) {
	if err := trust.Dir(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s %s: a %v is in the way", what, path, fi.Mode().Type())
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("%s %s: remove stale socket: %w", what, path, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	l.SetUnlinkOnClose(false)
	s := &unixSocket{l: l, path: path}
	if err := os.Chmod(path, 0o600); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if s.fi, err = os.Lstat(path); err != nil {
		s.close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return s, nil
}

// close stops listening and removes the socket file unless another agent
// (an upgrade's new one) has already put its own there.
func (s *unixSocket) close() {
	_ = s.l.Close()
	if fi, err := os.Lstat(s.path); err == nil && s.fi != nil && os.SameFile(fi, s.fi) {
		_ = os.Remove(s.path)
	}
}

// rejectedWarnEvery bounds how often refused connections are logged: a
// local process that keeps connecting must not flood the agent's log.
const rejectedWarnEvery = 10 * time.Second

// serveLog re-logs every line the plug-in sends until l is closed, and
// waits for the connections in flight. Only local root may write: the
// plug-in runs as root, and the file mode (0600) is the first guard, the
// peer's credentials (SO_PEERCRED, taken at connect) the second, so that
// a socket file made reachable by mistake (a hostPath mounted into some
// pod, a chmod) still lets no one forge the plug-in's decisions.
func (a *Agent) serveLog(l *net.UnixListener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	rejected := a.rejectedCounter()
	var lastWarn time.Time
	var quiet int // refusals since the last warning
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				a.log.Error("log socket stopped accepting", "error", err)
			}
			return
		}
		if cred, err := peerCred(c); err != nil || cred.Uid != 0 {
			_ = c.Close()
			rejected.Inc()
			quiet++
			if now := time.Now(); now.Sub(lastWarn) >= rejectedWarnEvery {
				attrs := []any{"refused", quiet}
				if err != nil {
					attrs = append(attrs, "error", err)
				} else {
					attrs = append(attrs, "uid", cred.Uid, "pid", cred.Pid)
				}
				a.log.Warn("log socket: refused a connection from a process that is not root", attrs...)
				lastWarn, quiet = now, 0
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			a.readLog(c)
		}()
	}
}

// peerCred returns the credentials of the process that connected c, as
// the kernel recorded them at connect time, in the agent's user namespace.
func peerCred(c *net.UnixConn) (*syscall.Ucred, error) { return trust.PeerCred(c) }

// secureRunDir creates the run dir, or repairs it, root-owned and 0755
// or stricter, and its lock dir likewise (0700 when new), before anything
// is written or served there. With a run dir others could write, a user
// replaced pods.sock with a socket of their own and a mesh pod started
// uncaptured; with a lock dir others could write, a user could hold a
// pod's xtables lock (ADD fails after 20 s) or have root create files
// where they chose. A repair is logged: something on the node opened the
// directory, and what it left there is not removed.
func (a *Agent) secureRunDir() error {
	for _, d := range []struct {
		path string
		perm fs.FileMode
		flag string
	}{{a.opts.RunDir, 0o755, "run dir (--run-dir)"}, {a.opts.LockDir(), 0o700, "lock dir (in --run-dir)"}} {
		repaired, err := trust.Secure(d.path, d.perm)
		if len(repaired) > 0 {
			a.log.Warn("repaired a directory others could change; check the node for what changed it", "dir", d.path, "repaired", repaired)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", d.flag, err)
		}
	}
	return nil
}

// rejectedCounter registers meshcni_agent_log_rejected_total in the
// agent's registry (once; Run serves the socket once).
func (a *Agent) rejectedCounter() prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "meshcni_agent_log_rejected_total",
		Help: "Connections to the plug-in log socket refused because the peer was not root (SO_PEERCRED)."})
	if err := a.metrics.reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(prometheus.Counter); ok {
				return existing
			}
		}
		a.log.Warn("log socket: cannot register the refused-connections counter", "error", err)
	}
	return c
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
	if _, ok := rec[addstat.Key]; ok {
		if r, ok := addstat.Parse(line); ok {
			a.metrics.adds.observe(r)
		}
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
