//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// proc is a daemon the suite runs inside the node netns: containerd, the
// agent.
type proc struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// startInNetns runs argv inside the netns at nsPath, its output appended
// to logPath. nsenter --net (not `ip netns exec`, which remounts /sys and
// hides the cgroup mounts from runc) execs argv in place, so the PID is
// the daemon's own: it is stopped by that PID only.
func startInNetns(name, nsPath, logPath string, argv ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	p := &proc{name: name, log: logPath, exited: make(chan struct{})}
	p.cmd = exec.Command("nsenter", append([]string{"--net=" + nsPath}, argv...)...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	// If the suite dies, the daemon gets SIGTERM. Pdeathsig fires when the
	// forking thread exits, so that thread stays locked to this goroutine
	// for the daemon's whole life.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	started := make(chan error)
	go func() {
		runtime.LockOSThread()
		err := p.cmd.Start()
		started <- err
		if err == nil {
			_ = p.cmd.Wait()
			close(p.exited)
		}
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// Exited reports whether the daemon is gone.
func (p *proc) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then SIGKILL. It returns a note
// when the daemon had to be killed or had already died.
func (p *proc) stop(grace time.Duration) string {
	if p.Exited() {
		return fmt.Sprintf("%s had exited before the end: %s", p.name, p.cmd.ProcessState)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return ""
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Sprintf("%s ignored SIGTERM for %s; killed", p.name, grace)
	}
}

// tail returns the daemon's last n log lines.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
