package initcmd

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshcni/meshcni/internal/capture"
	"github.com/meshcni/meshcni/internal/netfilter"
	"github.com/meshcni/meshcni/internal/rules"
	"github.com/meshcni/meshcni/internal/validation"
)

// istioInit is what Istio's injection template passes to istio-init.
var istioInit = []string{"-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
	"-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"}

type harness struct {
	cmd       *Command
	out, errb bytes.Buffer
	fake      *netfilter.Fake
	backend   netfilter.Backend
	validated *validation.Config
	addrs     []netip.Addr
	env       map[string]string
}

// newHarness returns a Command whose kernel is fake: an IPv4-only pod at
// 10.1.2.3, no environment.
func newHarness(t *testing.T) *harness {
	h := &harness{fake: netfilter.NewFake(), env: map[string]string{},
		addrs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1"),
			netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("fe80::1")}}
	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(resolv, []byte("# comment\nsearch default.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\nnameserver bogus\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.cmd = &Command{
		Streams:   IOStreams{Out: &h.out, ErrOut: &h.errb},
		LookupEnv: func(k string) (string, bool) { v, ok := h.env[k]; return v, ok },
		NewApplier: func(b netfilter.Backend) netfilter.Interface {
			h.backend = b
			return h.fake
		},
		LocalAddrs: func(string) ([]netip.Addr, error) { return h.addrs, nil },
		ResolvConf: resolv,
		Validate: func(_ context.Context, c validation.Config) error {
			h.validated = &c
			return nil
		},
		Geteuid: func() int { return 1337 },
	}
	return h
}

func (h *harness) run(args ...string) error {
	return h.cmd.Run(context.Background(), args)
}

// spec runs args and returns what was applied to the current netns.
func (h *harness) spec(t *testing.T, args ...string) capture.Spec {
	t.Helper()
	if err := h.run(args...); err != nil {
		t.Fatalf("run %q: %v", args, err)
	}
	s, ok := h.fake.Spec("")
	if !ok {
		t.Fatalf("run %q applied nothing", args)
	}
	return s
}

// istioInitSpec is what istioInit means: the defaults in the order the
// flags give them, and no excluded outbound port.
func istioInitSpec() capture.Spec {
	s := capture.Default()
	s.ExcludeInboundPorts = []uint16{15090, 15021, 15020}
	s.ExcludeOutboundPorts = nil
	return s
}

func TestIstioInitArgs(t *testing.T) {
	h := newHarness(t)
	got := h.spec(t, istioInit...)
	if want := istioInitSpec(); !got.Equal(want) {
		t.Fatalf("spec:\n got %+v\nwant %+v", got, want)
	}
	if h.backend != netfilter.Auto {
		t.Errorf("backend %q, want auto", h.backend)
	}
	if h.out.Len() != 0 {
		t.Errorf("stdout is for --dry-run only, got %q", h.out.String())
	}
}

func TestDefaultsCaptureNothing(t *testing.T) {
	// As istio-iptables: without -b and -i nothing is captured.
	got := newHarness(t).spec(t)
	if !got.InboundPorts.Empty() || got.OutboundCIDRs.All || len(got.OutboundCIDRs.List) > 0 {
		t.Fatalf("no -b/-i must capture nothing, got inbound %v outbound %+v", got.InboundPorts, got.OutboundCIDRs)
	}
	if got.ProxyPort != 15001 || got.InboundCapturePort != 15006 || got.InboundTunnelPort != 15008 ||
		got.TProxyMark != 1337 || got.TProxyRouteTable != 133 || got.Mode != capture.Redirect {
		t.Fatalf("defaults differ from istio-iptables': %+v", got)
	}
	if len(got.ProxyUIDs) != 1 || got.ProxyUIDs[0] != 1337 || len(got.ProxyGIDs) != 1 || got.ProxyGIDs[0] != 1337 {
		t.Fatalf("proxy uid/gid %v/%v, want 1337/1337", got.ProxyUIDs, got.ProxyGIDs)
	}
}

func TestFlagsAndEnvironment(t *testing.T) {
	for _, tc := range []struct {
		name  string
		env   map[string]string
		args  []string
		check func(*testing.T, capture.Spec, *harness)
	}{
		{"long names", nil, []string{"--envoy-port", "15101", "--inbound-capture-port", "15106", "--inbound-tunnel-port", "15108",
			"--proxy-uid", "1000", "--proxy-gid", "2000", "--istio-inbound-interception-mode", "TPROXY",
			"--istio-inbound-tproxy-mark", "77", "--istio-inbound-tproxy-route-table", "78",
			"--istio-inbound-ports", "80,443", "--istio-local-exclude-ports", "9", "--istio-service-cidr", "10.0.0.0/8",
			"--istio-service-exclude-cidr", "10.96.0.1", "--istio-outbound-ports", "3306", "--istio-local-outbound-ports-exclude", "25",
			"--exclude-interfaces", "net1", "--kube-virt-interfaces", "vm0"},
			func(t *testing.T, s capture.Spec, _ *harness) {
				want := capture.Spec{ProxyPort: 15101, InboundCapturePort: 15106, InboundTunnelPort: 15108,
					ProxyUIDs: []uint32{1000}, ProxyGIDs: []uint32{2000}, Mode: capture.TProxy, TProxyMark: 77, TProxyRouteTable: 78,
					InboundPorts: capture.Ports{List: []uint16{80, 443}}, ExcludeInboundPorts: []uint16{9},
					OutboundCIDRs:        capture.CIDRs{List: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}},
					ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.1/32")},
					OutboundPorts:        []uint16{3306}, ExcludeOutboundPorts: []uint16{25},
					ExcludeInterfaces: []string{"net1"}, RerouteInterfaces: []string{"vm0"},
					HostLoopback: netip.MustParsePrefix("127.0.0.1/32")}
				if !s.Equal(want) {
					t.Fatalf("\n got %+v\nwant %+v", s, want)
				}
			}},
		{"shorthands", nil, []string{"-p", "15101", "-z", "15106", "-e", "15108", "-u", "1000", "-g", "2000", "-m", "TPROXY",
			"-t", "77", "-r", "78", "-b", "80", "-d", "9", "-i", "*", "-x", "10.96.0.0/12", "-q", "3306", "-o", "25", "-c", "net1", "-k", "vm0"},
			func(t *testing.T, s capture.Spec, _ *harness) {
				if s.ProxyPort != 15101 || s.InboundCapturePort != 15106 || s.InboundTunnelPort != 15108 || s.ProxyGIDs[0] != 2000 ||
					s.Mode != capture.TProxy || s.TProxyMark != 77 || s.TProxyRouteTable != 78 || s.InboundPorts.List[0] != 80 ||
					s.ExcludeInboundPorts[0] != 9 || !s.OutboundCIDRs.All || s.ExcludeOutboundCIDRs[0].Bits() != 12 ||
					s.OutboundPorts[0] != 3306 || s.ExcludeOutboundPorts[0] != 25 || s.ExcludeInterfaces[0] != "net1" || s.RerouteInterfaces[0] != "vm0" {
					t.Fatalf("shorthands not mapped: %+v", s)
				}
			}},
		{"env fills unset flags", map[string]string{"ENVOY_PORT": "15201", "INBOUND_CAPTURE_PORT": "15206", "INBOUND_TUNNEL_PORT": "15208",
			"PROXY_UID": "1500", "ISTIO_INBOUND_INTERCEPTION_MODE": "TPROXY", "ISTIO_INBOUND_PORTS": "*",
			"ISTIO_LOCAL_EXCLUDE_PORTS": "15090", "ISTIO_SERVICE_CIDR": "*", "ISTIO_SERVICE_EXCLUDE_CIDR": "10.96.0.1/32",
			"ISTIO_OUTBOUND_PORTS": "8443", "ISTIO_LOCAL_OUTBOUND_PORTS_EXCLUDE": "3306"}, nil,
			func(t *testing.T, s capture.Spec, _ *harness) {
				if s.ProxyPort != 15201 || s.InboundCapturePort != 15206 || s.InboundTunnelPort != 15208 || s.ProxyUIDs[0] != 1500 ||
					s.ProxyGIDs[0] != 1500 || s.Mode != capture.TProxy || !s.InboundPorts.All || s.ExcludeInboundPorts[0] != 15090 ||
					!s.OutboundCIDRs.All || len(s.ExcludeOutboundCIDRs) != 1 || s.OutboundPorts[0] != 8443 || s.ExcludeOutboundPorts[0] != 3306 {
					t.Fatalf("environment not read: %+v", s)
				}
			}},
		{"flag beats env", map[string]string{"ENVOY_PORT": "15201"}, []string{"-p", "15301"},
			func(t *testing.T, s capture.Spec, _ *harness) {
				if s.ProxyPort != 15301 {
					t.Fatalf("proxy port %d, want the flag's 15301", s.ProxyPort)
				}
			}},
		{"empty env is unset", map[string]string{"ENVOY_PORT": ""}, nil,
			func(t *testing.T, s capture.Spec, _ *harness) {
				if s.ProxyPort != 15001 {
					t.Fatalf("proxy port %d, want the default", s.ProxyPort)
				}
			}},
		{"istio's named env defaults", map[string]string{"ISTIO_META_DNS_CAPTURE": "true", "INVALID_DROP": "true", "ISTIO_DUAL_STACK": "true"},
			[]string{"--capture-all-dns"},
			func(t *testing.T, s capture.Spec, _ *harness) {
				if !s.RedirectDNS || !s.DropInvalid || !s.IPv6 {
					t.Fatalf("named env ignored: dns %v drop %v ipv6 %v", s.RedirectDNS, s.DropInvalid, s.IPv6)
				}
			}},
		// As istio-iptables: AdditionalEnv sets the flag after BindEnv.
		{"named env beats flag env", map[string]string{"ISTIO_META_DNS_CAPTURE": "true", "REDIRECT_DNS": "false"}, nil,
			func(t *testing.T, s capture.Spec, _ *harness) {
				if !s.RedirectDNS {
					t.Fatal("ISTIO_META_DNS_CAPTURE=true must win over REDIRECT_DNS=false, as in istio-iptables")
				}
			}},
		// As istio-iptables, which ignores fs.Set's error: the default
		// stays, and meshcni warns.
		{"bad bool env is ignored", map[string]string{"INVALID_DROP": "yes please", "DUAL_STACK": "true", "ISTIO_DUAL_STACK": ""}, nil,
			func(t *testing.T, s capture.Spec, h *harness) {
				if s.DropInvalid || !s.IPv6 {
					t.Fatalf("drop %v ipv6 %v: want INVALID_DROP=yes ignored and DUAL_STACK=true read", s.DropInvalid, s.IPv6)
				}
			}},
		{"bool flag beats env", map[string]string{"ISTIO_META_DNS_CAPTURE": "true"}, []string{"--redirect-dns=false"},
			func(t *testing.T, s capture.Spec, _ *harness) {
				if s.RedirectDNS {
					t.Fatal("--redirect-dns=false must win over the environment")
				}
			}},
		{"backend from env", map[string]string{"MESHCNI_IPTABLES_BACKEND": "nft"}, nil,
			func(t *testing.T, _ capture.Spec, h *harness) {
				if h.backend != netfilter.NFT {
					t.Fatalf("backend %q, want nft", h.backend)
				}
			}},
		{"backend flag", map[string]string{"MESHCNI_IPTABLES_BACKEND": "nft"}, []string{"--iptables-backend", "legacy"},
			func(t *testing.T, _ capture.Spec, h *harness) {
				if h.backend != netfilter.Legacy {
					t.Fatalf("backend %q, want legacy", h.backend)
				}
			}},
		{"nameservers from resolv.conf", nil, []string{"--redirect-dns", "--dual-stack"},
			func(t *testing.T, s capture.Spec, _ *harness) {
				want := []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")}
				if len(s.DNSServers) != 2 || s.DNSServers[0] != want[0] || s.DNSServers[1] != want[1] {
					t.Fatalf("DNS servers %v, want %v", s.DNSServers, want)
				}
			}},
		{"capture-all-dns skips resolv.conf", nil, []string{"--redirect-dns", "--capture-all-dns"},
			func(t *testing.T, s capture.Spec, _ *harness) {
				if !s.CaptureAllDNS || len(s.DNSServers) != 0 {
					t.Fatalf("capture all %v, servers %v", s.CaptureAllDNS, s.DNSServers)
				}
			}},
		{"ignored istio flags", nil, []string{"--log_output_level=default:debug", "--log_as_json", "-f", "--trace-logging"},
			func(*testing.T, capture.Spec, *harness) {}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.addrs = append(h.addrs, netip.MustParseAddr("fd00::5")) // dual stack
			for k, v := range tc.env {
				h.env[k] = v
			}
			tc.check(t, h.spec(t, tc.args...), h)
		})
	}
}

func TestIPv6Detection(t *testing.T) {
	for _, tc := range []struct {
		name  string
		addrs []string
		args  []string
		want  bool
	}{
		{"ipv4 only", []string{"127.0.0.1", "::1", "10.1.2.3", "fe80::1"}, nil, false},
		// As istio-iptables (getLocalIP): dual stack turns IPv6 on only
		// with an IPv6 address, and without it a dual-stack pod's first
		// address (IPv4, in the kernel's order) decides.
		{"dual-stack flag, IPv4 pod", []string{"10.1.2.3"}, []string{"--dual-stack"}, false},
		{"dual-stack pod without the flag", []string{"10.1.2.3", "fd00::5"}, nil, false},
		{"dual-stack pod without the flag, IPv6 listed first", []string{"fd00::5", "10.1.2.3"}, nil, false},
		{"dual-stack pod with the flag", []string{"10.1.2.3", "fd00::5"}, []string{"--dual-stack"}, true},
		{"ipv6-only pod", []string{"::1", "2001:db8::5"}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.addrs = nil
			for _, a := range tc.addrs {
				h.addrs = append(h.addrs, netip.MustParseAddr(a))
			}
			if got := h.spec(t, tc.args...).IPv6; got != tc.want {
				t.Fatalf("IPv6 = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestInvalidValues: every bad value exits 1 naming the flag and the
// value, and nothing is applied or validated, with or without --dry-run.
func TestInvalidValues(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"port not a number", nil, []string{"-p", "abc"}, []string{"--envoy-port", `"abc"`}},
		{"port zero", nil, []string{"-z", "0"}, []string{"--inbound-capture-port", `"0"`}},
		{"port too big", nil, []string{"-e", "65536"}, []string{"--inbound-tunnel-port", `"65536"`}},
		{"inbound port list", nil, []string{"-b", "80,http"}, []string{"--istio-inbound-ports", `"80,http"`, `"http"`}},
		{"exclude port list", nil, []string{"-d", "15090,-1"}, []string{"--istio-local-exclude-ports", `"15090,-1"`}},
		{"outbound ports", nil, []string{"-q", "99999"}, []string{"--istio-outbound-ports"}},
		{"outbound exclude ports", nil, []string{"-o", "x"}, []string{"--istio-local-outbound-ports-exclude"}},
		{"cidr", nil, []string{"-i", "10.0.0.0/33"}, []string{"--istio-service-cidr", `"10.0.0.0/33"`}},
		{"exclude cidr", nil, []string{"-x", "not-an-ip"}, []string{"--istio-service-exclude-cidr", `"not-an-ip"`}},
		{"mode", nil, []string{"-m", "NAT"}, []string{"--istio-inbound-interception-mode", `"NAT"`, "REDIRECT or TPROXY"}},
		{"uid", nil, []string{"-u", "istio-proxy"}, []string{"--proxy-uid", `"istio-proxy"`}},
		{"uid empty", nil, []string{"-u", ","}, []string{"--proxy-uid", "at least one UID"}},
		{"gid", nil, []string{"-g", "-5"}, []string{"--proxy-gid", `"-5"`}},
		{"tproxy mark", nil, []string{"-t", "0"}, []string{"--istio-inbound-tproxy-mark", `"0"`}},
		{"route table", nil, []string{"-r", "main"}, []string{"--istio-inbound-tproxy-route-table", `"main"`}},
		{"interface", nil, []string{"-c", "eth0,-j"}, []string{"--exclude-interfaces", `"eth0,-j"`}},
		{"virt interface", nil, []string{"-k", "a/b"}, []string{"--kube-virt-interfaces", `"a/b"`}},
		{"interface too long", nil, []string{"-c", "averyveryverylongname"}, []string{"--exclude-interfaces"}},
		{"probe port", nil, []string{"--iptables-probe-port", "0"}, []string{"--iptables-probe-port", `"0"`}},
		{"probe timeout", nil, []string{"--probe-timeout", "soon"}, []string{"--probe-timeout", `"soon"`}},
		{"negative probe timeout", nil, []string{"--probe-timeout", "-1s"}, []string{"--probe-timeout", `"-1s"`}},
		{"backend", nil, []string{"--iptables-backend", "ebpf"}, []string{"--iptables-backend", `"ebpf"`}},
		{"bool", nil, []string{"--redirect-dns=maybe"}, []string{"--redirect-dns", `"maybe"`}},
		{"unknown flag", nil, []string{"--envoy-prot", "1"}, []string{"--envoy-prot"}},
		{"positional", nil, []string{"extra"}, []string{"extra"}},
		{"bad env names the variable", map[string]string{"ENVOY_PORT": "fifteen"}, nil, []string{"--envoy-port", "$ENVOY_PORT", `"fifteen"`}},
		{"several at once", nil, []string{"-p", "a", "-m", "b"}, []string{"--envoy-port", "--istio-inbound-interception-mode"}},
	} {
		for _, dry := range []bool{false, true} {
			name := tc.name
			args := append([]string{"--run-validation"}, tc.args...)
			if dry {
				name += "/dry-run"
				args = append(args, "--dry-run")
			}
			t.Run(name, func(t *testing.T) {
				h := newHarness(t)
				for k, v := range tc.env {
					h.env[k] = v
				}
				err := h.run(args...)
				if err == nil {
					t.Fatalf("run %q: no error", args)
				}
				var stdout, stderr bytes.Buffer
				code := mainWith(h.cmd, args, &stdout, &stderr)
				if code != 1 {
					t.Errorf("exit code %d, want 1", code)
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %s", err, w)
					}
				}
				if h.fake.Calls != 0 || h.validated != nil || h.out.Len() != 0 || stdout.Len() != 0 {
					t.Errorf("side effects despite invalid input: %d applies, validated %v, stdout %q",
						h.fake.Calls, h.validated != nil, h.out.String()+stdout.String())
				}
			})
		}
	}
}

// mainWith is Main over a prepared Command.
func mainWith(c *Command, args []string, out, errOut *bytes.Buffer) int {
	c.Streams = IOStreams{Out: out, ErrOut: errOut}
	return exitCode(c.Run(context.Background(), args), c.Streams)
}

// TestDryRunMatchesGolden: --dry-run prints exactly rules.Build for the
// same settings, which is the restore half of the rules package's golden
// file for the case.
func TestDryRunMatchesGolden(t *testing.T) {
	for _, tc := range []struct {
		golden string
		args   []string
		mod    func(*capture.Spec)
	}{
		{"defaults", []string{"-o", "15020"}, func(*capture.Spec) {}},
		{"tproxy", []string{"-o", "15020", "-m", "TPROXY"}, func(s *capture.Spec) { s.Mode = capture.TProxy }},
		{"inbound-ports-include", []string{"-o", "15020", "-b", "32000,31000"}, func(s *capture.Spec) {
			s.InboundPorts = capture.Ports{List: []uint16{32000, 31000}}
		}},
		{"outbound-ports", []string{"-i", "", "-q", "32000,31000", "-o", "3306,5432"}, func(s *capture.Spec) {
			s.OutboundCIDRs = capture.CIDRs{}
			s.OutboundPorts = []uint16{32000, 31000}
			s.ExcludeOutboundPorts = []uint16{3306, 5432}
		}},
		{"uid-gid", []string{"-o", "15020", "-u", "1337,1338", "-g", "1339"}, func(s *capture.Spec) {
			s.ProxyUIDs = []uint32{1337, 1338}
			s.ProxyGIDs = []uint32{1339}
		}},
		{"dns-capture-all", []string{"-o", "15020", "--redirect-dns", "--capture-all-dns"}, func(s *capture.Spec) {
			s.RedirectDNS, s.CaptureAllDNS = true, true
		}},
		{"dns-servers", []string{"-o", "15020", "--redirect-dns", "--dual-stack"}, func(s *capture.Spec) {
			s.RedirectDNS, s.IPv6 = true, true
			s.DNSServers = []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::a")}
		}},
		{"drop-invalid", []string{"-o", "15020", "--drop-invalid"}, func(s *capture.Spec) { s.DropInvalid = true }},
		{"exclude-interface", []string{"-o", "15020", "-c", "net1"}, func(s *capture.Spec) { s.ExcludeInterfaces = []string{"net1"} }},
		{"reroute-interfaces", []string{"-o", "15020", "-k", "eth1,eth2"}, func(s *capture.Spec) { s.RerouteInterfaces = []string{"eth1", "eth2"} }},
		{"ipv6", []string{"-o", "15020", "-i", "10.0.0.0/8,fd00::/8", "-x", "10.96.0.1/32,fd00::1/128", "--dual-stack"}, func(s *capture.Spec) {
			s.IPv6 = true
			s.OutboundCIDRs = capture.CIDRs{List: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}}
			s.ExcludeOutboundCIDRs = []netip.Prefix{netip.MustParsePrefix("10.96.0.1/32"), netip.MustParsePrefix("fd00::1/128")}
		}},
		{"dual-stack-tproxy-dns", []string{"-o", "15020", "-m", "TPROXY", "--redirect-dns", "--capture-all-dns", "--dual-stack"}, func(s *capture.Spec) {
			s.IPv6, s.Mode, s.RedirectDNS, s.CaptureAllDNS = true, capture.TProxy, true, true
		}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			h := newHarness(t)
			// A dual-stack netns: with --dual-stack, IPv6 is programmed.
			h.addrs = append(h.addrs, netip.MustParseAddr("fd00::5"))
			// The golden files list the excluded inbound ports in
			// capture.Default's order.
			base := []string{"--dry-run", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
				"-i", "*", "-x", "", "-b", "*", "-d", "15020,15021,15090"}
			if err := h.run(append(base, tc.args...)...); err != nil {
				t.Fatal(err)
			}
			if h.fake.Calls != 0 {
				t.Fatal("--dry-run applied rules")
			}
			spec := capture.Default()
			tc.mod(&spec)
			var want strings.Builder
			for _, rs := range rules.Build(spec).Sets {
				want.WriteString("# " + rs.Family.String() + " restore\n" + rs.Restore())
			}
			if got := h.out.String(); got != want.String() {
				t.Fatalf("dry run differs from rules.Build:\n got:\n%s\nwant:\n%s", got, want.String())
			}
			golden, err := os.ReadFile(filepath.Join("..", "rules", "testdata", tc.golden+".golden"))
			if err != nil {
				t.Fatal(err)
			}
			restore, _, _ := strings.Cut(string(golden), "# IPv4 cleanup\n")
			if h.out.String() != restore {
				t.Fatalf("dry run differs from the restore half of %s.golden:\n got:\n%s\nwant:\n%s", tc.golden, h.out.String(), restore)
			}
		})
	}
}

func TestSkipRuleApplyAndDryRun(t *testing.T) {
	h := newHarness(t)
	if err := h.run(append(istioInit, "--skip-rule-apply")...); err != nil {
		t.Fatal(err)
	}
	if h.fake.Calls != 0 {
		t.Fatal("--skip-rule-apply applied rules")
	}
	h = newHarness(t)
	if err := h.run(append(istioInit, "--dry-run", "--run-validation")...); err != nil {
		t.Fatal(err)
	}
	if h.fake.Calls != 0 || h.validated != nil {
		t.Fatal("--dry-run must touch nothing")
	}
}

func TestNetworkNamespaceFlag(t *testing.T) {
	h := newHarness(t)
	var listed string
	h.cmd.LocalAddrs = func(p string) ([]netip.Addr, error) { listed = p; return h.addrs, nil }
	if err := h.run(append(istioInit, "--network-namespace", "/run/netns/pod", "--run-validation")...); err != nil {
		t.Fatal(err)
	}
	if _, ok := h.fake.Spec("/run/netns/pod"); !ok || listed != "/run/netns/pod" || h.validated.NetNS != "/run/netns/pod" {
		t.Fatalf("--network-namespace not used everywhere: applied %v, listed %q, validated %q", ok, listed, h.validated.NetNS)
	}
	h = newHarness(t)
	h.cmd.LocalAddrs = func(p string) ([]netip.Addr, error) { return nil, errors.New("/run/netns/gone: no such file") }
	if err := h.run(append(istioInit, "--network-namespace", "/run/netns/gone")...); err == nil || h.fake.Calls != 0 {
		t.Fatalf("missing netns: err %v, %d applies", err, h.fake.Calls)
	}
}

func TestReapplyAndConflict(t *testing.T) {
	h := newHarness(t)
	for i := 0; i < 2; i++ {
		if err := h.run(istioInit...); err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
	}
	err := h.run(append(istioInit, "-q", "3306")...)
	if !errors.Is(err, netfilter.ErrConflict) || !strings.Contains(err.Error(), "does not replace") {
		t.Fatalf("different flags over existing rules: want a clear ErrConflict, got %v", err)
	}
}

func TestValidation(t *testing.T) {
	h := newHarness(t)
	if err := h.run(append(istioInit, "--run-validation", "--skip-rule-apply", "--iptables-probe-port", "15102", "--probe-timeout", "2s")...); err != nil {
		t.Fatal(err)
	}
	want := validation.Config{ListenPorts: []uint16{15001, 15006}, Target: netip.MustParseAddrPort("10.1.2.3:15102"), Timeout: 2 * time.Second}
	if got := *h.validated; got.Target != want.Target || got.Timeout != want.Timeout || len(got.ListenPorts) != 2 ||
		got.ListenPorts[0] != 15001 || got.ListenPorts[1] != 15006 {
		t.Fatalf("validation config %+v, want %+v", got, want)
	}
	if strings.Contains(h.errb.String(), "warning") {
		t.Errorf("warned although running as the proxy UID: %s", h.errb.String())
	}

	h = newHarness(t)
	h.addrs = []netip.Addr{netip.MustParseAddr("::1"), netip.MustParseAddr("fd00::7")}
	h.cmd.Geteuid = func() int { return 0 }
	h.cmd.Validate = func(context.Context, validation.Config) error {
		return errors.Join(validation.ErrNotRedirected, errors.New("connection refused"))
	}
	var stdout, stderr bytes.Buffer
	if code := mainWith(h.cmd, append(istioInit, "--run-validation", "--skip-rule-apply"), &stdout, &stderr); code != validation.ErrorCode {
		t.Fatalf("exit code %d, want %d", code, validation.ErrorCode)
	}
	for _, w := range []string{"warning: validating as UID 0", "runAsUser: 1337", "validation failed", "connection refused",
		"not ready", "delete the pod"} {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("stderr does not say %q:\n%s", w, stderr.String())
		}
	}

	h = newHarness(t)
	h.addrs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("fe80::1")}
	if err := h.run(append(istioInit, "--run-validation")...); err == nil || h.fake.Calls != 0 {
		t.Fatalf("no pod IP: want an error before any rule, got %v (%d applies)", err, h.fake.Calls)
	}
}

func TestProbeAddrPrefersIPv4(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("fd00::7"), netip.MustParseAddr("169.254.1.1"), netip.MustParseAddr("10.0.0.9")}
	if got, _ := probeAddr(addrs); got != netip.MustParseAddr("10.0.0.9") {
		t.Fatalf("probe address %v, want 10.0.0.9", got)
	}
}

func TestHelp(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := Main(context.Background(), []string{"-h"}, IOStreams{Out: &out, ErrOut: &errOut}); code != 0 {
		t.Fatalf("-h exit %d", code)
	}
	if !strings.Contains(out.String(), "--istio-inbound-interception-mode") || strings.Contains(out.String(), "log_as_json") {
		t.Fatalf("usage:\n%s", out.String())
	}
}

// A value istio-iptables ignores is ignored here too, and said so.
func TestIgnoredEnvIsReported(t *testing.T) {
	h := newHarness(t)
	h.env["INVALID_DROP"] = "yes please"
	var out, errOut bytes.Buffer
	if code := mainWith(h.cmd, []string{"--dry-run"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if want := `warning: $INVALID_DROP="yes please" is not a value for --drop-invalid; ignored`; !strings.Contains(errOut.String(), want) {
		t.Fatalf("stderr %q lacks %q", errOut.String(), want)
	}
	if strings.Contains(out.String(), "INVALID") {
		t.Fatalf("the ignored value reached the rules:\n%s", out.String())
	}
}
