package plugin

import (
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// openLog sends JSON lines to the agent's socket when it listens (so that
// `kubectl logs` on the agent shows every decision), else appends to
// log_file, and always to stderr, which the runtime records. Never stdout:
// it carries the CNI result.
func openLog(conf *Config) (*slog.Logger, func()) {
	writers := []io.Writer{os.Stderr}
	var closers []io.Closer
	if conf.LogSocket != "" {
		if c, err := net.DialTimeout("unix", conf.LogSocket, 100*time.Millisecond); err == nil {
			_ = c.SetWriteDeadline(time.Now().Add(time.Second))
			writers = append(writers, c)
			closers = append(closers, c)
		}
	}
	if len(closers) == 0 && conf.LogFile != "" {
		_ = os.MkdirAll(filepath.Dir(conf.LogFile), 0o755)
		if f, err := os.OpenFile(conf.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
			writers = append(writers, f)
			closers = append(closers, f)
		}
	}
	h := slog.NewJSONHandler(io.MultiWriter(writers...), &slog.HandlerOptions{Level: level(conf.LogLevel)})
	return slog.New(h).With("plugin", "meshcni"), func() {
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
