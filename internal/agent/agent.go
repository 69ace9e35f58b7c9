// Package agent is meshcni's node agent: it installs the plug-in binary,
// its kubeconfig and its entry in the node's CNI config, keeps them in
// place with a reconcile loop driven by file events, serves health,
// readiness and metrics, re-logs the plug-in's decisions, and undoes the
// install on shutdown.
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/client-go/kubernetes"

	"github.com/meshcni/meshcni/internal/apilookup"
	"github.com/meshcni/meshcni/internal/install"
)

// Agent is one node agent. Run it once.
type Agent struct {
	opts    Options
	log     *slog.Logger
	entry   json.RawMessage
	api     apiTarget
	metrics *metrics

	healthLimits healthLimits
	tokenRefresh time.Duration // test hook: mint the plug-in's token this often

	mu       sync.Mutex
	ready    bool   // the install is in place and watched
	reason   string // why not
	taint    string // non-empty: the startup taint is not lifted yet, and why
	stopping bool
	health   net.Addr
	client   kubernetes.Interface // the agent's API client, once built
	// settled: the node's own settings (BackendLabel) are read and in
	// entry; always true without --node-name. kick wakes the loop when
	// they change the entry.
	settled bool
	kick    chan struct{}

	// Loop state, touched only by the reconcile loop.
	installed bool        // the entry was in place after a round
	wrote     []byte      // the entry the loop last put in place
	binDirty  bool        // the installed binary may differ from --plugin-binary
	noHelper  bool        // "no API lookup helper" was logged
	fights    []time.Time // rewrites of the entry within the fight window
	warnedAt  time.Time   // last fight warning
	lastErr   string      // last error logged, so a retry loop logs it once
	waiting   bool        // "waiting for a CNI config" was logged
	linked    []string    // dirs of symlinked configs' targets, watched too
	held      string      // snapshot of the config a throttled fight holds off on

	beforeUninstall func() // test hook: shutdown has begun, nothing removed yet
	afterCheck      func() // test hook: a round has read the config, nothing written yet
}

// New checks opts and resolves the API server the plug-in will use.
func New(opts Options, log *slog.Logger) (*Agent, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.FightLimit <= 0 {
		opts.FightLimit = DefaultFightLimit
	}
	if opts.FightWindow <= 0 {
		opts.FightWindow = DefaultFightWindow
	}
	if opts.Resync <= 0 {
		opts.Resync = DefaultResync
	}
	for _, p := range []*string{&opts.CNIConfDir, &opts.CNIBinDir, &opts.RunDir, &opts.TokenPath} {
		*p = filepath.Clean(*p)
	}
	entry, err := opts.Entry()
	if err != nil {
		return nil, err
	}
	api, err := resolveAPI(&opts, os.Getenv)
	if err != nil {
		return nil, err
	}
	a := &Agent{opts: opts, log: log, entry: entry, api: api, metrics: newMetrics(), reason: "starting",
		healthLimits: defaultHealthLimits,
		settled:      opts.NodeName == "", kick: make(chan struct{}, 1)}
	if opts.NodeName != "" && opts.StartupTaint {
		a.taint = "removing the startup taint " + StartupTaint.Key
	}
	a.metrics.ready.Set(0)
	return a, nil
}

// Ready reports whether the entry, binary and kubeconfig are installed and
// watched and the startup taint (if managed) is lifted, and if not, why.
func (a *Agent) Ready() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readyLocked()
}

func (a *Agent) readyLocked() (bool, string) {
	switch {
	case !a.ready:
		return false, a.reason
	case a.taint != "":
		return false, a.taint
	}
	return true, ""
}

// installReady reports whether the install alone is ready: the moment to
// lift the startup taint.
func (a *Agent) installReady() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ready
}

// setTaintPending records why the startup taint is still on the node
// ("" once lifted).
func (a *Agent) setTaintPending(why string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.taint = why
	a.setGaugeLocked()
}

func (a *Agent) setGaugeLocked() {
	if ready, _ := a.readyLocked(); ready {
		a.metrics.ready.Set(1)
	} else {
		a.metrics.ready.Set(0)
	}
}

// HealthAddr is the health server's address once Run listens (nil before,
// or without --health-addr).
func (a *Agent) HealthAddr() net.Addr {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.health
}

func (a *Agent) setReady(ready bool, reason string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopping {
		ready, reason = false, "shutting down"
	}
	a.ready, a.reason = ready, reason
	a.setGaugeLocked()
}

// beginShutdown makes the agent not ready for good.
func (a *Agent) beginShutdown() {
	a.mu.Lock()
	a.stopping = true
	a.mu.Unlock()
	a.setReady(false, "")
}

// Run installs and keeps meshcni installed until ctx ends, then (unless
// KeepOnExit) uninstalls it. It returns an error only when it cannot start
// or the uninstall fails.
func (a *Agent) Run(ctx context.Context) error {
	o := &a.opts
	if err := a.secureRunDir(); err != nil {
		return err
	}
	for _, dir := range []string{o.CNIConfDir, o.CNIBinDir, o.RunDir} {
		if gone, err := install.RemoveTemp(dir); err != nil {
			a.log.Warn("could not remove temp files a killed write left", "dir", dir, "error", err)
		} else if len(gone) > 0 {
			a.log.Info("removed temp files a killed write left", "files", gone)
		}
	}
	sock, err := listenLog(o.SocketPath())
	if err != nil {
		return err
	}
	logDone := make(chan struct{})
	go func() { defer close(logDone); a.serveLog(sock.l) }()
	defer func() { sock.close(); <-logDone }()

	healthCtx, stopHealth := context.WithCancel(context.Background())
	defer stopHealth()
	if o.HealthAddr != "" {
		addr, done, err := a.serveHealth(healthCtx, o.HealthAddr)
		if err != nil {
			return err
		}
		defer func() { stopHealth(); <-done }()
		a.mu.Lock()
		a.health = addr
		a.mu.Unlock()
	}

	a.log.Info("meshcni agent starting", "conf_dir", o.CNIConfDir, "bin_dir", o.CNIBinDir, "run_dir", o.RunDir,
		"api_server", a.api.server, "token", o.TokenPath, "agent_token", o.agentTokenPath(), "entry", string(a.entry))
	stop := context.AfterFunc(ctx, a.beginShutdown) // not ready from the first moment
	defer stop()
	if o.NodeName != "" {
		nodeCtx, stopNode := context.WithCancel(ctx)
		nodeDone := make(chan struct{})
		go func() { defer close(nodeDone); a.runNode(nodeCtx) }()
		defer func() { stopNode(); <-nodeDone }()
	}
	a.loop(ctx)
	a.beginShutdown()
	if a.beforeUninstall != nil {
		a.beforeUninstall()
	}

	if o.KeepOnExit {
		a.log.Info("shutting down; keeping the entry, binary and kubeconfig (--keep-on-exit)")
		return nil
	}
	if o.NodeName != "" {
		// With a node identity, uninstall only when the API confirms
		// meshcni is being removed: a stop for any other reason (an
		// upgrade, an eviction, the API unreachable) keeps the plug-in in
		// the chain, so that no mesh pod starts uncaptured until the next
		// agent runs.
		cs := a.nodeClient()
		if cs == nil {
			a.log.Warn("shutting down without an API client; keeping the install (cannot confirm an uninstall)")
			return nil
		}
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		gone, why := a.uninstallConfirmed(uctx, cs)
		cancel()
		if !gone {
			a.log.Info("shutting down; keeping the install for the next agent", "why", why)
			return nil
		}
		a.log.Info("shutting down for good; uninstalling", "why", why)
	}
	uninstallErr := install.Uninstall(o.CNIConfDir, o.InstalledBinary(), o.InstalledHelper(), o.KubeconfigPath())
	if cs := a.nodeClient(); cs != nil && o.StartupTaint {
		// meshcni is going away for good: nothing will lift the taint
		// after this agent, so it must not stay (a node that never got
		// ready still carries its registration's).
		tctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := a.retryTaint(tctx, cs); err != nil {
			a.log.Error("could not remove the startup taint after uninstalling; remove it by hand",
				"node", o.NodeName, "taint", StartupTaint.Key, "error", err)
		}
		cancel()
	}
	if err := uninstallErr; err != nil {
		a.log.Error("uninstall incomplete", "error", err)
		return fmt.Errorf("uninstall: %w", err)
	}
	a.log.Info("shut down; removed the meshcni entry, binaries and kubeconfig", "conf_dir", o.CNIConfDir)
	return nil
}

// loop is the reconciler: converge, then sleep until something relevant
// changes, a retry is due, or the resync period ends, and converge again.
// Events that arrive while a round works wake the next one.
//
// Istio re-creates its watcher every round. Creating and closing an
// inotify instance costs about 10 ms here (the kernel waits for a grace
// period), which adds up when another writer fights over the config, so
// the watcher is kept and only re-created after it reports an error, when
// a watched directory goes away, and at every resync, which still picks up
// re-created directories.
func (a *Agent) loop(ctx context.Context) {
	var w *fsnotify.Watcher
	defer func() {
		if w != nil {
			_ = w.Close()
		}
	}()
	for ctx.Err() == nil {
		var watchErr error
		if w == nil {
			w, watchErr = a.watch()
			a.binDirty = true // events may have been missed
		}
		retry := a.reconcile()
		if watchErr != nil {
			a.logOnce(slog.LevelWarn, "cannot watch every path; polling every second", watchErr)
			if retry <= 0 || retry > time.Second {
				retry = time.Second
			}
		}
		if rebuild := a.wait(ctx, w, retry); (rebuild || watchErr != nil) && w != nil {
			_ = w.Close()
			w = nil
		}
	}
}

// watchedDirs are the conf dir, the bin dir, the run dir, the token's
// directory (a projected volume swaps its ..data symlink there) and the
// directories of symlinked configs' targets as watch last found them.
func (a *Agent) watchedDirs() []string {
	return append([]string{a.opts.CNIConfDir, a.opts.CNIBinDir, a.opts.RunDir, filepath.Dir(a.opts.TokenPath)}, a.linked...)
}

// watch returns a watcher on watchedDirs, even when some could not be
// added (nil only if inotify itself fails).
func (a *Agent) watch() (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("file watcher: %w", err)
	}
	var errs []error
	for _, dir := range []string{a.opts.CNIConfDir, a.opts.CNIBinDir, a.opts.RunDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			errs = append(errs, err)
		}
	}
	// A primary config linked in from elsewhere is rewritten there: the
	// conf dir sees nothing, and its entry would be missing until the
	// resync.
	a.linked = install.LinkedConfigDirs(a.opts.CNIConfDir)
	for _, dir := range a.watchedDirs() {
		if err := w.Add(dir); err != nil {
			errs = append(errs, fmt.Errorf("watch %s: %w", dir, err))
		}
	}
	return w, errors.Join(errs...)
}

// relevant filters the watcher's events down to the files the agent owns
// or reads.
func (a *Agent) relevant(ev fsnotify.Event) bool {
	dir, base := filepath.Dir(ev.Name), filepath.Base(ev.Name)
	switch dir {
	case filepath.Dir(a.opts.TokenPath):
		return true
	case a.opts.CNIConfDir:
		switch filepath.Ext(base) {
		case ".conf", ".conflist", ".json":
			return true
		}
	case a.opts.CNIBinDir:
		return base == filepath.Base(a.opts.PluginBinary) || base == apilookup.HelperName
	case a.opts.RunDir:
		return base == filepath.Base(a.opts.KubeconfigPath())
	}
	return slices.Contains(a.linked, dir)
}

// lostDir reports whether ev removed or moved a watched directory itself.
func (a *Agent) lostDir(ev fsnotify.Event) bool {
	if !ev.Has(fsnotify.Remove) && !ev.Has(fsnotify.Rename) {
		return false
	}
	for _, d := range a.watchedDirs() {
		if ev.Name == d {
			return true
		}
	}
	return false
}

// wait sleeps until a relevant event, the retry, or the resync, and says
// whether the watcher must be re-created.
func (a *Agent) wait(ctx context.Context, w *fsnotify.Watcher, retry time.Duration) (rebuild bool) {
	resync := retry <= 0 || retry >= a.opts.Resync
	if resync {
		retry = a.opts.Resync
	}
	t := time.NewTimer(retry)
	defer t.Stop()
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w != nil {
		events, errs = w.Events, w.Errors
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-a.kick:
			return false
		case <-t.C:
			if resync {
				a.binDirty = true
			}
			return resync
		case ev, ok := <-events:
			if !ok {
				return true
			}
			if a.lostDir(ev) {
				a.log.Info("a watched directory went away; watching again", "dir", ev.Name)
				return true
			}
			if a.relevant(ev) {
				a.log.Debug("change", "file", ev.Name, "op", ev.Op.String())
				if filepath.Dir(ev.Name) == a.opts.CNIBinDir {
					a.binDirty = true
				}
				// A config link made or repointed: watch its target's dir.
				return filepath.Dir(ev.Name) == a.opts.CNIConfDir && !slices.Equal(install.LinkedConfigDirs(a.opts.CNIConfDir), a.linked)
			}
		case err, ok := <-errs:
			if ok {
				a.log.Warn("file watcher error; checking everything", "error", err)
			}
			return true
		}
	}
}

// reconcile converges the binary, the kubeconfig and the entry, in that
// order: the entry must never name a missing binary or kubeconfig. It
// returns when to retry (0: on the next event).
func (a *Agent) reconcile() time.Duration {
	if err := a.installBinary(); err != nil {
		return a.fail(err)
	}
	if err := a.writeKubeconfig(); err != nil {
		return a.fail(err)
	}
	return a.ensureEntry()
}

func (a *Agent) fail(err error) time.Duration {
	a.setReady(false, err.Error())
	a.logOnce(slog.LevelError, "not installed; retrying every second", err)
	return time.Second
}

// logOnce logs err unless it is the one logged last.
func (a *Agent) logOnce(level slog.Level, msg string, err error) {
	if err.Error() == a.lastErr {
		return
	}
	a.lastErr = err.Error()
	a.log.Log(context.Background(), level, msg, "error", err)
}

// installBinary compares the installed binaries with --plugin-binary and
// its API lookup helper byte for byte and replaces those that differ.
// That reads the files, so it runs only when an event in the bin dir (or
// a new watcher, or a resync) says a binary may have changed. The helper
// goes first: a new plug-in must never run without the helper it execs.
// Without a helper beside --plugin-binary the plug-in is still installed:
// pods the agent's cache answers start, and the others fail their ADD
// with an error that names the missing file, as they must.
func (a *Agent) installBinary() error {
	if !a.binDirty {
		return nil
	}
	if _, err := os.Stat(a.opts.HelperBinary()); err == nil {
		changed, err := install.InstallBinary(a.opts.HelperBinary(), a.opts.CNIBinDir)
		if err != nil {
			return fmt.Errorf("API lookup helper (beside --plugin-binary): %w", err)
		}
		if changed {
			a.log.Info("installed the plug-in's API lookup helper", "path", a.opts.InstalledHelper())
		}
	} else if !a.noHelper {
		a.noHelper = true
		a.log.Warn("no API lookup helper beside the plug-in binary; pods the agent's cache cannot answer will fail to start",
			"missing", a.opts.HelperBinary())
	}
	changed, err := install.InstallBinary(a.opts.PluginBinary, a.opts.CNIBinDir)
	if err != nil {
		return fmt.Errorf("plug-in binary (--plugin-binary): %w", err)
	}
	a.binDirty = false
	if changed {
		a.log.Info("installed the plug-in binary", "path", a.opts.InstalledBinary())
	}
	return nil
}

func (a *Agent) writeKubeconfig() error {
	tok, err := readToken(a.opts.TokenPath)
	if err != nil {
		return err
	}
	ca, err := a.api.caData()
	if err != nil {
		return err
	}
	changed, err := install.WriteKubeconfig(a.opts.KubeconfigPath(), a.api.server, ca, tok)
	if err != nil {
		return fmt.Errorf("plug-in kubeconfig: %w", err)
	}
	if changed {
		a.metrics.kubeconfig.Inc()
		a.log.Info("wrote the plug-in's kubeconfig", "path", a.opts.KubeconfigPath(), "server", a.api.server)
	}
	return nil
}

// ensureEntry makes the meshcni entry the last plugin of the primary
// config, unless a fight is being throttled.
//
// The round works on one snapshot of the entry and of whether the node's
// settings are read: settle may change both at any moment from the node
// goroutine, and a round that checked one entry but recorded another
// would count its own next update as a fight (or be ready with the
// flags' entry still in place).
func (a *Agent) ensureEntry() time.Duration {
	dir := a.opts.CNIConfDir
	entry, settled := a.currentEntry()
	st, err := install.Check(dir, entry)
	if a.afterCheck != nil {
		a.afterCheck()
	}
	switch {
	case errors.Is(err, install.ErrNoConfig):
		return a.noConfig(err)
	case err != nil:
		return a.fail(fmt.Errorf("check %s: %w", dir, err))
	case st.Installed():
		a.done(st.Path, entry, settled)
		return 0
	}

	// The agent's own change of the entry (the node's settings, read
	// after the first install) is no fight with another writer.
	ours := a.installed && !bytes.Equal(entry, a.wrote)
	if wait := a.throttle(time.Now(), st.Path); wait > 0 && !ours {
		// Hold off only while the config stays as the other writer left
		// it. A change while the agent writes nothing is no revert of the
		// agent's write: the other writer gave up or uninstalled (another
		// agent removing its meshcni entry, the primary CNI going away),
		// and waiting out the window would leave the node without
		// meshcni for up to FightWindow.
		snap := configSnapshot(st.Path)
		if a.held == "" || a.held == snap {
			a.held = snap
			return wait
		}
		a.log.Info("the CNI config changed while the fight was held off; putting the meshcni entry back at once", "file", st.Path)
	}
	a.held = ""
	res, err := install.Insert(dir, entry)
	switch {
	case errors.Is(err, install.ErrNoConfig):
		return a.noConfig(err)
	case errors.Is(err, install.ErrRaced):
		a.setReady(false, "the CNI config keeps changing")
		return 10 * time.Millisecond
	case err != nil:
		return a.fail(fmt.Errorf("insert the meshcni entry: %w", err))
	}
	if res.Changed {
		what := "missing"
		switch {
		case st.Path != res.Path && st.Path != res.Wrapped:
			what = "new primary config"
		case st.Present && !st.Last:
			what = "not last"
		case st.Present:
			what = "differs"
		}
		switch {
		case ours:
			a.log.Info("updated the meshcni entry to this node's settings", "file", res.Path, "entry", string(entry))
		case a.installed:
			a.fights = append(a.fights, time.Now())
			a.metrics.reinserts.Inc()
			a.log.Info("put the meshcni entry back", "file", res.Path, "was", what)
		default:
			a.metrics.installs.Inc()
			a.log.Info("installed the meshcni entry", "file", res.Path, "wrapped", res.Wrapped)
		}
	}
	a.done(res.Path, entry, settled)
	return 0
}

// done records that entry is in place in path; settled is whether it
// holds the node's own settings (both as the round read them).
func (a *Agent) done(path string, entry json.RawMessage, settled bool) {
	if !a.installed || a.waiting {
		a.log.Info("meshcni is installed; watching", "file", path)
	}
	a.installed, a.waiting, a.lastErr, a.held = true, false, "", ""
	a.wrote = entry
	if !settled {
		// Installed with the flags' settings, so that no mesh pod starts
		// uncaptured meanwhile; ready (and the startup taint lifted) once
		// the entry holds the node's own.
		a.setReady(false, "reading this node's settings (label "+BackendLabel+")")
		return
	}
	a.setReady(true, "")
}

// currentEntry is the entry to install (the flags', with the node's
// settings once read) and whether those settings are read, read together.
func (a *Agent) currentEntry() (json.RawMessage, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.entry, a.settled
}

// settle records that the node's settings are read, with the entry they
// make (nil: the flags' entry stands), and wakes the loop to install it.
func (a *Agent) settle(entry json.RawMessage) {
	a.mu.Lock()
	if entry != nil {
		a.entry = entry
	}
	a.settled = true
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

func (a *Agent) noConfig(err error) time.Duration {
	a.setReady(false, "waiting for the primary CNI config in "+a.opts.CNIConfDir)
	if !a.waiting {
		a.log.Info("waiting for the primary CNI to write its config", "dir", a.opts.CNIConfDir, "reason", err.Error())
		a.waiting = true
	}
	return 0
}

// configSnapshot is the primary config's path and content, to tell whether it
// changed while a fight is held off.
func configSnapshot(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return path + "\x00" + err.Error()
	}
	return path + "\x00" + string(b)
}

// throttle returns how long to hold off a rewrite of file: zero unless the
// entry was rewritten FightLimit times within FightWindow. The first
// install is no fight. It warns at most once per window.
func (a *Agent) throttle(now time.Time, file string) time.Duration {
	if !a.installed {
		return 0
	}
	recent := a.fights[:0]
	for _, t := range a.fights {
		if now.Sub(t) < a.opts.FightWindow {
			recent = append(recent, t)
		}
	}
	a.fights = recent
	if len(recent) < a.opts.FightLimit {
		return 0
	}
	wait := recent[0].Add(a.opts.FightWindow).Sub(now)
	if now.Sub(a.warnedAt) >= a.opts.FightWindow {
		a.warnedAt = now
		a.metrics.conflicts.Inc()
		a.log.Warn(fmt.Sprintf("another component keeps rewriting %s; e.g. set cni.exclusive=false for Cilium", file),
			"file", file, "rewrites", len(recent), "window", a.opts.FightWindow.String(), "next_attempt_in", wait.Round(time.Millisecond).String())
	}
	a.setReady(false, "another component keeps rewriting "+file)
	return wait
}
