// Package origdst reads a redirected connection's original destination
// (SO_ORIGINAL_DST), as Envoy does, to prove where traffic was headed.
package origdst

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST alike.
const soOriginalDst = 80

// Of returns the address the peer originally connected to before NAT
// (REDIRECT) rewrote it. Without NAT it is the local address.
func Of(c *net.TCPConn) (netip.AddrPort, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	is4 := c.LocalAddr().(*net.TCPAddr).IP.To4() != nil
	var out netip.AddrPort
	var serr error
	err = raw.Control(func(fd uintptr) {
		if is4 {
			var sa unix.RawSockaddrInet4
			serr = getsockopt(fd, unix.SOL_IP, unsafe.Pointer(&sa), unsafe.Sizeof(sa))
			out = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port(sa.Port))
			return
		}
		var sa unix.RawSockaddrInet6
		serr = getsockopt(fd, unix.SOL_IPV6, unsafe.Pointer(&sa), unsafe.Sizeof(sa))
		out = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port(sa.Port))
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if serr != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination of %s: %w", c.LocalAddr(), serr)
	}
	return out, nil
}

func getsockopt(fd uintptr, level int, p unsafe.Pointer, size uintptr) error {
	l := uint32(size)
	_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), soOriginalDst, uintptr(p), uintptr(unsafe.Pointer(&l)), 0)
	if errno != 0 {
		return syscall.Errno(errno)
	}
	return nil
}

// port converts the network-order port the kernel wrote.
func port(p uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return binary.BigEndian.Uint16(b[:])
}
