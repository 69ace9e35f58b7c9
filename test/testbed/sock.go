package testbed

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/meshcni/meshcni/internal/origdst"
)

// Listen opens a TCP listener inside netns n. The socket stays there, so
// it can be served from any goroutine.
func Listen(n ns.NetNS, addr string) (net.Listener, error) {
	var l net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// Dial connects from inside netns n.
func Dial(n ns.NetNS, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// Arrival is one connection a Recorder accepted.
type Arrival struct {
	Listener string
	Local    netip.AddrPort
	Original netip.AddrPort
}

// Recorder serves listeners that answer each connection with a line
// "<name> <original destination>" and records it: a stand-in sidecar or
// server whose answers prove where a connection landed.
type Recorder struct {
	Arrivals chan Arrival
	ls       []net.Listener
}

// NewRecorder returns an empty Recorder.
func NewRecorder() *Recorder { return &Recorder{Arrivals: make(chan Arrival, 64)} }

// Serve listens on addr in n under the given name.
func (r *Recorder) Serve(n ns.NetNS, name, addr string) error {
	l, err := Listen(n, addr)
	if err != nil {
		return fmt.Errorf("%s listen %s: %w", name, addr, err)
	}
	r.ls = append(r.ls, l)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := c.(*net.TCPConn)
			local := unmap(tc.LocalAddr().(*net.TCPAddr).AddrPort())
			orig, err := origdst.Of(tc)
			if err != nil {
				orig = local
			}
			a := Arrival{Listener: name, Local: local, Original: unmap(orig)}
			_, _ = fmt.Fprintf(c, "%s %s\n", name, a.Original)
			select {
			case r.Arrivals <- a:
			default:
			}
			_ = c.Close()
		}
	}()
	return nil
}

// Close stops every listener.
func (r *Recorder) Close() {
	for _, l := range r.ls {
		_ = l.Close()
	}
}

// Ask dials addr from n and returns the answering listener's line.
func Ask(n ns.NetNS, addr string) (string, error) {
	c, err := Dial(n, addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read answer from %s: %w", addr, err)
	}
	return line[:len(line)-1], nil
}

// unmap turns ::ffff:a.b.c.d (an IPv4 peer on a dual-stack listener) back
// into a.b.c.d.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
