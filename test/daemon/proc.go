// Package sweep runs the daemons of the real-runtime suites (test/e2e,
// test/cluster) and removes what they leave on the host. Everything is
// found and stopped by PID, cgroup or path of the run's own: never by a
// process name, which would reach another run's or the host's daemons.
package daemon

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// Proc is a daemon a suite started: its PID is the daemon's own (argv is
// usually nsenter, which execs the daemon in place), so it is stopped by
// that PID only.
type Proc struct {
	Name   string
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
}

// Start runs argv with its output appended to logPath.
func Start(name, logPath string, argv ...string) (*Proc, error) {
	return StartEnv(name, logPath, nil, argv...)
}

// StartEnv is Start with env (NAME=value) added to this process's
// environment.
func StartEnv(name, logPath string, env []string, argv ...string) (*Proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	p := &Proc{Name: name, log: logPath, exited: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	// If the test process dies, the daemon gets SIGTERM. Pdeathsig fires
	// when the forking thread exits, so that thread stays locked to this
	// goroutine for the daemon's whole life.
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

// PID is the daemon's process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the daemon has exited.
func (p *Proc) Done() <-chan struct{} { return p.exited }

// State is how the daemon exited; read it only after Done is closed.
func (p *Proc) State() *os.ProcessState { return p.cmd.ProcessState }

// Exited reports whether the daemon is gone.
func (p *Proc) Exited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, waits up to grace, then SIGKILL. It returns a note
// when the daemon had to be killed or had already died; a nil Proc (never
// started) is a no-op.
func (p *Proc) Stop(grace time.Duration) string {
	if p == nil {
		return ""
	}
	if p.Exited() {
		return fmt.Sprintf("%s had exited before the end: %s", p.Name, p.cmd.ProcessState)
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return ""
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return fmt.Sprintf("%s ignored SIGTERM for %s; killed", p.Name, grace)
	}
}

// Tail returns the daemon's last n log lines.
func (p *Proc) Tail(n int) string {
	if p == nil {
		return ""
	}
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
