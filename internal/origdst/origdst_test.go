package origdst

import (
	"net"
	"testing"
)

// A connection that was not NATed has no original destination: an error
// when conntrack does not track it, its real destination when it does;
// never a zero or made-up address.
func TestOriginalDstWithoutNAT(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := net.Dial("tcp4", l.Addr().String()); err == nil {
			defer c.Close()
			_, _ = c.Read(make([]byte, 1))
		}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst, err := Of(c.(*net.TCPConn))
	if real := c.LocalAddr().(*net.TCPAddr).AddrPort(); err == nil && dst != real {
		t.Fatalf("original destination of a plain loopback connection: got %v, want an error or %v", dst, real)
	}
}
