package plugin

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/meshcni/meshcni/internal/netconf"
	"github.com/meshcni/meshcni/internal/trust"
)

// openLog sends JSON lines to the agent's socket when it listens (so that
// `kubectl logs` on the agent shows every decision), else appends to
// logFile, and always to stderr, which the runtime records. Never stdout:
// it carries the CNI result. sock is the agent's socket, nil when it does
// not listen: the ADD's record (addstat) goes there only.
func openLog(conf *netconf.Entry) (_ *slog.Logger, sock io.Writer, _ func()) {
	writers := []io.Writer{os.Stderr}
	var closers []io.Closer
	if conf.LogSocket != "" {
		// Only to the agent (root): the lines name every pod and decision.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		c, err := trust.Dial(ctx, conf.LogSocket)
		cancel()
		if err == nil {
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			writers = append(writers, c)
			closers = append(closers, c)
			sock = c
		}
	}
	if len(closers) == 0 && conf.LogFile != "" {
		if f, err := openLogFile(conf.LogFile); err == nil {
			writers = append(writers, f)
			closers = append(closers, f)
		}
	}
	h := slog.NewJSONHandler(io.MultiWriter(writers...), &slog.HandlerOptions{Level: level(conf.LogLevel)})
	return slog.New(h).With("plugin", "meshcni"), sock, func() {
		for _, c := range closers {
			_ = c.Close()
		}
	}
}

func level(s string) slog.Level {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// openLogFile opens path for appending. Root appends there, so never in a
// directory others can write, nor through a link someone put there.
func openLogFile(path string) (*os.File, error) {
	_ = os.MkdirAll(filepath.Dir(path), 0o755)
	if err := trust.Dir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY|syscall.O_NOFOLLOW, 0o600)
}
