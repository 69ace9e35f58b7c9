//go:build integration

package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/meshcni/meshcni/internal/origdst"
	"golang.org/x/sys/unix"
)

const ioTimeout = 3 * time.Second

// landing is one connection (or datagram) a server received.
type landing struct {
	local, remote netip.AddrPort
	// origDst is SO_ORIGINAL_DST; origErr when the kernel has none.
	origDst netip.AddrPort
	origErr error
}

// server is a named set of listeners ("pod:15001"). Each accepted TCP
// connection is told the server's name and closed, so a client knows
// where it landed; each landing is reported on got.
type server struct {
	name string
	got  chan landing
}

func newServer(name string) *server { return &server{name: name, got: make(chan landing, 16)} }

// listenTCP adds a listener in n on addr ("0.0.0.0:15001", "[::]:15001"),
// optionally IP_TRANSPARENT as TPROXY needs. The socket belongs to n for
// its lifetime; accepting happens in a goroutine.
func (s *server) listenTCP(t *testing.T, n ns.NetNS, addr string, transparent bool) {
	t.Helper()
	lc := net.ListenConfig{}
	if transparent {
		lc.Control = setTransparent
	}
	var l net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = lc.Listen(context.Background(), family("tcp", addr), addr)
		return err
	})
	if err != nil {
		t.Fatalf("%s: listen on %s: %v", s.name, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			got := landing{local: addrPort(c.LocalAddr()), remote: addrPort(c.RemoteAddr())}
			got.origDst, got.origErr = origdst.Of(tc)
			_ = c.SetDeadline(time.Now().Add(ioTimeout))
			_, _ = io.WriteString(c, s.name)
			c.Close()
			s.got <- got
		}
	}()
}

// listenUDP adds a UDP socket in n on addr; each datagram is a landing.
func (s *server) listenUDP(t *testing.T, n ns.NetNS, addr string) {
	t.Helper()
	var pc net.PacketConn
	err := n.Do(func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket(family("udp", addr), addr)
		return err
	})
	if err != nil {
		t.Fatalf("%s: listen on udp %s: %v", s.name, addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 512)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.got <- landing{local: addrPort(pc.LocalAddr()), remote: addrPort(from)}
		}
	}()
}

// next waits for the server's next landing.
func (s *server) next(t *testing.T) landing {
	t.Helper()
	select {
	case l := <-s.got:
		return l
	case <-time.After(ioTimeout):
		t.Fatalf("nothing landed on %s", s.name)
		return landing{}
	}
}

func setTransparent(network, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		if network == "tcp6" {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
		} else {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// family picks tcp4/tcp6 from a literal address, so that an IPv6
// listener never also takes IPv4 (Go sets IPV6_V6ONLY for tcp6).
func family(proto, addr string) string {
	ap := netip.MustParseAddrPort(addr)
	if ap.Addr().Is4() {
		return proto + "4"
	}
	return proto + "6"
}

func addrPort(a net.Addr) netip.AddrPort {
	switch a := a.(type) {
	case *net.TCPAddr:
		return netip.AddrPortFrom(a.AddrPort().Addr().Unmap(), a.AddrPort().Port())
	case *net.UDPAddr:
		return netip.AddrPortFrom(a.AddrPort().Addr().Unmap(), a.AddrPort().Port())
	}
	return netip.AddrPort{}
}

// dialTCP connects from n to addr and returns the name of the server the
// connection landed on.
func dialTCP(n ns.NetNS, addr string) (string, error) {
	var c net.Conn
	err := n.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, ioTimeout)
		return err
	})
	if err != nil {
		return "", err
	}
	return readName(c)
}

// sendUDP sends one datagram from n to addr.
func sendUDP(n ns.NetNS, addr string) error {
	return n.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("query"))
		return err
	})
}

func readName(c net.Conn) (string, error) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	b, err := io.ReadAll(c)
	return string(b), err
}

// The uid-1337 helper: this test binary, re-executed by runAs with
// MESHCNI_IT_HELPER set, dials or sends once and prints where it landed.
const helperEnv = "MESHCNI_IT_HELPER"

func helperMain() int {
	proto, addr := os.Getenv(helperEnv), os.Getenv("MESHCNI_IT_ADDR")
	var name string
	var err error
	switch proto {
	case "tcp":
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, ioTimeout); err == nil {
			name, err = readName(c)
		}
	case "udp":
		var c net.Conn
		if c, err = net.Dial("udp", addr); err == nil {
			_, err = c.Write([]byte("query"))
			c.Close()
		}
	default:
		err = fmt.Errorf("unknown helper %q", proto)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Print(name)
	return 0
}

// dialAs connects to addr from a process running as uid (and gid) in n,
// the way the proxy's own connections are made.
func dialAs(t *testing.T, n ns.NetNS, uid uint32, proto, addr string) (string, error) {
	t.Helper()
	out, errOut, code := runAs(t, n, uid, binaries(t).self, []string{helperEnv + "=" + proto, "MESHCNI_IT_ADDR=" + addr})
	if code != 0 {
		return "", fmt.Errorf("helper as uid %d: exit %d: %s", uid, code, errOut)
	}
	return out, nil
}

// runAs runs bin in n as uid (0 = root) and returns its stdout, stderr
// and exit code. The exec happens on the thread locked inside n, so the
// child starts in n; the thread is checked first.
func runAs(t *testing.T, n ns.NetNS, uid uint32, bin string, env []string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	// Only PATH from the test's environment: istio-iptables variables
	// set where the tests run must not change what the command does.
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := n.Do(func(ns.NetNS) error {
		if err := assertInside(n); err != nil {
			return err
		}
		return cmd.Run()
	})
	code := 0
	if err != nil {
		exit, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("run %s %v: %v", bin, args, err)
		}
		code = exit.ExitCode()
	}
	return out.String(), errOut.String(), code
}
