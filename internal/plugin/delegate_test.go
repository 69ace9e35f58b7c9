package plugin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	corev1 "k8s.io/api/core/v1"
	"golang.org/x/sys/unix"

	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/podcache"
	"github.com/meshcni/meshcni/internal/podspec"
)

// fakeAgent is the agent's socket: a pod cache that also takes ADDs.
type fakeAgent struct {
	fakeCache
	res   *podcache.AddResult
	err   error
	adds  int
	req   *podcache.AddRequest
	fdIno uint64
}

func (f *fakeAgent) Add(_ context.Context, req *podcache.AddRequest, fd int) (*podcache.AddResult, error) {
	f.adds++
	f.req = req
	var st unix.Stat_t
	if unix.Fstat(fd, &st) == nil {
		f.fdIno = st.Ino
	}
	return f.res, f.err
}

const delegateConf = cacheConf + `,"delegate_add":true`

// delegated returns a harness whose agent answers res/err, and args for
// a mesh pod whose "netns" is a plain file (the fake agent only checks
// that it got it).
func delegated(t *testing.T, res *podcache.AddResult, err error) (*harness, *fakeAgent, string) {
	h := newHarness(meshPod("bookinfo", "reviews"))
	a := &fakeAgent{fakeCache: fakeCache{pods: map[string]*corev1.Pod{"bookinfo/reviews": meshPod("bookinfo", "reviews")}}, res: res, err: err}
	h.p.Cache = func(string) PodCache { return a }
	ns := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(ns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return h, a, ns
}

func inode(t *testing.T, path string) uint64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// When the agent runs the ADD, the plug-in sends it the netns itself and
// its invocation, prints prevResult, and does nothing else: no lookup, no
// rules, no log line of its own (the agent logs the decision).
func TestDelegatedADD(t *testing.T) {
	h, a, ns := delegated(t, &podcache.AddResult{Done: true}, nil)
	args := cmdArgs("bookinfo", "reviews", "uid-reviews", netconf("1.0.0", delegateConf, false))
	args.Netns = ns
	out, err := h.add(t, args)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if !bytes.Contains(out, []byte(`"10.22.0.5/16"`)) {
		t.Errorf("prevResult not passed through: %s", out)
	}
	if a.adds != 1 || a.calls != 0 || h.pods.calls != 0 {
		t.Fatalf("agent ADDs %d, cache lookups %d, API lookups %d; want 1, 0, 0", a.adds, a.calls, h.pods.calls)
	}
	if a.fdIno != inode(t, ns) {
		t.Errorf("the agent got another file than the netns")
	}
	if a.req.Netns != ns || a.req.Args != args.Args || a.req.ContainerID != args.ContainerID || !bytes.Equal(a.req.Config, args.StdinData) {
		t.Errorf("the request does not carry the invocation: %+v", a.req)
	}
	if _, ok := h.rules.Spec(ns); ok {
		t.Errorf("the plug-in programmed the netns too")
	}
	if h.log.Len() != 0 {
		t.Errorf("the plug-in logged: %s", h.log)
	}
}

// The agent's CNI error is the ADD's.
func TestDelegatedADDFails(t *testing.T) {
	want := types.NewError(types.ErrInvalidNetworkConfig, "meshcni: pod bookinfo/reviews: bad port", "")
	h, _, ns := delegated(t, &podcache.AddResult{Done: true, Error: want}, nil)
	args := cmdArgs("bookinfo", "reviews", "uid-reviews", netconf("1.0.0", delegateConf, false))
	args.Netns = ns
	_, err := h.add(t, args)
	var te *types.Error
	if !errors.As(err, &te) || te.Code != want.Code || te.Msg != want.Msg {
		t.Fatalf("err = %v, want %v", err, want)
	}
	if _, ok := h.rules.Spec(ns); ok {
		t.Errorf("the plug-in programmed the netns after the agent failed")
	}
}

// When the agent does not run the ADD, the plug-in does, and the API
// decides unless the agent is too old to take ADDs (then its cache may
// still answer).
func TestDelegationFallsBack(t *testing.T) {
	for _, tc := range []struct {
		name       string
		res        *podcache.AddResult
		err        error
		cacheAsked int
		source     string
		miss       string
	}{
		{"watch misses", &podcache.AddResult{Miss: "pod cache: the agent's watch has not synced yet"}, nil, 0, "api", "not synced"},
		{"agent down", nil, errors.New("dial unix /run/meshcni/pods.sock: connect: no such file or directory"), 0, "api", "no such file"},
		{"agent too old", nil, fmt.Errorf("%w (400 Bad Request)", podcache.ErrAddUnsupported), 1, "cache", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, a, ns := delegated(t, tc.res, tc.err)
			args := cmdArgs("bookinfo", "reviews", "uid-reviews", netconf("1.0.0", delegateConf, false))
			args.Netns = ns
			if _, err := h.add(t, args); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if _, ok := h.rules.Spec(ns); !ok {
				t.Fatalf("the plug-in did not program the netns itself")
			}
			if a.adds != 1 || a.calls != tc.cacheAsked {
				t.Errorf("agent ADDs %d, cache lookups %d; want 1, %d", a.adds, a.calls, tc.cacheAsked)
			}
			d := h.decision(t)
			miss, _ := d["cache_miss"].(string)
			if d["pod_source"] != tc.source || !strings.Contains(miss, tc.miss) || (tc.miss == "") != (miss == "") {
				t.Errorf("decision line %v; want pod_source %s, cache_miss with %q", d, tc.source, tc.miss)
			}
		})
	}
}

// Without delegate_add, or for what needs no pod, the agent is not asked.
func TestNotDelegated(t *testing.T) {
	for _, tc := range []struct{ name, ns, conf string }{
		{"no delegate_add", "bookinfo", cacheConf},
		{"excluded namespace", "kube-system", delegateConf},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, a, ns := delegated(t, &podcache.AddResult{Done: true}, nil)
			args := cmdArgs(tc.ns, "reviews", "uid-reviews", netconf("1.0.0", tc.conf, false))
			args.Netns = ns
			if _, err := h.add(t, args); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if a.adds != 0 {
				t.Errorf("the agent was handed the ADD")
			}
		})
	}
}

func TestDelegateAddNeedsSocket(t *testing.T) {
	if _, err := parseConfig(netconf("1.0.0", `,"delegate_add":true`, false)); err == nil || !strings.Contains(err.Error(), "pod_cache_socket") {
		t.Fatalf("err = %v, want one naming pod_cache_socket", err)
	}
}

// fakeStore is the agent's watch.
type fakeStore map[string]*podspec.Pod

func (s fakeStore) Pod(ns, name string) *podspec.Pod { return s[ns+"/"+name] }
func (s fakeStore) Synced() bool                     { return true }

// InAgent runs the plug-in's ADD on the netns it was handed, with the
// pod from its watch, logs the decision, and reports a miss instead of
// asking the API.
func TestInAgent(t *testing.T) {
	pod, err := podspec.Of(meshPod("bookinfo", "reviews"))
	if err != nil {
		t.Fatal(err)
	}
	bad, err := podspec.Of(meshPod("bookinfo", "bad", func(p *corev1.Pod) { p.Annotations["traffic.sidecar.istio.io/includeInboundPorts"] = "80,x" }))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, pod, uid string
		done, captured bool
		miss, errHas   string
	}{
		{"captured", "reviews", "uid-reviews", true, true, "", ""},
		{"not in the watch", "ratings", "uid-ratings", false, false, "not on this node", ""},
		{"another UID", "reviews", "uid-new", false, false, "another pod", ""},
		{"bad annotation", "bad", "uid-bad", true, false, "", "correct it in the pod's spec"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules := netfilter.NewFake()
			var log bytes.Buffer
			a := NewInAgent(InAgent{Pods: fakeStore{"bookinfo/reviews": pod, "bookinfo/bad": bad}, Wait: -1, Rules: rules,
				Log: slog.New(slog.NewJSONHandler(&log, nil)).With("ran_in", "agent")})
			f, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Dup(int(f.Fd()))
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			args := cmdArgs("bookinfo", tc.pod, tc.uid, netconf("1.0.0", delegateConf, false))
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res := a.Add(ctx, &podcache.AddRequest{ContainerID: args.ContainerID, Netns: args.Netns, IfName: "eth0", Args: args.Args, Config: args.StdinData}, fd)
			if unix.FcntlFlock(uintptr(fd), unix.F_GETLK, &unix.Flock_t{}) != unix.EBADF {
				t.Errorf("the netns descriptor was not closed")
			}
			if res.Done != tc.done || !strings.Contains(res.Miss, tc.miss) || (tc.miss == "") != (res.Miss == "") {
				t.Fatalf("result %+v; want done=%v, miss with %q", res, tc.done, tc.miss)
			}
			held := fmt.Sprintf("/proc/self/fd/%d", fd)
			_, captured := rules.Spec(held)
			if captured != tc.captured {
				t.Errorf("programmed %s: %v, want %v", held, captured, tc.captured)
			}
			if tc.errHas != "" && (res.Error == nil || !strings.Contains(res.Error.Msg, tc.errHas)) {
				t.Errorf("error %v, want one with %q", res.Error, tc.errHas)
			}
			switch {
			case tc.done && (!strings.Contains(log.String(), `"ran_in":"agent"`) || !strings.Contains(log.String(), `"netns":"`+args.Netns+`"`)):
				t.Errorf("decision line %s: want it logged with the runtime's netns path", log.String())
			case !tc.done && log.Len() != 0:
				t.Errorf("a miss logged a decision (the plug-in logs its own): %s", log.String())
			}
		})
	}
}
