package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshcni/meshcni/internal/install"
	"github.com/meshcni/meshcni/test/testbed"
)

const (
	bridgeList = `{
  "cniVersion": "1.0.0",
  "name": "k8s-pod-network",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`
	bridgeConf = `{"cniVersion": "0.3.1", "name": "mynet", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "10.22.0.0/16"}}
`
	testCA = "-----BEGIN CERTIFICATE-----\nMIIBdGVzdA==\n-----END CERTIFICATE-----\n"
)

// node is a fake node's directories and the agent's inputs.
type node struct {
	root, conf, bin, run, tokenDir, src string
}

func newNode(t *testing.T, files map[string]string) *node {
	t.Helper()
	root := t.TempDir()
	n := &node{root: root, conf: filepath.Join(root, "etc/cni/net.d"), bin: filepath.Join(root, "opt/cni/bin"),
		run: filepath.Join(root, "var/run/meshcni"), tokenDir: filepath.Join(root, "sa"), src: filepath.Join(root, "image/meshcni")}
	for _, d := range []string{n.conf, n.bin, n.tokenDir, filepath.Dir(n.src)} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, data := range files {
		writeFile(t, filepath.Join(n.conf, name), data)
	}
	writeFile(t, filepath.Join(n.bin, "bridge"), "#!/bin/sh\n")
	writeFile(t, n.src, "\x7fELF fake meshcni plug-in\n")
	writeFile(t, filepath.Join(filepath.Dir(n.src), "meshcni-lookup"), "\x7fELF fake meshcni-lookup\n")
	writeFile(t, filepath.Join(n.tokenDir, "token"), "token-1\n")
	writeFile(t, filepath.Join(n.tokenDir, "ca.crt"), testCA)
	return n
}

func (n *node) options() Options {
	o := DefaultOptions()
	o.CNIConfDir, o.CNIBinDir, o.RunDir, o.PluginBinary = n.conf, n.bin, n.run, n.src
	o.TokenPath, o.CAPath = filepath.Join(n.tokenDir, "token"), filepath.Join(n.tokenDir, "ca.crt")
	o.APIServer = "https://10.96.0.1:443"
	o.HealthAddr = ""
	o.Resync = 5 * time.Second
	return o
}

func writeFile(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replace writes path atomically, as a primary CNI does.
func replace(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".primary.tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// running is an agent started in the background.
type running struct {
	*Agent
	logs   *testbed.SyncBuffer
	cancel context.CancelFunc
	done   chan error
}

// start runs an agent with o; prep, if any, sets its test hooks first.
func start(t *testing.T, o Options, prep ...func(*Agent)) *running {
	t.Helper()
	logs := &testbed.SyncBuffer{}
	a, err := New(o, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range prep {
		p(a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Agent: a, logs: logs, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		r.stop(t)
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	return r
}

// stop cancels the agent and waits for Run to return.
func (r *running) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("agent did not stop within 10s")
		return nil
	}
}

// eventually polls cond every 2 ms until it holds or within passes, and
// returns how long it took.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return time.Since(start)
}

func (r *running) installed(t *testing.T) bool {
	entry, _ := r.currentEntry()
	st, err := install.Check(r.opts.CNIConfDir, entry)
	return err == nil && st.Installed()
}

func (r *running) waitInstalled(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	return eventually(t, within, "meshcni entry installed and agent ready", func() bool {
		ready, _ := r.Ready()
		return ready && r.installed(t)
	})
}

func (r *running) get(t *testing.T, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String()
}

// metric returns the value of one sample line of /metrics, or "".
func (r *running) metric(t *testing.T, series string) string {
	t.Helper()
	_, body := r.get(t, "/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// snapshot is every file in a directory tree: path → mode and content.
type snapshot map[string]string

func snap(t *testing.T, dir string) snapshot {
	t.Helper()
	s := snapshot{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		s[rel] = fmt.Sprintf("%v\n%s", fi.Mode(), data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (s snapshot) diff(t *testing.T, want snapshot) {
	t.Helper()
	var keys []string
	for k := range s {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := s[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if s[k] != want[k] {
			t.Errorf("%s:\n got: %q\nwant: %q", k, s[k], want[k])
		}
	}
}

func kubeconfigToken(t *testing.T, path string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return ""
	}
	rest, err := clientcmd.NewDefaultClientConfig(*cfg, nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return rest.BearerToken
}

func TestInstallAndUninstall(t *testing.T) {
	for _, tc := range []struct{ name, file, data string }{
		{"conflist", "10-bridge.conflist", bridgeList},
		{"wrapped conf", "10-mynet.conf", bridgeConf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := newNode(t, map[string]string{tc.file: tc.data, "README": "not a config\n"})
			before := snap(t, n.conf)
			r := start(t, n.options())
			r.waitInstalled(t, 5*time.Second)

			// The chain loads, meshcni last, naming the agent's files.
			list, err := libcni.ConfListFromFile(filepath.Join(n.conf, strings.TrimSuffix(tc.file, filepath.Ext(tc.file))+".conflist"))
			if err != nil {
				t.Fatal(err)
			}
			last := list.Plugins[len(list.Plugins)-1]
			var e map[string]any
			if err := json.Unmarshal(last.Bytes, &e); err != nil {
				t.Fatal(err)
			}
			if e["type"] != "meshcni" || e["kubeconfig"] != filepath.Join(n.run, "kubeconfig") ||
				e["logSocket"] != filepath.Join(n.run, "log.sock") || e["lockDir"] != filepath.Join(n.run, "locks") {
				t.Errorf("entry = %s", last.Bytes)
			}
			for _, b := range []string{"meshcni", "meshcni-lookup"} {
				bin, err := os.Stat(filepath.Join(n.bin, b))
				if err != nil || bin.Mode().Perm() != 0o755 {
					t.Errorf("binary %s: %v %v", b, bin, err)
				}
			}
			kc := filepath.Join(n.run, "kubeconfig")
			if fi, err := os.Stat(kc); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("kubeconfig: %v %v", fi, err)
			}
			if tok := kubeconfigToken(t, kc); tok != "token-1" {
				t.Errorf("kubeconfig token = %q", tok)
			}
			if fi, err := os.Stat(filepath.Join(n.run, "log.sock")); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != fs.ModeSocket {
				t.Errorf("log socket: %v %v", fi, err)
			}
			if code, _ := r.get(t, "/readyz"); code != http.StatusOK {
				t.Errorf("/readyz = %d while installed", code)
			}
			if code, _ := r.get(t, "/healthz"); code != http.StatusOK {
				t.Errorf("/healthz = %d", code)
			}
			if v := r.metric(t, "meshcni_agent_installs_total"); v != "1" {
				t.Errorf("installs = %q", v)
			}
			if v := r.metric(t, "meshcni_agent_ready"); v != "1" {
				t.Errorf("ready gauge = %q", v)
			}

			// Shutdown: not ready before anything is removed.
			var atShutdown struct {
				ready     bool
				code      int
				installed bool
			}
			r.beforeUninstall = func() {
				atShutdown.ready, _ = r.Ready()
				atShutdown.code, _ = r.get(t, "/readyz")
				atShutdown.installed = r.installed(t)
			}
			if err := r.stop(t); err != nil {
				t.Fatal(err)
			}
			if atShutdown.ready || atShutdown.code != http.StatusServiceUnavailable || !atShutdown.installed {
				t.Errorf("at shutdown: ready %v, /readyz %d, still installed %v", atShutdown.ready, atShutdown.code, atShutdown.installed)
			}
			snap(t, n.conf).diff(t, before)
			for _, p := range []string{filepath.Join(n.bin, "meshcni"), filepath.Join(n.bin, "meshcni-lookup"), kc, filepath.Join(n.run, "log.sock")} {
				if _, err := os.Lstat(p); !os.IsNotExist(err) {
					t.Errorf("%s still there: %v", p, err)
				}
			}
			if _, err := os.Stat(filepath.Join(n.bin, "bridge")); err != nil {
				t.Errorf("someone else's binary went: %v", err)
			}
		})
	}
}

func TestKeepOnExit(t *testing.T) {
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	o := n.options()
	o.KeepOnExit = true
	r := start(t, o)
	r.waitInstalled(t, 5*time.Second)
	installed := snap(t, n.conf)
	if err := r.stop(t); err != nil {
		t.Fatal(err)
	}
	snap(t, n.conf).diff(t, installed)
	for _, p := range []string{filepath.Join(n.bin, "meshcni"), filepath.Join(n.run, "kubeconfig")} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("--keep-on-exit removed %s: %v", p, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(n.run, "log.sock")); !os.IsNotExist(err) {
		t.Errorf("log socket left behind: %v", err)
	}
}

// Someone removes, reorders or edits the entry; the agent puts it back
// within a second each time.
func TestReinsert(t *testing.T) {
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	o := n.options()
	o.FightLimit = 1000 // these are not fights
	r := start(t, o)
	r.waitInstalled(t, 5*time.Second)
	path := filepath.Join(n.conf, "10-bridge.conflist")

	var entryFirst map[string]any
	_ = json.Unmarshal([]byte(bridgeList), &entryFirst)
	plugins := entryFirst["plugins"].([]any)
	var entry map[string]any
	_ = json.Unmarshal(r.entry, &entry)
	entryFirst["plugins"] = append([]any{entry}, plugins...)
	notLast, _ := json.MarshalIndent(entryFirst, "", "  ")
	var installed map[string]any
	if err := json.Unmarshal([]byte(mustRead(t, path)), &installed); err != nil {
		t.Fatal(err)
	}
	ps := installed["plugins"].([]any)
	ps[len(ps)-1].(map[string]any)["apiTimeout"] = "9s"
	edited, _ := json.MarshalIndent(installed, "", "  ")

	changes := []struct {
		name string
		do   func()
	}{
		{"entry removed", func() { replace(t, path, []byte(bridgeList)) }},
		{"entry not last", func() { replace(t, path, notLast) }},
		{"entry edited", func() { replace(t, path, edited) }},
		{"written in place", func() { writeFile(t, path, bridgeList) }},
		{"config deleted and re-created", func() {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			time.Sleep(20 * time.Millisecond)
			replace(t, path, []byte(bridgeList))
		}},
	}
	// The conf dir itself goes and comes back: the watcher follows.
	if err := os.RemoveAll(n.conf); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "not ready without a conf dir", func() bool { ready, _ := r.Ready(); return !ready })
	if err := os.MkdirAll(n.conf, 0o755); err != nil {
		t.Fatal(err)
	}
	replace(t, path, []byte(bridgeList))
	r.waitInstalled(t, time.Second)

	var worst time.Duration
	for round := range 5 {
		for _, c := range changes {
			c.do()
			d := eventually(t, time.Second, c.name+": entry back", func() bool { return r.installed(t) })
			worst = max(worst, d)
			if round == 0 {
				t.Logf("%s: back after %v", c.name, d.Round(time.Microsecond))
			}
		}
	}
	t.Logf("worst reinsert latency over %d changes: %v", 5*len(changes), worst.Round(time.Microsecond))
	// The counter moves just after the write the loop above saw.
	eventually(t, time.Second, fmt.Sprintf("%d reinserts counted", 1+5*len(changes)), func() bool {
		return r.metric(t, "meshcni_agent_reinserts_total") == fmt.Sprint(1+5*len(changes))
	})

	// The binary and the kubeconfig come back too.
	bin := filepath.Join(n.bin, "meshcni")
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "binary back", func() bool { _, err := os.Stat(bin); return err == nil })
	writeFile(t, bin, "tampered")
	eventually(t, time.Second, "binary repaired", func() bool { return mustRead(t, bin) == mustRead(t, n.src) })
	helper := filepath.Join(n.bin, "meshcni-lookup")
	if err := os.Remove(helper); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "helper back", func() bool { _, err := os.Stat(helper); return err == nil })
	kc := filepath.Join(n.run, "kubeconfig")
	if err := os.Remove(kc); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "kubeconfig back", func() bool { return kubeconfigToken(t, kc) == "token-1" })
	if ready, reason := r.Ready(); !ready {
		t.Errorf("not ready at the end: %s", reason)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return string(b)
}

// Another writer keeps reverting the conflist. Every read sees a whole
// config, the agent throttles and says who to blame, and once the writer
// stops the entry is back.
func TestFightIsThrottled(t *testing.T) {
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	o := n.options()
	// 20 rewrites within 5 s: a fight of 4 rounds a second, slow enough
	// for a loaded CI machine.
	o.FightLimit, o.FightWindow = 20, 5*time.Second
	r := start(t, o)
	r.waitInstalled(t, 5*time.Second)
	path := filepath.Join(n.conf, "10-bridge.conflist")

	var stop atomic.Bool
	var reads, writes, sawEntry atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	wg.Add(2)
	go func() { // the other writer, atomically, every 2 ms
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			tmp := filepath.Join(n.conf, fmt.Sprintf(".other-%d.tmp", i))
			if err := os.WriteFile(tmp, []byte(bridgeList), 0o644); err != nil {
				errc <- err
				return
			}
			if err := os.Rename(tmp, path); err != nil {
				errc <- err
				return
			}
			writes.Add(1)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	go func() { // the runtime, reading at any time
		defer wg.Done()
		for !stop.Load() {
			data, err := os.ReadFile(path)
			if err != nil {
				errc <- err
				return
			}
			list, err := libcni.ConfListFromBytes(data)
			if err != nil {
				errc <- fmt.Errorf("torn read: %w\n%s", err, data)
				return
			}
			if list.Plugins[len(list.Plugins)-1].Network.Type == "meshcni" {
				sawEntry.Add(1)
			}
			reads.Add(1)
		}
	}()
	// Until the agent holds off (not after a fixed time: on a loaded
	// machine the writer and the agent both run slower).
	warning := "another component keeps rewriting " + path + "; e.g. set cni.exclusive=false for Cilium"
	held := func() bool {
		_, reason := r.Ready()
		return strings.Contains(reason, "keeps rewriting") && strings.Contains(r.logs.String(), warning)
	}
	for deadline := time.Now().Add(20 * time.Second); !held() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	warned := strings.Contains(r.logs.String(), warning)
	ready, reason := r.Ready()
	stop.Store(true)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	if !warned {
		t.Fatal("no throttle warning while the fight went on")
	}
	if ready || !strings.Contains(reason, path) {
		t.Errorf("during the fight: ready %v, reason %q", ready, reason)
	}
	if v := r.metric(t, "meshcni_agent_conflicts_total"); v == "" || v == "0" {
		t.Errorf("conflicts = %q", v)
	}
	reinserts := r.metric(t, "meshcni_agent_reinserts_total")
	t.Logf("other writer: %d writes; runtime: %d reads, %d with meshcni last; agent: %s reinserts", writes.Load(), reads.Load(), sawEntry.Load(), reinserts)
	if reinserts != fmt.Sprint(o.FightLimit) {
		t.Errorf("reinserts = %s, want the limit %d within the window", reinserts, o.FightLimit)
	}
	if sawEntry.Load() == 0 {
		t.Error("the runtime never saw the entry during the fight")
	}
	// Quiet again: back once the window allows.
	d := eventually(t, o.FightWindow+time.Second, "entry back after the fight", func() bool { return r.installed(t) })
	t.Logf("entry back %v after the fight ended", d.Round(time.Millisecond))
	r.waitInstalled(t, time.Second)
}

func TestWaitsForConfig(t *testing.T) {
	n := newNode(t, nil)
	writeFile(t, filepath.Join(n.conf, "00-broken.conflist"), `{"cniVersion": "1.0.0", "name": "x", "plugins": [`)
	r := start(t, n.options())
	eventually(t, 5*time.Second, "waiting reason", func() bool {
		_, reason := r.Ready()
		return strings.Contains(reason, "waiting for the primary CNI config")
	})
	time.Sleep(200 * time.Millisecond)
	if code, body := r.get(t, "/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting") {
		t.Errorf("/readyz without a config = %d %q", code, body)
	}
	if v := r.metric(t, "meshcni_agent_ready"); v != "0" {
		t.Errorf("ready gauge = %q", v)
	}
	// Binary and kubeconfig are ready before the config.
	if _, err := os.Stat(filepath.Join(n.bin, "meshcni")); err != nil {
		t.Error(err)
	}
	replace(t, filepath.Join(n.conf, "10-bridge.conflist"), []byte(bridgeList))
	d := r.waitInstalled(t, time.Second)
	t.Logf("installed %v after the primary config appeared", d.Round(time.Microsecond))
	if mustRead(t, filepath.Join(n.conf, "00-broken.conflist")) == "" {
		t.Error("the broken file was touched")
	}
}

// A projected volume rotates the token by swapping its ..data symlink.
func TestTokenRotation(t *testing.T) {
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	sa := filepath.Join(n.root, "projected")
	projected := func(ts, token string) {
		t.Helper()
		dir := filepath.Join(sa, ts)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, "token"), token)
		writeFile(t, filepath.Join(dir, "ca.crt"), testCA)
		if err := os.Symlink(ts, filepath.Join(sa, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(sa, "..data_tmp"), filepath.Join(sa, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	projected("..2026_01_01_00_00_00.1", "token-A")
	for _, f := range []string{"token", "ca.crt"} {
		if err := os.Symlink(filepath.Join("..data", f), filepath.Join(sa, f)); err != nil {
			t.Fatal(err)
		}
	}
	o := n.options()
	o.TokenPath, o.CAPath = filepath.Join(sa, "token"), filepath.Join(sa, "ca.crt")
	r := start(t, o)
	r.waitInstalled(t, 5*time.Second)
	kc := filepath.Join(n.run, "kubeconfig")
	if tok := kubeconfigToken(t, kc); tok != "token-A" {
		t.Fatalf("token = %q", tok)
	}
	for i, tok := range []string{"token-B", "token-C"} {
		projected(fmt.Sprintf("..2026_01_01_01_00_00.%d", i), tok)
		d := eventually(t, time.Second, "kubeconfig carries "+tok, func() bool { return kubeconfigToken(t, kc) == tok })
		t.Logf("kubeconfig rewritten %v after rotation to %s", d.Round(time.Microsecond), tok)
	}
	if fi, err := os.Stat(kc); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig mode: %v %v", fi, err)
	}
	eventually(t, time.Second, "3 kubeconfig writes counted", func() bool {
		return r.metric(t, "meshcni_agent_kubeconfig_writes_total") == "3"
	})
	if ready, _ := r.Ready(); !ready {
		t.Error("not ready after rotation")
	}
}

func TestMissingTokenIsNotReady(t *testing.T) {
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	tok := filepath.Join(n.tokenDir, "token")
	if err := os.Remove(tok); err != nil {
		t.Fatal(err)
	}
	r := start(t, n.options())
	eventually(t, 5*time.Second, "not ready naming the token", func() bool {
		_, reason := r.Ready()
		return strings.Contains(reason, "token")
	})
	if _, err := os.Stat(filepath.Join(n.conf, "10-bridge.conflist")); err != nil {
		t.Fatal(err)
	}
	if r.installed(t) {
		t.Error("entry installed without a kubeconfig")
	}
	writeFile(t, tok, "late-token")
	r.waitInstalled(t, 2*time.Second)
}

func TestLogSocket(t *testing.T) {
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	r := start(t, n.options())
	r.waitInstalled(t, 5*time.Second)
	lines := []string{
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"ADD","plugin":"meshcni","container":"abc","netns":"/var/run/netns/x","duration":"3ms","pod":"bookinfo/productpage","decision":"captured","reason":"istio-proxy sidecar","mode":"REDIRECT","ipv6":false}`,
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"ADD","plugin":"meshcni","pod":"kube-system/coredns","decision":"skipped","reason":"namespace kube-system is excluded"}`,
		`{"time":"2026-01-01T00:00:00Z","level":"ERROR","msg":"ADD failed","plugin":"meshcni","pod":"bookinfo/reviews","decision":"error","error":"pod not found"}`,
		`{"time":"2026-01-01T00:00:00Z","level":"INFO","msg":"CHECK","plugin":"meshcni","pod":"bookinfo/productpage","decision":"captured"}`,
		`not json`,
	}
	for _, batch := range [][]string{lines[:2], lines[2:]} { // one connection per invocation
		c, err := net.Dial("unix", filepath.Join(n.run, "log.sock"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, strings.Join(batch, "\n")+"\n"); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	// The two connections are served concurrently: wait for every line,
	// not the last one sent.
	relogged := map[string]map[string]any{} // by msg and pod
	eventually(t, 5*time.Second, "all lines re-logged", func() bool {
		relogged = map[string]map[string]any{}
		for _, l := range strings.Split(r.logs.String(), "\n") {
			var rec map[string]any
			if json.Unmarshal([]byte(l), &rec) == nil && rec["source"] == "plugin" {
				relogged[fmt.Sprint(rec["msg"], " ", rec["pod"])] = rec
			}
		}
		return len(relogged) >= 4 && strings.Contains(r.logs.String(), `"line":"not json"`)
	})
	if len(relogged) != 4 {
		t.Fatalf("re-logged %d lines, want 4:\n%s", len(relogged), r.logs)
	}
	add := relogged["ADD bookinfo/productpage"]
	if add["level"] != "INFO" || add["decision"] != "captured" || add["duration"] != "3ms" || add["container"] != "abc" {
		t.Errorf("ADD line re-logged as %v", add)
	}
	if failed := relogged["ADD failed bookinfo/reviews"]; failed["level"] != "ERROR" || failed["error"] != "pod not found" {
		t.Errorf("error line re-logged as %v", failed)
	}
	for series, want := range map[string]string{
		`meshcni_plugin_results_total{command="ADD",decision="captured"}`:   "1",
		`meshcni_plugin_results_total{command="ADD",decision="skipped"}`:    "1",
		`meshcni_plugin_results_total{command="ADD",decision="error"}`:      "1",
		`meshcni_plugin_results_total{command="CHECK",decision="captured"}`: "1",
	} {
		if got := r.metric(t, series); got != want {
			t.Errorf("%s = %q, want %s", series, got, want)
		}
	}
}

// A socket file left by a killed agent is replaced; anything else in the
// way is an error that names it.
func TestStaleSocket(t *testing.T) {
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	if err := os.MkdirAll(n.run, 0o755); err != nil {
		t.Fatal(err)
	}
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(n.run, "log.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()
	r := start(t, n.options())
	r.waitInstalled(t, 5*time.Second)
	c, err := net.Dial("unix", filepath.Join(n.run, "log.sock"))
	if err != nil {
		t.Fatalf("the new socket does not answer: %v", err)
	}
	c.Close()

	n2 := newNode(t, nil)
	if err := os.MkdirAll(n2.run, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(n2.run, "log.sock"), "")
	a, err := New(n2.options(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Run(context.Background()); err == nil || !strings.Contains(err.Error(), "log.sock") {
		t.Errorf("Run with a file in the socket's place = %v", err)
	}
}

// Another meshcni agent (another entry) fights this one until the agent
// throttles; then the other uninstalls, removing the meshcni entry. The
// entry must be back at once, not when the fight window ends (before:
// the node ran without meshcni for the rest of the window, 16.6 s in the
// review).
func TestFightEndsWhenTheOtherWriterUninstalls(t *testing.T) {
	n := newNode(t, map[string]string{"10-bridge.conflist": bridgeList})
	o := n.options()
	o.FightLimit, o.FightWindow = 5, time.Minute
	r := start(t, o)
	r.waitInstalled(t, 5*time.Second)
	path := filepath.Join(n.conf, "10-bridge.conflist")

	// The other agent's config: the bridge list with its own meshcni entry.
	var list map[string]any
	if err := json.Unmarshal([]byte(bridgeList), &list); err != nil {
		t.Fatal(err)
	}
	other := map[string]any{"type": "meshcni", "kubeconfig": "/other/kubeconfig"}
	list["plugins"] = append(list["plugins"].([]any), other)
	theirs, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	// It reverts every write of this agent's, until the throttle holds.
	eventually(t, 10*time.Second, "the fight to be throttled", func() bool {
		if _, reason := r.Ready(); strings.Contains(reason, "keeps rewriting") {
			return true
		}
		if r.installed(t) {
			replace(t, path, theirs)
		}
		return false
	})
	replace(t, path, theirs)
	time.Sleep(100 * time.Millisecond)
	if r.installed(t) {
		t.Fatal("the fight is not held off: the entry is back within 100 ms")
	}
	// The other agent uninstalls: its entry goes, none is left.
	replace(t, path, []byte(bridgeList))
	d := r.waitInstalled(t, 2*time.Second)
	t.Logf("entry back %v after the other writer uninstalled (window %v)", d.Round(time.Millisecond), o.FightWindow)
}
