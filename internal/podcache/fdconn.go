package podcache

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// maxFDs bounds the descriptors read from one message; a request carries
// one.
const maxFDs = 4

// FDListener wraps a Unix listener (or one that returns *net.UnixConn)
// so that the descriptors a peer sends (SCM_RIGHTS) are kept for the
// handler (with ConnContext on the http.Server), and closed with the
// connection if the handler does not take them.
func FDListener(l net.Listener) net.Listener { return fdListener{l} }

type fdListener struct{ net.Listener }

func (l fdListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return c, nil
	}
	return &fdConn{UnixConn: uc}, nil
}

// fdConn reads with recvmsg and keeps what arrives beside the bytes.
// Go's ReadMsgUnix receives descriptors close-on-exec, so none leaks into
// what the agent execs meanwhile.
type fdConn struct {
	*net.UnixConn
	mu        sync.Mutex
	fds       []int
	truncated bool
}

func (c *fdConn) Read(b []byte) (int, error) {
	oob := make([]byte, unix.CmsgSpace(4*maxFDs))
	n, oobn, flags, _, err := c.ReadMsgUnix(b, oob)
	if oobn > 0 || flags&unix.MSG_CTRUNC != 0 {
		c.keep(oob[:oobn], flags&unix.MSG_CTRUNC != 0)
	}
	return n, err
}

func (c *fdConn) keep(oob []byte, truncated bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.truncated = c.truncated || truncated
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		c.truncated = true
		return
	}
	for i := range msgs {
		fds, err := unix.ParseUnixRights(&msgs[i])
		if err == nil {
			c.fds = append(c.fds, fds...)
		}
	}
}

// take returns the one descriptor the peer sent; any other count is an
// error (and what came is closed).
func (c *fdConn) take() (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fds, truncated := c.fds, c.truncated
	c.fds = nil
	if len(fds) == 1 && !truncated {
		return fds[0], nil
	}
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
	if truncated {
		return -1, errors.New("the request's file descriptors were cut off (more than one sent?)")
	}
	return -1, fmt.Errorf("want the pod's netns as one file descriptor on the request, got %d", len(fds))
}

func (c *fdConn) Close() error {
	c.mu.Lock()
	for _, fd := range c.fds {
		_ = unix.Close(fd)
	}
	c.fds = nil
	c.mu.Unlock()
	return c.UnixConn.Close()
}
