// Package workload is what the static binaries inside the suites' images
// share (test/e2e/box, test/cluster/standin): the pod sandbox's pause, the
// original destination of a redirected connection, and a one-line ask.
package workload

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/meshcni/meshcni/internal/origdst"
)

// Pause is the pod sandbox: it sleeps until SIGTERM or SIGINT.
func Pause() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}

// OrigDst is where c was headed before the capture rules redirected it,
// or its local address when it was not redirected; IPv4 unmapped.
func OrigDst(c *net.TCPConn) netip.AddrPort {
	orig, err := origdst.Of(c)
	if err != nil {
		orig = c.LocalAddr().(*net.TCPAddr).AddrPort()
	}
	return netip.AddrPortFrom(orig.Addr().Unmap(), orig.Port())
}

// Ask dials addr (3s at most) and returns the one line it answers within
// wait, without its newline.
func Ask(addr string, wait time.Duration) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("read answer from %s: %w", addr, err)
	}
	return line[:len(line)-1], nil
}
