package agent

import (
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshcni/meshcni/test/testbed"
)

// The plug-in's log socket is a way to write into the agent's log and its
// decision metrics. Only local root (the plug-in) may use it: the file is
// 0600 and, should the file ever be reachable (a chmod, a hostPath mounted
// into a pod), the agent still refuses any peer whose SO_PEERCRED uid is
// not 0. A non-root child process (uid 65534) connects to a socket made
// world-writable on purpose; its line must not reach the log, and the
// refusal is counted and logged. Root still gets through afterwards.
func TestLogSocketRefusesNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a client as uid 65534")
	}
	// A tree uid 65534 can traverse: t.TempDir is 0700.
	root, err := os.MkdirTemp("", "meshcni-logsock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	self := filepath.Join(root, "agent.test")
	if err := copySelf(self); err != nil {
		t.Fatal(err)
	}

	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	o := n.options()
	o.RunDir = filepath.Join(root, "run")
	r := start(t, o)
	r.waitInstalled(t, 5*time.Second)
	sock := o.SocketPath()
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("log socket %s: %v, %v; want a socket with mode 0600", sock, fi, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Uid != 0 {
		t.Fatalf("log socket %s is not owned by root: %+v", sock, fi.Sys())
	}
	if err := os.Chmod(o.RunDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The misconfiguration the peer check exists for.
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}

	for i := range 3 {
		cmd := exec.Command(self, "-test.run=^TestLogSocketClientHelper$")
		cmd.Env = append(os.Environ(), "MESHCNI_LOGSOCK_CLIENT="+sock, fmt.Sprintf("MESHCNI_LOGSOCK_MSG=forged-by-nobody-%d", i))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid 65534: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), "connected") {
			t.Fatalf("the non-root client could not even connect (the test needs it to): %s", out)
		}
	}
	eventually(t, 5*time.Second, "3 refusals counted", func() bool { return r.metric(t, "meshcni_agent_log_rejected_total") == "3" })
	// Root's connections are still served.
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(c, `{"level":"INFO","msg":"ADD","decision":"captured","pod":"ns/from-root"}`)
	c.Close()
	eventually(t, 5*time.Second, "root's line re-logged", func() bool { return strings.Contains(r.logs.String(), "ns/from-root") })

	logs := r.logs.String()
	if strings.Contains(logs, "forged-by-nobody") {
		t.Errorf("a non-root peer's line reached the agent's log:\n%s", logs)
	}
	if !strings.Contains(logs, "refused a connection from a process that is not root") || !strings.Contains(logs, `"uid":65534`) {
		t.Errorf("the refusal is not logged with the peer's uid:\n%s", logs)
	}
	// Logged once per window, however many refusals.
	if got := strings.Count(logs, "refused a connection"); got != 1 {
		t.Errorf("refusals logged %d times, want 1 within %v", got, rejectedWarnEvery)
	}
	if v := r.metric(t, `meshcni_plugin_results_total{command="ADD",decision="captured"}`); v != "1" {
		t.Errorf("decision metric = %q, want 1 (root's line only)", v)
	}
}

// TestLogSocketClientHelper is the non-root client: it connects, sends a
// plug-in-like line and waits for the agent to close the connection.
func TestLogSocketClientHelper(t *testing.T) {
	path := os.Getenv("MESHCNI_LOGSOCK_CLIENT")
	if path == "" {
		t.Skip("run by TestLogSocketRefusesNonRoot")
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial %s as uid %d: %v", path, os.Getuid(), err)
	}
	defer c.Close()
	fmt.Println("connected")
	fmt.Fprintf(c, `{"level":"ERROR","msg":"ADD failed","decision":"error","pod":"%s"}`+"\n", os.Getenv("MESHCNI_LOGSOCK_MSG"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadAll(c); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("the agent did not close the connection: %v", err)
	}
}

// copySelf copies the running test binary to dst.
func copySelf(dst string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	return testbed.CopyExecutable(self, dst)
}
