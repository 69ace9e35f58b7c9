package scale

import (
	"sync"
	"time"

	"github.com/meshcni/meshcni/test/daemon"
)

// restartDelay is how long a replica that exited waits before it runs
// again: the kubelet's first crash back-off is 10 s; a shorter one keeps
// a run's measurements going.
const restartDelay = time.Second

// replica runs one meshcni-controller replica as its Deployment does: a
// replica that exits is started again, with the same arguments and log,
// as the kubelet restarts its container, until Stop. A replica that
// loses its Lease exits by design (RunAsLeader), and an API server that
// drowns under a burst of creates can make it lose it; without the
// restart one lost Lease would end a run. Restarts are counted for the
// report.
type replica struct {
	name, log string
	env, argv []string
	done      chan struct{} // closed when supervise returns

	mu       sync.Mutex
	proc     *daemon.Proc
	restarts int
	stopped  bool
}

func startReplica(name, logPath string, env []string, argv ...string) (*replica, error) {
	p, err := daemon.StartEnv(name, logPath, env, argv...)
	if err != nil {
		return nil, err
	}
	r := &replica{name: name, log: logPath, env: env, argv: argv, done: make(chan struct{}), proc: p}
	go r.supervise()
	return r, nil
}

func (r *replica) supervise() {
	defer close(r.done)
	for {
		<-r.current().Done()
		time.Sleep(restartDelay)
		r.mu.Lock()
		if r.stopped {
			r.mu.Unlock()
			return
		}
		np, err := daemon.StartEnv(r.name, r.log, r.env, r.argv...)
		if err != nil {
			r.mu.Unlock()
			return // the binary is gone: the exit stands, and Exited says so
		}
		r.proc = np
		r.restarts++
		r.mu.Unlock()
	}
}

func (r *replica) current() *daemon.Proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.proc
}

// PID is the running process's ID (the newest one after a restart).
func (r *replica) PID() int { return r.current().PID() }

// Exited reports whether the replica's process is not running now.
func (r *replica) Exited() bool { return r.current().Exited() }

// Tail is the last n lines of the replica's log (every run of it).
func (r *replica) Tail(n int) string { return r.current().Tail(n) }

// Restarts counts the times the replica was started again.
func (r *replica) Restarts() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.restarts
}

// Stop stops the replica for good, as daemon.Proc.Stop does.
func (r *replica) Stop(grace time.Duration) string {
	r.mu.Lock()
	r.stopped = true
	p := r.proc
	r.mu.Unlock()
	note := p.Stop(grace)
	<-r.done
	return note
}
