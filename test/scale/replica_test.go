package scale

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A replica that exits is started again, as its Deployment's pod would
// be, and one that is stopped stays stopped.
func TestReplicaRestarts(t *testing.T) {
	r, err := startReplica("exits", filepath.Join(t.TempDir(), "exits.log"), nil, "/bin/sh", "-c", "echo run; sleep 0.1")
	if err != nil {
		t.Fatal(err)
	}
	first := r.PID()
	deadline := time.Now().Add(10 * time.Second)
	for r.Restarts() < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if r.Restarts() < 2 || r.PID() == first {
		t.Fatalf("restarts %d, pid %d (first %d): want the process started again", r.Restarts(), r.PID(), first)
	}
	r.Stop(time.Second)
	n := r.Restarts()
	time.Sleep(restartDelay + 500*time.Millisecond)
	if r.Restarts() != n || !r.Exited() {
		t.Fatalf("a stopped replica ran again (restarts %d → %d, exited %v)", n, r.Restarts(), r.Exited())
	}
	if runs := strings.Count(r.Tail(100), "run"); runs != n+1 {
		t.Errorf("the log holds %d runs, want %d (every run's output, appended)", runs, n+1)
	}
}
