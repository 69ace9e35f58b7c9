//go:build integration

package fault

import (
	"bufio"
	"encoding/json"
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

// serveEnv makes a re-executed test binary run TestUntrustedServerChild:
// the ':'-separated socket paths it serves. answerEnv is its answer line.
const (
	serveEnv  = "MESHCNI_FAULT_SERVE"
	answerEnv = "MESHCNI_FAULT_ANSWER"
	// nobody is the uid and gid the untrusted server runs as.
	nobody = 65534
)

// TestUntrustedServerChild is the untrusted server: a copy of this test
// binary running as nobody. It listens on each path of serveEnv, says
// "ready", and answers every connection's first line with answerEnv,
// appending what it received to <path>.got, until it is killed.
func TestUntrustedServerChild(t *testing.T) {
	paths := os.Getenv(serveEnv)
	if os.Getenv(childEnv) == "" || paths == "" {
		t.Skip("run by TestUntrustedSocketsAreNotTrusted")
	}
	for _, path := range strings.Split(paths, ":") {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					line, _ := bufio.NewReader(c).ReadString('\n')
					if line == "" {
						return
					}
					if f, err := os.OpenFile(path+".got", os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
						_, _ = f.WriteString(line)
						_ = f.Close()
					}
					_, _ = c.Write([]byte(os.Getenv(answerEnv) + "\n"))
				}()
			}
		}()
	}
	os.Stdout.WriteString("ready\n")
	select {}
}

// startUntrusted runs TestUntrustedServerChild as uid/gid nobody, serving
// paths, each in a directory nobody can write; it returns once the
// sockets listen. The server is killed at the test's end.
func startUntrusted(t *testing.T, bin, answer string, paths ...string) {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^TestUntrustedServerChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1", serveEnv+"="+strings.Join(paths, ":"), answerEnv+"="+answer)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ready := make(chan string, 1)
	go func() { line, _ := bufio.NewReader(out).ReadString('\n'); ready <- line }()
	select {
	case line := <-ready:
		if line != "ready\n" {
			t.Fatalf("the untrusted server did not start: %q", line)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the untrusted server did not start within 30 s")
	}
	for _, p := range paths {
		if fi, err := os.Lstat(p); err != nil || fi.Sys().(*syscall.Stat_t).Uid != nobody {
			t.Fatalf("%s is not nobody's socket: %v", p, err)
		}
	}
}

// A pod cache and a log socket served by a user (uid 65534, a real
// process) are never trusted: the plug-in sends them nothing, asks the
// API, and captures the pod, though the fake cache answers "a hit, with
// sidecar.istio.io/inject: false" for the pod's own UID. Two ways in:
// the run dir is world-writable (the review's finding: the user replaced
// the socket and a mesh pod started uncaptured), or the user's socket was
// moved into a root-owned 0755 run dir and its file given to root, which
// only SO_PEERCRED can tell. The control: the same answer from a root
// process in a root-owned dir is used, and skips the pod, so the fake
// answer is one that would have done harm.
func TestUntrustedSocketsAreNotTrusted(t *testing.T) {
	// A copy of this binary nobody can run: the build's dir is root's 0700.
	shared, err := os.MkdirTemp("", "meshcni-trust-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(shared) })
	if err := os.Chmod(shared, 0o755); err != nil {
		t.Fatal(err)
	}
	self := filepath.Join(shared, "fault.test")
	if err := testbed.CopyExecutable(os.Args[0], self); err != nil {
		t.Fatal(err)
	}
	dir := func(name string, mode os.FileMode, uid int) string {
		d := filepath.Join(shared, name)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, uid); err != nil {
			t.Fatal(err)
		}
		return d
	}

	for _, tc := range []struct {
		name string
		// serve starts the server with answer and returns the run dir
		// holding pods.sock and log.sock.
		serve   func(t *testing.T, answer string) string
		trusted bool
	}{
		{name: "a user's sockets in a world-writable run dir", serve: func(t *testing.T, answer string) string {
			run := dir("open-run", 0o777, 0)
			startUntrusted(t, self, answer, filepath.Join(run, "pods.sock"), filepath.Join(run, "log.sock"))
			return run
		}},
		{name: "a user's server behind root-owned sockets in a root-owned run dir", serve: func(t *testing.T, answer string) string {
			own := dir("user-own", 0o700, nobody)
			run := dir("root-run", 0o755, 0)
			startUntrusted(t, self, answer, filepath.Join(own, "pods.sock"), filepath.Join(own, "log.sock"))
			for _, s := range []string{"pods.sock", "log.sock"} {
				if err := os.Rename(filepath.Join(own, s), filepath.Join(run, s)); err != nil {
					t.Fatal(err)
				}
				if err := os.Lchown(filepath.Join(run, s), 0, 0); err != nil {
					t.Fatal(err)
				}
				// The server appends what it receives beside the path it
				// listened on; link it here for the check below.
				if err := os.Symlink(filepath.Join(own, s+".got"), filepath.Join(run, s+".got")); err != nil {
					t.Fatal(err)
				}
			}
			return run
		}},
		{name: "control: the same answer from root", trusted: true, serve: func(t *testing.T, answer string) string {
			run := dir("control-run", 0o755, 0)
			fakeCacheIn(t, run, says(answer+"\n"))
			return run
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := meshPod(t, "fault-trust")
			harmful := pod.DeepCopy()
			harmful.Annotations["sidecar.istio.io/inject"] = "false" // would skip capture
			answer, err := json.Marshal(map[string]any{"result": "hit", "pod": harmful})
			if err != nil {
				t.Fatal(err)
			}
			run := tc.serve(t, string(answer))
			p := newAPIProxy(t, pass)
			kc := p.kubeconfig(t, pluginToken, false)
			n := newNS(t)
			conf := netconf(t, n.Path(), false, map[string]any{"kubeconfig": kc, "lockDir": t.TempDir(),
				"podCacheSocket": filepath.Join(run, "pods.sock"), "logSocket": filepath.Join(run, "log.sock")})
			inv := runPlugin(t, "ADD", n.Path(), k8sArgs(pod.Namespace, pod.Name, string(pod.UID)), conf)
			if inv.err != nil {
				t.Fatalf("ADD: %+v\n%s", inv.err, inv.stderr)
			}
			if tc.trusted {
				if !strings.Contains(inv.stderr, `"pod_source":"cache"`) || !strings.Contains(inv.stderr, `"decision":"skipped"`) {
					t.Fatalf("control: want the cache's answer used and the pod skipped; log:\n%s", inv.stderr)
				}
				return
			}
			if !strings.Contains(inv.stderr, `"pod_source":"api"`) || !strings.Contains(inv.stderr, `"decision":"captured"`) {
				t.Errorf("want the pod captured from the API's answer; log:\n%s", inv.stderr)
			}
			if !strings.Contains(inv.stderr, `not trusted`) {
				t.Errorf("the log does not say the cache was not trusted:\n%s", inv.stderr)
			}
			if p.requests.Load() == 0 {
				t.Error("the plug-in did not ask the API")
			}
			if len(residue(t, n.Path())) == 0 {
				t.Error("the pod was not captured")
			}
			for _, s := range []string{"pods.sock", "log.sock"} {
				if got, err := os.ReadFile(filepath.Join(run, s+".got")); err == nil {
					t.Errorf("the plug-in sent the untrusted %s: %q", s, got)
				}
			}
		})
	}
}
