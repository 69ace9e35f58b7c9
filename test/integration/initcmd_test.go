//go:build integration

package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/meshcni/meshcni/internal/validation"
)

// istioInitArgs is what Istio's injection template passes to istio-init.
var istioInitArgs = []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
	"-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"}

// istioInitSpec is what those flags mean in a pod with an IPv6 address,
// with --dual-stack (or an IPv6-only pod).
func istioInitSpec() capture.Spec {
	s := capture.Default()
	s.ExcludeInboundPorts = []uint16{15090, 15021, 15020}
	s.ExcludeOutboundPorts = nil
	s.IPv6 = true
	return s
}

func saveBoth(t *testing.T, a *netfilter.Applier, path string) string {
	t.Helper()
	var out strings.Builder
	for _, f := range []rules.Family{rules.IPv4, rules.IPv6} {
		s, _, err := a.Save(context.Background(), path, f)
		if err != nil {
			t.Fatalf("save %s: %v", f, err)
		}
		// Drop the comment lines with timestamps.
		for _, l := range strings.Split(s, "\n") {
			if !strings.HasPrefix(l, "#") {
				out.WriteString(l + "\n")
			}
		}
	}
	return out.String()
}

// TestInitCommand runs the built meshcni-iptables inside a dual-stack pod
// netns with istio-init's arguments, as the init container would: IPv4
// only, as istio-iptables decides for a pod whose first address is IPv4,
// and IPv6 too with --dual-stack.
func TestInitCommand(t *testing.T) {
	requireRoot(t)
	bin := binaries(t).iptables
	for _, backend := range backends {
		for _, dual := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/dual-stack=%v", backend, dual), func(t *testing.T) {
				a := netfilter.New(netfilter.Options{Backend: backend, LockDir: t.TempDir()})
				tp := newTopology(t)
				args := append([]string{"--iptables-backend", string(backend)}, istioInitArgs...)
				spec := istioInitSpec()
				// The pod has fd48:248::1 and 10.248.0.x: without dual
				// stack, Istio programs no IPv6, and neither does meshcni.
				spec.IPv6 = dual
				v6 := "peer:8080"
				if dual {
					args = append(args, "--dual-stack")
					v6 = "pod:15001"
				}

				_, errOut, code := runAs(t, tp.pod, 0, bin, nil, args...)
				if code != 0 {
					t.Fatalf("exit %d: %s", code, errOut)
				}
				if err := a.Check(context.Background(), tp.pod.Path(), spec); err != nil {
					t.Fatalf("rules differ from istio-iptables': %v\nstderr: %s", err, errOut)
				}
				before := saveBoth(t, a, tp.pod.Path())
				v6rules, _, err := a.Save(context.Background(), tp.pod.Path(), rules.IPv6)
				if err != nil {
					t.Fatal(err)
				}
				if got := strings.Contains(strings.ToUpper(v6rules), "ISTIO_"); got != dual {
					t.Fatalf("IPv6 rules present %v, want %v:\n%s", got, dual, v6rules)
				}

				if _, errOut, code := runAs(t, tp.pod, 0, bin, nil, args...); code != 0 {
					t.Fatalf("rerun: exit %d: %s", code, errOut)
				}
				if after := saveBoth(t, a, tp.pod.Path()); after != before {
					t.Fatalf("rerun changed the rules:\n%s\n---\n%s", before, after)
				}

				_, errOut, code = runAs(t, tp.pod, 0, bin, nil, append(args, "-q", "3306")...)
				t.Logf("different flags: exit %d\n%s", code, errOut)
				if code != 1 || !strings.Contains(errOut, "different capture rules") || !strings.Contains(errOut, "does not replace") {
					t.Fatalf("different flags over existing rules: exit %d, stderr %q; want 1 and a clear refusal", code, errOut)
				}
				if after := saveBoth(t, a, tp.pod.Path()); after != before {
					t.Fatalf("refused run changed the rules")
				}

				// And the rules it programmed redirect real connections:
				// IPv6 ones only with dual stack.
				servers := startServers(t, tp, spec)
				for _, p := range []probe{
					{from: fromApp, to: hostPort(peer4, 8080), want: "pod:15001"},
					{from: fromApp, to: hostPort(peer6, 8080), want: v6},
					{from: fromProxy, to: hostPort(peer4, 8080), want: "peer:8080"},
					{from: fromPeer, to: hostPort(pod4, 9080), want: "pod:15006"},
					{from: fromPeer, to: hostPort(pod4, 15021), want: "pod:15021"},
				} {
					p.run(t, tp, servers)
				}
			})
		}
	}
}

// TestInitCommandInvalidTouchesNothing: a bad value exits 1 naming the
// flag, and the netns stays empty.
func TestInitCommandInvalidTouchesNothing(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	a := netfilter.New(netfilter.Options{Backend: netfilter.NFT, LockDir: t.TempDir()})
	before := saveBoth(t, a, tp.pod.Path())
	_, errOut, code := runAs(t, tp.pod, 0, binaries(t).iptables, nil, append(istioInitArgs, "-x", "10.0.0.0/40")...)
	if code != 1 || !strings.Contains(errOut, "--istio-service-exclude-cidr") || !strings.Contains(errOut, "10.0.0.0/40") {
		t.Fatalf("exit %d, stderr %q; want 1 naming the flag and value", code, errOut)
	}
	if after := saveBoth(t, a, tp.pod.Path()); after != before || strings.Contains(after, "ISTIO") {
		t.Fatalf("invalid run touched the netns:\n%s", after)
	}
}

// TestInitCommandNetworkNamespace: run in one netns, --network-namespace
// programs another and leaves the first alone.
func TestInitCommandNetworkNamespace(t *testing.T) {
	requireRoot(t)
	runner, tp := newNS(t), newTopology(t)
	a := netfilter.New(netfilter.Options{Backend: netfilter.NFT, LockDir: t.TempDir()})
	args := append([]string{"--iptables-backend", "nft", "--network-namespace", tp.pod.Path(), "--dual-stack"}, istioInitArgs...)
	if _, errOut, code := runAs(t, runner, 0, binaries(t).iptables, nil, args...); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if err := a.Check(context.Background(), tp.pod.Path(), istioInitSpec()); err != nil {
		t.Fatalf("target netns: %v", err)
	}
	if got := saveBoth(t, a, runner.Path()); strings.Contains(got, "ISTIO") {
		t.Fatalf("the netns the command ran in got rules:\n%s", got)
	}
}

// TestValidation is istio-validation in CNI mode: the command as uid 1337
// with --run-validation --skip-rule-apply passes when the pod's rules are
// in place and exits 126 when they are not.
func TestValidation(t *testing.T) {
	requireRoot(t)
	bin := binaries(t).iptables
	args := append([]string{"--run-validation", "--skip-rule-apply", "--probe-timeout", "2s"}, istioInitArgs...)

	for _, backend := range backends {
		t.Run(string(backend)+"/rules-in-place", func(t *testing.T) {
			tp := newTopology(t)
			a := netfilter.New(netfilter.Options{Backend: backend, LockDir: t.TempDir()})
			if err := a.Apply(context.Background(), tp.pod.Path(), istioInitSpec()); err != nil {
				t.Fatal(err)
			}
			_, errOut, code := runAs(t, tp.pod, capture.DefaultProxyUID, bin, nil, args...)
			if code != 0 || !strings.Contains(errOut, "validation passed") || strings.Contains(errOut, "warning") {
				t.Fatalf("exit %d, want 0:\n%s", code, errOut)
			}
		})
	}

	t.Run("no-rules", func(t *testing.T) {
		tp := newTopology(t)
		_, errOut, code := runAs(t, tp.pod, capture.DefaultProxyUID, bin, nil, args...)
		t.Logf("exit %d\n%s", code, errOut)
		if code != validation.ErrorCode {
			t.Fatalf("exit %d, want %d:\n%s", code, validation.ErrorCode, errOut)
		}
		for _, w := range []string{"validation failed", pod4 + ":15002", "not ready", "delete the pod"} {
			if !strings.Contains(errOut, w) {
				t.Errorf("stderr does not mention %q:\n%s", w, errOut)
			}
		}
	})

	// Only the proxy UID's connections to the pod IP are redirected, so
	// validating as root fails even with rules, and says why.
	t.Run("rules-in-place-as-root", func(t *testing.T) {
		tp := newTopology(t)
		a := netfilter.New(netfilter.Options{Backend: netfilter.NFT, LockDir: t.TempDir()})
		if err := a.Apply(context.Background(), tp.pod.Path(), istioInitSpec()); err != nil {
			t.Fatal(err)
		}
		_, errOut, code := runAs(t, tp.pod, 0, bin, nil, append(args, "--probe-timeout", "1s")...)
		if code != validation.ErrorCode || !strings.Contains(errOut, "warning: validating as UID 0") {
			t.Fatalf("exit %d, want %d with a warning about the UID:\n%s", code, validation.ErrorCode, errOut)
		}
	})
}
